"""Sentences with exact offsets and POS tags, with spaCy and with the rule fallback."""

from __future__ import annotations

import pytest

from omnitrace_core.chunking import Chunker

TEXT = "  Valbrook Works employs 405 people. It was founded in 1905!\nThe end"


@pytest.mark.parametrize("use_spacy", [True, False])
def test_sentence_spans_are_exact_offsets(use_spacy):
    chunker = Chunker(use_spacy=use_spacy)
    spans = chunker.sentences(TEXT)
    texts = [TEXT[a:b] for a, b in spans]
    assert texts == ["Valbrook Works employs 405 people.", "It was founded in 1905!", "The end"]


def test_spacy_backend_is_used_when_installed():
    assert Chunker().backend == "spacy"


@pytest.mark.parametrize("use_spacy", [True, False])
def test_pos_tags(use_spacy):
    words = Chunker(use_spacy=use_spacy).words("Bastian founded 405 mills.", offset=10)
    tags = {w.start: w.pos for w in words}
    assert tags[10] == "PROPN"
    assert tags[10 + len("Bastian founded ")] == "NUM"
    assert words[-1].pos == "PUNCT"


def test_empty_text_has_no_sentences():
    assert Chunker().sentences("   ") == []


def test_spacy_loads_at_first_use_not_in_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tracer builds its Chunker before the prompt's forward pass; loading the pipeline then
    # would add it on top of that pass's peak memory instead of reusing its freed blocks.
    calls: list[int] = []
    monkeypatch.setattr(Chunker, "_tried", False)
    monkeypatch.setattr(Chunker, "_load", classmethod(lambda cls: calls.append(1)))
    chunker = Chunker()
    assert calls == []
    chunker.sentences("One sentence. Another one.")
    assert calls == [1]
