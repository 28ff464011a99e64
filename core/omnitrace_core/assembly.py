"""Turns mapped tokens into sentences with curated citations, incrementally.

Shared by streaming generation and teacher-forced attribution so both produce results the
same way. Sentences are committed as soon as the next sentence has begun (the boundary is
then certain); a committed sentence is never re-split, which keeps streamed sentence events and
the final result identical. A failure while chunking or curating a sentence is recorded in
``errors`` and the sentence is kept without citations: the answer text is never lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from omnitrace_core.chunking import Chunker, Word
from omnitrace_core.config import CurationConfig
from omnitrace_core.curation import TokenVote, curate, pos_weight, unit_votes
from omnitrace_core.mapping import TokenMapping
from omnitrace_core.results import (
    Citation,
    SentenceAttribution,
    SourceInfo,
    TokenAttribution,
    merge_located,
    merge_spans,
)
from omnitrace_core.sources import Source, SourceUnit

# merge_located / merge_spans moved to results (the re-ranker needs them without the assembler)
__all__ = ["SentenceAssembler", "SentenceReranker", "merge_located", "merge_spans"]

_TERMINATORS = (".", "!", "?", "\n", "。")


class SentenceReranker(Protocol):
    """An optional stage that re-decides one sentence's citations (e.g. by meaning).

    Called with the sentence text, the units that have text, the curation's normalised vote per
    unit id and the source titles; returns ``(unit_id, score)`` best first (empty: unsupported).
    :class:`omnitrace_core.rerank.EmbeddingReranker` is the built-in one.
    """

    def __call__(
        self,
        sentence_text: str,
        candidate_units: list[SourceUnit],
        attention_votes: dict[str, float],
        titles: Mapping[str, str],
    ) -> list[tuple[str, float]]: ...


@dataclass
class _Token:
    index: int
    text: str
    start: int
    end: int
    mapping: TokenMapping
    pos: str | None = None


class SentenceAssembler:
    """Accumulates tokens and emits :class:`SentenceAttribution` objects as sentences complete."""

    def __init__(
        self,
        sources: Sequence[Source],
        units: Sequence[SourceUnit],
        chunker: Chunker,
        curation: CurationConfig,
        reranker: SentenceReranker | None = None,
    ) -> None:
        self.sources = {s.id: s for s in sources}
        self.reranker = reranker
        self.units = list(units)
        self._members: dict[str, list[int]] = {}
        for i, u in enumerate(self.units):
            self._members.setdefault(u.source_id, []).append(i)
        self.chunker = chunker
        self.curation = curation
        self.text = ""
        self.tokens: list[_Token] = []
        self.sentences: list[SentenceAttribution] = []
        self.errors: list[str] = []
        self._committed = 0  # answer chars already assigned to committed sentences
        self._first_open = 0  # tokens before this one end before the last committed sentence
        self._after_terminator = False

    def add(
        self, text: str, token: str, start: int, end: int, mapping: TokenMapping
    ) -> list[SentenceAttribution]:
        """Add one token (``text`` is the whole answer so far); return newly completed sentences."""
        self.text = text
        self.tokens.append(_Token(len(self.tokens), token, start, end, mapping))
        # Run the splitter only around candidate boundaries: on a token carrying a terminator
        # and on the token after it (where a new sentence may begin). Splitting the growing
        # tail on every token cost ~15 ms per token (benchmarks/overhead.py).
        has_terminator = any(t in token for t in _TERMINATORS)
        near_boundary = self._after_terminator or has_terminator
        self._after_terminator = has_terminator
        if not near_boundary:  # checked first: the tail is not even sliced on most tokens
            return []
        tail = text[self._committed :]
        if not any(t in tail for t in _TERMINATORS):
            return []
        try:
            spans = self.chunker.sentences(tail)
        except Exception as exc:  # never lose the answer over a splitter failure
            self._record(f"sentence splitting failed: {exc!r}")
            return []
        done: list[SentenceAttribution] = []
        # All but the last span are complete once a later sentence has begun.
        for a, b in spans[:-1]:
            done.append(self._commit(self._committed + a, self._committed + b))
        if len(spans) > 1:
            self._committed += spans[-1][0]
        # The last span is complete already if this token closed it with sentence-final
        # punctuation: commit it now rather than one decode step later (citation latency).
        # Not after a digit ("41." may become "41.5") nor for one or two words ("Dr."): wait.
        tail = text[self._committed :]
        last = tail.strip()
        if (
            spans
            and _closes_sentence(token)
            and len(last.split()) >= 3
            and not last[-2:-1].isdigit()
            and (spans[-1][1] - spans[-1][0]) == len(last)
        ):
            begin = self._committed + len(tail) - len(tail.lstrip())
            done.append(self._commit(begin, begin + len(last)))
            self._committed = len(text)
        return done

    def finish(self, text: str) -> list[SentenceAttribution]:
        """Commit whatever remains at the end of the answer."""
        self.text = text
        tail = text[self._committed :]
        try:
            spans = self.chunker.sentences(tail)
        except Exception as exc:
            self._record(f"sentence splitting failed: {exc!r}")
            stripped = tail.strip()
            spans = [(tail.find(stripped), tail.find(stripped) + len(stripped))] if stripped else []
        out = [self._commit(self._committed + a, self._committed + b) for a, b in spans]
        self._committed = len(text)
        return out

    def token_records(self) -> list[TokenAttribution]:
        out = []
        for t in self.tokens:
            unit = self.units[t.mapping.unit_index] if t.mapping.unit_index >= 0 else None
            out.append(
                TokenAttribution(
                    index=t.index,
                    token=t.text,
                    char_start=t.start,
                    char_end=t.end,
                    unit_id=unit.unit_id if unit else None,
                    source_id=unit.source_id if unit else None,
                    confidence=t.mapping.confidence,
                    pos=t.pos,
                    source_fraction=t.mapping.source_fraction,
                )
            )
        return out

    def source_infos(self) -> list[SourceInfo]:
        return [
            SourceInfo(
                id=s.id,
                title=s.title,
                url=s.url,
                modality=s.modality,
                metadata=dict(s.metadata),
                units=[u for u in self.units if u.source_id == s.id],
            )
            for s in self.sources.values()
        ]

    # -- internals --------------------------------------------------------------------------
    def _record(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

    def _commit(self, a: int, b: int) -> SentenceAttribution:
        # Sentences are committed in order and token spans are monotonic: skip the tokens that
        # end before this sentence once and for all (amortised O(1) per token).
        while self._first_open < len(self.tokens) and self.tokens[self._first_open].end <= a:
            self._first_open += 1
        toks = [t for t in self.tokens[self._first_open :] if t.end > a and t.start < b and t.end > t.start]
        first = toks[0].index if toks else len(self.tokens)
        last = toks[-1].index + 1 if toks else first
        citations: list[Citation] = []
        mass: dict[str, float] = {}
        try:
            self._tag(toks, a, b)
            votes = [TokenVote(t.mapping.unit_index, t.mapping.confidence, t.pos or "X") for t in toks]
            chosen = curate(votes, self.curation)
            if self.reranker is not None:
                chosen = self._reranked(self.text[a:b], votes, chosen, self.reranker)
            chosen = self._located_without_echoes(toks, chosen)
            for unit_index, score in chosen:
                unit = self.units[unit_index]
                citations.append(Citation.of_unit(unit, self.sources[unit.source_id], score))
            citations = merge_located(citations)
            mass = self._source_mass(toks)
        except Exception as exc:  # keep the sentence, record why it has no citations
            self._record(f"attribution of sentence {len(self.sentences)} failed: {exc!r}")
        sentence = SentenceAttribution(
            index=len(self.sentences),
            text=self.text[a:b],
            char_start=a,
            char_end=b,
            token_start=first,
            token_end=last,
            citations=citations,
            source_mass=mass,
            grounded=bool(citations),
        )
        self.sentences.append(sentence)
        return sentence

    def _reranked(
        self,
        text: str,
        votes: list[TokenVote],
        curated: list[tuple[int, float]],
        reranker: SentenceReranker,
    ) -> list[tuple[int, float]]:
        """The units cited after the re-ranking stage re-decides the votes (e.g. by meaning).

        Units without text (an image region) keep the curation's choice. A re-ranking failure
        (e.g. the embedding model is not installed) is recorded and the curated citations stand.
        """
        texted = [i for i, u in enumerate(self.units) if u.text.strip()]
        if not texted:
            return curated
        shares = unit_votes(votes, self.curation)
        titles = {sid: title for sid, s in self.sources.items() if (title := getattr(s, "title", None))}
        try:
            cited = reranker(
                text,
                [self.units[i] for i in texted],
                {self.units[i].unit_id: shares.get(i, 0.0) for i in texted},
                titles,
            )
        except Exception as exc:  # never lose the attention citations over the embedder
            self._record(f"re-ranking of sentence {len(self.sentences)} failed: {exc!r}")
            return curated
        index = {self.units[i].unit_id: i for i in texted}
        keep = set(texted)
        return [(index[u], s) for u, s in cited] + [(i, s) for i, s in curated if i not in keep]

    def _located_without_echoes(
        self, toks: list[_Token], chosen: list[tuple[int, float]]
    ) -> list[tuple[int, float]]:
        """Inside each cited source of several units, the units the non-echo tokens pick.

        Tokens that echo the question (``TokenMapping.echo``: the entity the user asked about)
        still help decide *which* sources a sentence cites, but they point at wherever a
        source first names that entity, not at the part that answers. So a cited source's
        units are curated again from its other tokens' votes; the source keeps its score,
        shared by the units in proportion. A source no such token votes for keeps its units.
        """
        if not any(t.mapping.echo for t in toks):
            return chosen
        picked: dict[str, list[tuple[int, float]]] = {}
        for unit, score in chosen:
            picked.setdefault(self.units[unit].source_id, []).append((unit, score))
        out: list[tuple[int, float]] = []
        for sid, units in picked.items():
            members = set(self._members[sid])
            located: list[tuple[int, float]] = []
            if len(members) > 1:
                votes = [
                    TokenVote(
                        -1 if t.mapping.echo or t.mapping.unit_index not in members else t.mapping.unit_index,
                        t.mapping.confidence,
                        t.pos or "X",
                    )
                    for t in toks
                ]
                located = curate(votes, self.curation)
            if not located:
                out.extend(units)
                continue
            total, norm = sum(s for _, s in units), sum(s for _, s in located)
            out.extend((unit, total * s / norm) for unit, s in located)
        return sorted(out, key=lambda c: -c[1])

    def _tag(self, toks: list[_Token], a: int, b: int) -> None:
        words: list[Word] = self.chunker.words(self.text[a:b], a)
        for t in toks:
            best, best_overlap = "SPACE", 0
            for w in words:
                overlap = min(w.end, t.end) - max(w.start, t.start)
                if overlap > best_overlap:
                    best, best_overlap = w.pos, overlap
            t.pos = best

    def _source_mass(self, toks: list[_Token]) -> dict[str, float]:
        totals: dict[str, float] = {}
        weight_sum = 0.0
        for t in toks:
            w = pos_weight(t.pos or "X", self.curation)
            if w <= 0 or not any(t.mapping.shares):
                continue
            weight_sum += w
            for unit, share in zip(self.units, t.mapping.shares, strict=True):
                totals[unit.source_id] = totals.get(unit.source_id, 0.0) + w * share
        if weight_sum <= 0:
            return {}
        return {sid: v / weight_sum for sid, v in totals.items()}


def _closes_sentence(token: str) -> bool:
    """True if the token ends with sentence-final punctuation (not an ellipsis)."""
    stripped = token.rstrip()
    return stripped.endswith((".", "!", "?")) and not stripped.endswith("...")
