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


# One recording with three timed units (the entity is named in unit 0, the answer is unit 2)
# and a second recording.
TIMED = [TextSource(id="rec", text="Unit zero. Unit one. Unit two.", modality="audio"),
         TextSource(id="other", text="Other.", modality="audio")]
TIMED_UNITS = [
    SourceUnit(unit_id=f"rec#{k}", source_id="rec", index=k, text=f"Unit {k}.", char_start=10 * k,
               char_end=10 * k + 9, token_start=1 + 2 * k, token_end=3 + 2 * k, modality="audio",
               seconds=(3.0 * k, 3.0 * k + 2.5))
    for k in range(3)
] + [SourceUnit(unit_id="other#0", source_id="other", index=0, text="Other.", char_start=0, char_end=6,
                token_start=7, token_end=9, modality="audio", seconds=(0.0, 2.0))]


def _to(unit: int, echo: bool = False) -> TokenMapping:
    shares = tuple(0.7 if i == unit else 0.1 for i in range(4))
    return TokenMapping(shares=shares, raw_shares=shares, unit_index=unit, confidence=0.7,
                        source_fraction=0.5, echo=echo)


def _cite(pieces):
    asm = SentenceAssembler(TIMED, TIMED_UNITS, Chunker(), CurationConfig())
    text = ""
    for piece, mapping in pieces:
        start = len(text)
        text += piece
        asm.add(text, piece, start, len(text), mapping)
    asm.finish(text)
    return [(c.source_id, c.seconds, round(c.score, 6)) for c in asm.sentences[0].citations]


def test_echo_tokens_choose_the_source_but_not_where_in_it():
    # "Kestrel Bridge" echoes the question and looks at unit 0, where the recording names it;
    # "Laura Fenwick designed" looks at unit 2, which answers.
    sentence = [(" Laura", _to(2)), (" Fenwick", _to(2)), (" designed", _to(2)), (" the", _to(2)),
                (" Kestrel", _to(0, echo=True)), (" Bridge", _to(0, echo=True)), (".", _to(2))]
    echoes_known = _cite(sentence)
    echoes_unknown = _cite([(p, _to(m.unit_index)) for p, m in sentence])
    assert [s for s, _, _ in echoes_unknown] == ["rec"] and echoes_unknown[0][1] == [(0.0, 2.5), (6.0, 8.5)]
    assert echoes_known == [("rec", [(6.0, 8.5)], echoes_unknown[0][2])]  # same source, same score


def test_a_source_only_echoes_vote_for_keeps_its_units():
    sentence = [(" Other", _to(3)), (" words", _to(3)), (" Kestrel", _to(0, echo=True)),
                (" Bridge", _to(0, echo=True)), (".", _to(3))]
    cited = _cite(sentence)
    assert {s for s, _, _ in cited} == {"rec", "other"}
    assert dict((s, secs) for s, secs, _ in cited)["rec"] == [(0.0, 2.5)]
