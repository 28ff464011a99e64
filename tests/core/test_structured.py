"""Per-field citations of a structured (JSON) answer: spans, paths and cited sources."""

from __future__ import annotations

import json

import pytest

from omnitrace_core import FieldCitation, InvalidInputError, field_citations
from omnitrace_core.config import CurationConfig
from omnitrace_core.results import TokenAttribution, TracedAnswer
from omnitrace_core.structured import json_leaves
from tests.factories import make_answer, make_source_info, make_token, make_unit


def _answer(pieces: list[tuple[str, str | None]], **kw: object) -> TracedAnswer:
    """An answer whose tokens are ``pieces`` (text, unit id or None), in order."""
    tokens: list[TokenAttribution] = []
    pos = 0
    for i, (piece, unit) in enumerate(pieces):
        tokens.append(make_token(i, piece, pos, unit, pos="PUNCT" if not piece.strip('"{}[],:') else "PROPN"))
        pos += len(piece)
    text = "".join(p for p, _ in pieces)
    sources = [
        make_source_info("weather", "Oslo: sunny, 21 degrees.", title="weather tool"),
        make_source_info("geo", "Oslo is the capital of Norway."),
    ]
    return make_answer(text=text, tokens=tokens, sources=sources, **kw)  # type: ignore[arg-type]


def test_leaf_spans_and_paths_of_nested_objects_and_arrays():
    text = '{"name":"Oslo","loc":{"lat":59.9,"ok":true},"tags":["a","b c"],"n":null,"e":[],"x y":-2e3}'
    leaves = json_leaves(text)
    assert [(leaf.path, leaf.value) for leaf in leaves] == [
        ("name", "Oslo"),
        ("loc.lat", 59.9),
        ("loc.ok", True),
        ("tags[0]", "a"),
        ("tags[1]", "b c"),
        ("n", None),
        ("e", []),
        ('["x y"]', -2000.0),
    ]
    spans = {leaf.path: text[leaf.char_start : leaf.char_end] for leaf in leaves}
    assert spans == {
        "name": "Oslo",  # a string's span is its content, without the quotes
        "loc.lat": "59.9",
        "loc.ok": "true",
        "tags[0]": "a",
        "tags[1]": "b c",
        "n": "null",
        "e": "[]",
        '["x y"]': "-2e3",
    }


def test_escaped_strings_keep_their_written_text_and_decode_their_value():
    text = '{"q":"say \\"hi\\"\\n","u":"caf\\u00e9"}'
    leaves = json_leaves(text)
    assert [leaf.value for leaf in leaves] == ['say "hi"\n', "café"]
    assert text[leaves[0].char_start : leaves[0].char_end] == 'say \\"hi\\"\\n'
    assert text[leaves[1].char_start : leaves[1].char_end] == "caf\\u00e9"
    assert {leaf.path: leaf.value for leaf in leaves} == json.loads(text)


def test_root_array_of_objects_and_whitespace():
    text = ' [ {"city" : "Oslo"} , {"city":"Bergen"} ] \n'
    assert [(leaf.path, leaf.value) for leaf in json_leaves(text)] == [
        ("[0].city", "Oslo"),
        ("[1].city", "Bergen"),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"name":"Os', "closing quote"),
        ('{"a":1', "',' or '}'"),
        ('{"a":1} tail', "extra text"),
        ("{a:1}", "a quoted key"),
        ("", "a JSON value"),
    ],
)
def test_text_that_is_not_one_json_value_is_refused_naming_the_place(text: str, problem: str):
    with pytest.raises(InvalidInputError, match="not a JSON reply") as info:
        json_leaves(text)
    assert problem in str(info.value)


def test_fields_cite_the_sources_their_value_tokens_looked_at():
    answer = _answer(
        [
            ('{"', None),
            ("city", "geo"),
            ('":"', None),
            ("Oslo", "geo"),
            ('","', None),
            ("temp", "weather"),
            ('":', None),
            ("21", "weather"),
            (',"', None),
            ("note", None),
            ('":"', None),
            ("nice", None),
            (" day", None),
            ('"}', None),
        ]
    )
    assert answer.text == '{"city":"Oslo","temp":21,"note":"nice day"}'
    fields = {f.path: f for f in field_citations(answer)}
    city = fields["city"]
    assert (city.char_start, city.char_end, city.text, city.value) == (9, 13, "Oslo", "Oslo")
    assert (city.token_start, city.token_end) == (3, 4)
    assert city.source_ids == ["geo"] and city.grounded
    assert city.citations[0].cited_text == "Oslo is the capital of Norway."
    assert city.confidence == pytest.approx(0.8)
    temp = fields["temp"]
    assert (temp.text, temp.value, temp.source_ids) == ("21", 21, ["weather"])
    assert temp.citations[0].title == "weather tool"
    note = fields["note"]  # no token of the value looked at a source
    assert (note.text, note.token_start, note.token_end) == ("nice day", 11, 13)
    assert note.citations == [] and not note.grounded and note.confidence == 0.0


def test_a_token_straddling_the_quote_votes_for_the_string_it_opens():
    answer = _answer([('{"city":"', None), ("Os", "geo"), ('lo"}', "geo")])
    (city,) = field_citations(answer)
    assert (city.text, city.token_start, city.token_end, city.source_ids) == ("Oslo", 1, 3, ["geo"])


def test_curation_applies_to_a_fields_tokens_like_to_a_sentences():
    pieces = [('{"a":"', None)] + [(w, "geo") for w in ("w1 ", "w2 ", "w3 ", "w4 ")] + [("w5", "weather"), ('"}', None)]
    answer = _answer(pieces)
    (field,) = field_citations(answer)
    assert field.source_ids == ["geo"]  # the stray single token is below the curation's bar
    (everything,) = field_citations(answer, CurationConfig(enabled=False))
    assert everything.source_ids == ["geo", "weather"]
    assert sum(c.score for c in everything.citations) == pytest.approx(1.0)


def test_split_source_units_are_cited_by_unit():
    units = [
        make_unit("doc", "Oslo is in Norway.", unit_id="doc#0", index=0),
        make_unit("doc", "Bergen is rainy.", unit_id="doc#1", index=1, char_start=19, char_end=35),
    ]
    tokens = [make_token(0, '["', 0, None, pos="PUNCT"), make_token(1, "Bergen", 2, "doc#1", source_id="doc")]
    tokens.append(make_token(2, '"]', 8, None, pos="PUNCT"))
    answer = make_answer(text='["Bergen"]', tokens=tokens, sources=[make_source_info("doc", units=units)])
    (item,) = field_citations(answer)
    assert item.path == "[0]"
    assert [(c.source_id, c.unit_id, c.cited_text) for c in item.citations] == [("doc", "doc#1", "Bergen is rainy.")]


def test_an_answer_without_sources_has_fields_without_citations():
    answer = make_answer(text='{"a":1}', tokens=[make_token(0, '{"a":1}', 0, None)])
    (field,) = field_citations(answer)
    assert (field.path, field.value, field.citations) == ("a", 1, [])


def test_field_citations_are_frozen_and_json_round_trip():
    (field,) = field_citations(_answer([('{"city":"', None), ("Oslo", "geo"), ('"}', None)]))
    assert FieldCitation.model_validate_json(field.model_dump_json()) == field
    with pytest.raises(Exception, match="frozen"):
        field.path = "x"  # type: ignore[misc]
