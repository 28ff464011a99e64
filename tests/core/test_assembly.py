"""Sentence assembly: sentences are committed as soon as they are complete, never re-split."""

from __future__ import annotations

from omnitrace_core.assembly import SentenceAssembler
from omnitrace_core.chunking import Chunker
from omnitrace_core.config import CurationConfig
from omnitrace_core.mapping import TokenMapping
from omnitrace_core.sources import SourceUnit, TextSource

SOURCES = [TextSource(id="a", text="Alpha text."), TextSource(id="b", text="Beta text.")]
UNITS = [
    SourceUnit(unit_id="a", source_id="a", index=0, text="Alpha text.", char_start=0, char_end=11,
               token_start=1, token_end=3),
    SourceUnit(unit_id="b", source_id="b", index=0, text="Beta text.", char_start=0, char_end=10,
               token_start=3, token_end=5),
]
TO_A = TokenMapping(shares=(0.9, 0.1), raw_shares=(0.9, 0.1), unit_index=0, confidence=0.9, source_fraction=0.5)
TO_B = TokenMapping(shares=(0.2, 0.8), raw_shares=(0.2, 0.8), unit_index=1, confidence=0.8, source_fraction=0.5)


def _feed(pieces):
    asm = SentenceAssembler(SOURCES, UNITS, Chunker(), CurationConfig())
    text, emitted_at = "", []
    for i, (piece, mapping) in enumerate(pieces):
        start = len(text)
        text += piece
        for s in asm.add(text, piece, start, len(text), mapping):
            emitted_at.append((i, s.text))
    for s in asm.finish(text):
        emitted_at.append(("end", s.text))
    return asm, emitted_at


def test_sentence_is_emitted_by_the_token_that_closes_it():
    pieces = [("The", TO_A), (" alpha", TO_A), (" works", TO_A), (" well", TO_A), (".", TO_A),
              (" Beta", TO_B), (" is", TO_B), (" second", TO_B), (".", TO_B)]
    asm, emitted = _feed(pieces)
    assert emitted == [(4, "The alpha works well."), (8, "Beta is second.")]
    assert [[c.source_id for c in s.citations] for s in asm.sentences] == [["a"], ["b"]]
    assert [(s.token_start, s.token_end) for s in asm.sentences] == [(0, 5), (5, 9)]


def test_a_number_before_the_period_waits_for_the_next_token():
    pieces = [("It", TO_A), (" is", TO_A), (" 41", TO_A), (".", TO_A), ("5", TO_A), (" metres", TO_A), (".", TO_A)]
    _, emitted = _feed(pieces)
    assert emitted == [(6, "It is 41.5 metres.")]
