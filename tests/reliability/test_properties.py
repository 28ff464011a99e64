"""Property tests (hypothesis) over sources, configs and JSONL lines on the tiny random model.

Whatever the input: either a named :class:`InvalidInputError` or a result with no NaN / inf
anywhere, that round-trips through JSON, whose citation spans lie inside their source's text
and whose cited ids are among the inputs. Teacher-forced attribution (one forward pass) keeps
each example cheap.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from omnitrace_core import InvalidInputError, TracedAnswer, TracerConfig
from omnitrace_core.config import CurationConfig, MappingConfig

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text with everything a user may paste: any code point (lone surrogates included), control
# characters, U+2028, chat-control tokens, emoji.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
SPICE = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\u2028", "\ud800", "\x00", "🙂", "\n\n", " "])
TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=12), SPICE), max_size=6).map("".join)
WORDY = st.lists(st.sampled_from(["The", "lighthouse", "is", "42", "metres", "tall.", "Valbrook", "1905", ".", ","]), min_size=1, max_size=12).map(" ".join)
FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, -1.0]))


def _no_nan(value: Any, where: str = "answer") -> None:
    if isinstance(value, float):
        assert math.isfinite(value), f"{where} = {value}"
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nan(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nan(v, f"{where}[{i}]")


def check_answer(answer: TracedAnswer, sources: list[Any]) -> None:
    """The invariants every result keeps."""
    _no_nan(answer.model_dump())
    text = answer.model_dump_json()  # pydantic writes NaN as null: checked above
    assert TracedAnswer.model_validate_json(text) == answer
    json.loads(text)  # strict JSON
    by_id = {(s["id"] if isinstance(s, dict) else s.id): s for s in sources}
    for sentence in answer.sentences:
        assert answer.text[sentence.char_start : sentence.char_end] == sentence.text
        for c in sentence.citations:
            assert c.source_id in by_id
            src = by_id[c.source_id]
            src_text = src["text"] if isinstance(src, dict) else src.text
            assert 0 <= c.char_start <= c.char_end <= len(src_text)
            assert src_text[c.char_start : c.char_end] == c.cited_text
            assert 0.0 <= c.score <= 1.0 + 1e-9
    for info in answer.sources:
        assert info.id in by_id


WILD_SOURCE = st.fixed_dictionaries(
    {"id": st.one_of(TEXT, st.sampled_from(["a", "b", "doc1"])), "text": st.one_of(WORDY, TEXT)},
    optional={"title": st.one_of(st.none(), TEXT), "label": st.one_of(st.none(), st.just("d1"))},
)
#: Plausible text with a pinch of anything (control tokens, U+2028, emoji, NUL), no surrogate.
SPICY = st.tuples(WORDY, st.lists(SPICE.filter(lambda t: t != "\ud800"), max_size=2), WORDY).map(
    lambda p: " ".join([p[0], *p[1], p[2]])
)
GOOD_SOURCE = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c", "doc1", "🙂 id"]), "text": SPICY},
    optional={"title": st.one_of(st.none(), SPICY)},
)
SOURCE_LISTS = st.one_of(
    st.lists(GOOD_SOURCE, min_size=1, max_size=4, unique_by=lambda s: s["id"]),
    st.lists(GOOD_SOURCE, min_size=1, max_size=4, unique_by=lambda s: s["id"]),
    st.lists(WILD_SOURCE, min_size=0, max_size=4),
)
SOURCE = WILD_SOURCE


@FAST
@given(sources=SOURCE_LISTS, question=st.one_of(SPICY, SPICY, TEXT), response=st.one_of(SPICY, SPICY, TEXT))
def test_attribute_any_sources(tiny_tracer, sources, question, response):
    try:
        answer = tiny_tracer.attribute(sources, question, response)
    except InvalidInputError as exc:
        assert str(exc)  # named
        event(f"refused: {type(exc).__name__}")
        return
    event("attributed")
    check_answer(answer, sources)


@FAST
@given(sources=SOURCE_LISTS, question=SPICY, split=st.booleans())
def test_generate_any_sources(tiny_tracer, sources, question, split):
    try:
        answer = tiny_tracer.generate(sources, question, max_new_tokens=6, config=TracerConfig(split_sources=split))
    except InvalidInputError as exc:
        assert str(exc)
        event("refused")
        return
    event("generated")
    check_answer(answer, sources)


CURATION = st.fixed_dictionaries(
    {},
    optional={
        "gamma": FLOAT,
        "alpha": FLOAT,
        "run_min": FLOAT,
        "p_min": FLOAT,
        "coverage": FLOAT,
        "min_relative": FLOAT,
        "other_pos_weight": FLOAT,
        "pos_weights": st.dictionaries(st.sampled_from(["NOUN", "VERB", "PUNCT", "X"]), FLOAT, max_size=3),
        "max_citations": st.one_of(st.none(), st.integers(-1, 4)),
        "enabled": st.booleans(),
    },
)
MAPPING = st.fixed_dictionaries(
    {},
    optional={
        "rule": st.sampled_from(["summed", "peak", "bogus"]),
        "bias_correction": st.sampled_from(["none", "prompt", "running", "both", "x"]),
        "exclude_first_positions": st.integers(-2, 40),
        "token_rows": st.sampled_from(["producing", "reading", "both"]),
        "prompt_reference": st.sampled_from(["header", "after_sources"]),
    },
)

GOOD_SOURCES = [
    {"id": "a", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
    {"id": "b", "text": "The lighthouse stands 42 metres tall. Its keeper lit the lamp."},
]


@FAST
@given(curation=CURATION, mapping=MAPPING, split=st.booleans())
def test_any_config_is_refused_by_name_or_gives_finite_results(tiny_tracer, curation, mapping, split):
    try:
        cfg = TracerConfig(curation=CurationConfig(**curation), mapping=MappingConfig(**mapping), split_sources=split)
    except InvalidInputError as exc:
        assert "Config" in str(exc)
        event("config refused")
        return
    event("config used")
    answer = tiny_tracer.attribute(GOOD_SOURCES, "When was it founded?", "It was founded in 1905. It is 42 metres tall.", config=cfg)
    check_answer(answer, GOOD_SOURCES)
    assert TracerConfig.model_validate(answer.config) == cfg  # the config in the result round-trips


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT.filter(lambda t: "\ud800" not in t)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
ROW = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.none(), st.integers(), st.just(""), st.just("r1"), TEXT),
        "question": st.one_of(WORDY, JSON_VALUE),
        "sources": st.one_of(st.lists(WILD_SOURCE.filter(lambda s: "\ud800" not in json.dumps(s)), max_size=2), JSON_VALUE),
        "task": st.one_of(st.sampled_from(["qa_single", "teacher_forced", "essay"]), JSON_VALUE),
        "response": st.one_of(WORDY, JSON_VALUE),
    },
)
GOOD_ROW = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["r1", "r2", "r3"]),
        "question": SPICY,
        "sources": st.lists(GOOD_SOURCE, min_size=1, max_size=3, unique_by=lambda s: s["id"]),
    },
    optional={"task": st.sampled_from(["qa_single", "summary"]), "response": SPICY},
)
LINE = st.one_of(
    GOOD_ROW.map(lambda r: json.dumps(r, ensure_ascii=False)),
    GOOD_ROW.map(json.dumps),
    ROW.map(lambda r: json.dumps(r, ensure_ascii=False)),
    JSON_VALUE.map(json.dumps),
    st.text(max_size=30).filter(lambda t: "\n" not in t and "\ud800" not in t),
    st.just("{broken"),
    st.just("\ufeff{}"),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=4))
def test_predict_rows_never_crash_and_count_every_row(tiny_tracer, tmp_path_factory, lines):
    from omnitrace_core.evaluation.bench import RowError, numbered_rows, predict_rows

    folder = tmp_path_factory.mktemp("jsonl")
    data = folder / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    rows = list(numbered_rows(data))
    assume(rows)
    problems: list[str] = []
    out = io.StringIO()
    written, failures = predict_rows(
        tiny_tracer, rows, out, max_new_tokens=3, on_problem=problems.append, where=str(data)
    )
    assert written + failures == len(rows)
    event(f"written {written}, skipped {failures}")
    assert len(problems) == failures
    for line, row in rows:  # every skipped line is named by file and line
        if isinstance(row, RowError):
            assert row.message.startswith(f"{data}:{line}: ")
            assert any(row.message in p for p in problems)
    for text in out.getvalue().splitlines():
        prediction = json.loads(text)
        _no_nan(prediction, "prediction")
