"""Sources: validation errors name the problem; units are located exactly in the prompt."""

from __future__ import annotations

import itertools

import pytest

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.sources import TextSource, build_prompt, split_into_sentences, validate_sources


def test_empty_sources_list():
    with pytest.raises(InvalidInputError, match="sources is empty"):
        validate_sources([])


def test_duplicate_ids_are_named():
    with pytest.raises(InvalidInputError, match="duplicate source id 'a'"):
        validate_sources([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])


def test_empty_id_and_text_are_named():
    with pytest.raises(InvalidInputError, match="source #0"):
        validate_sources([{"id": " ", "text": "x"}])
    with pytest.raises(InvalidInputError, match=r"source #1 \('b'\).*empty"):
        validate_sources([{"id": "a", "text": "x"}, {"id": "b", "text": "  "}])


def test_non_text_modality_is_rejected_clearly():
    with pytest.raises(InvalidInputError, match="modality 'image'"):
        validate_sources([{"id": "a", "text": "x", "modality": "image"}])


def test_empty_question(tiny_tokenizer, sources):
    with pytest.raises(InvalidInputError, match="question is empty"):
        build_prompt(tiny_tokenizer, sources, "   ", None)


def test_unit_token_spans_cover_their_text(tiny_tokenizer, sources):
    layout = build_prompt(tiny_tokenizer, sources, "How tall is the lighthouse?", "Be brief.")
    assert [u.source_id for u in layout.units] == ["doc1", "doc2", "doc3"]
    for unit, src in zip(layout.units, sources, strict=True):
        decoded = tiny_tokenizer.decode(layout.input_ids[unit.token_start : unit.token_end])
        assert src.text in decoded and f"[{src.id}]" in decoded
        assert unit.text == src.text[unit.char_start : unit.char_end]
    spans = [(u.token_start, u.token_end) for u in layout.units]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # disjoint, ordered
    question_text = tiny_tokenizer.decode([layout.input_ids[p] for p in layout.reference_positions])
    assert "How tall is the lighthouse?" in question_text
    assert layout.reference_positions[0] == layout.units[-1].token_end


def test_header_positions_are_the_template_after_the_question(tiny_tokenizer, sources):
    layout = build_prompt(tiny_tokenizer, sources, "How tall is the lighthouse?", "Be brief.")
    header = layout.header_positions
    assert header and set(header) <= set(layout.reference_positions)
    assert header == list(range(header[0], len(layout.input_ids)))  # the prompt's tail
    tail = tiny_tokenizer.decode([layout.input_ids[p] for p in header])
    assert "lighthouse" not in tail and "assistant" in tail


def test_question_positions_are_exactly_the_question(tiny_tokenizer, sources):
    layout = build_prompt(tiny_tokenizer, sources, "  How tall is the lighthouse?  ", "Be brief.")
    asked = layout.question_positions
    assert asked == list(range(asked[0], asked[-1] + 1))  # one contiguous stretch
    assert set(asked) <= set(layout.reference_positions) and not set(asked) & set(layout.header_positions)
    text = tiny_tokenizer.decode([layout.input_ids[p] for p in asked]).strip()
    assert text == "How tall is the lighthouse?"  # not the "Question:" label, not the header


def test_split_sources_into_sentence_units(tiny_tokenizer, sources):
    layout = build_prompt(tiny_tokenizer, sources, "q?", None, split_sources=True)
    doc3 = [u for u in layout.units if u.source_id == "doc3"]
    assert [u.unit_id for u in doc3] == ["doc3#0", "doc3#1"]
    assert doc3[1].text == "The company makes water filters."
    assert sources[2].text[doc3[1].char_start : doc3[1].char_end] == doc3[1].text


def test_split_into_sentences_offsets():
    text = "One thing. Two things! Three?"
    assert [text[a:b] for a, b in split_into_sentences(text)] == ["One thing.", "Two things!", "Three?"]


def test_text_source_is_frozen():
    src = TextSource(id="a", text="x")
    with pytest.raises(Exception, match="frozen"):
        src.id = "b"  # type: ignore[misc]
