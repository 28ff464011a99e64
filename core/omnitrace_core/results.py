"""Frozen result objects: the cited answer with per-sentence, per-source and per-token views.

Everything here is a frozen pydantic model, so results are hashable-by-value, safe to share
between threads, and JSON round-trips losslessly (``TracedAnswer.model_validate_json(
answer.model_dump_json()) == answer``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omnitrace_core.sources import Modality, SourceUnit

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Citation(BaseModel):
    """One cited source unit of a sentence.

    Attributes:
        source_id: The caller's source id, unchanged.
        unit_id: The cited unit (equals ``source_id`` unless sources are split).
        score: The unit's normalised curated vote in this sentence (0..1).
        cited_text: The unit's text.
        char_start: Start of ``cited_text`` in the source's text.
        char_end: End of ``cited_text`` in the source's text.
    """

    model_config = _FROZEN

    source_id: str
    unit_id: str
    score: float
    cited_text: str
    char_start: int
    char_end: int
    title: str | None = None
    url: str | None = None
    modality: Modality = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)
    seconds: list[tuple[float, float]] = Field(default_factory=list)
    """Audio / video: the cited stretches in seconds (adjacent cited bins merged into one span)."""
    boxes: list[tuple[int, int, int, int]] = Field(default_factory=list)
    """Image: the cited regions as pixel boxes ``(x0, y0, x1, y1)``."""

    @classmethod
    def of_unit(cls, unit: SourceUnit, source: Any, score: float) -> Citation:
        """Cite ``unit`` with ``score``; ``source`` (a source or its :class:`SourceInfo`)
        gives the title, url and metadata."""
        return cls(
            source_id=unit.source_id,
            unit_id=unit.unit_id,
            score=score,
            cited_text=unit.text,
            char_start=unit.char_start,
            char_end=unit.char_end,
            title=source.title,
            url=source.url,
            modality=unit.modality,
            metadata=dict(source.metadata),
            seconds=[unit.seconds] if unit.seconds else [],
            boxes=[unit.box] if unit.box else [],
        )


class TokenAttribution(BaseModel):
    """Where one generated token looked: its top unit and how confidently."""

    model_config = _FROZEN

    index: int
    token: str
    char_start: int
    char_end: int
    unit_id: str | None
    source_id: str | None
    confidence: float
    pos: str | None = None
    source_fraction: float = 0.0


class SentenceAttribution(BaseModel):
    """One answer sentence and its curated citations.

    Attributes:
        char_start: Start offset in the answer text (``answer.text[char_start:char_end] == text``).
        token_start: First generated token of the sentence (index into ``answer.tokens``).
        source_mass: Each source's share of the sentence's attribution (POS-weighted mean of
            the tokens' corrected shares), summing to 1 when any source received mass.
        grounded: False when no source is cited (nothing the model read supports it).
    """

    model_config = _FROZEN

    index: int
    text: str
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    citations: list[Citation]
    source_mass: dict[str, float]
    grounded: bool


class SourceInfo(BaseModel):
    """A source as given, with its units (for the per-source view)."""

    model_config = _FROZEN

    id: str
    title: str | None = None
    url: str | None = None
    modality: Modality = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)
    units: list[SourceUnit]


class TracedAnswer(BaseModel):
    """A generated (or forced) answer with its attribution.

    Attributes:
        text: The answer, always present, even if attribution failed.
        errors: Failures recorded instead of raised (e.g. chunking or curation), so the
            answer is never lost.
        mode: ``generate`` (decoded here) or ``attribute`` (teacher-forced response).
    """

    model_config = _FROZEN

    text: str
    sentences: list[SentenceAttribution]
    tokens: list[TokenAttribution]
    sources: list[SourceInfo]
    model: str
    signal: str
    mode: Literal["generate", "attribute"]
    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["stop", "length"] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def cited_source_ids(self) -> list[str]:
        """Every cited source id, in order of first citation."""
        seen: dict[str, None] = {}
        for s in self.sentences:
            for c in s.citations:
                seen.setdefault(c.source_id, None)
        return list(seen)

    def source_view(self) -> dict[str, float]:
        """Per-source share of the whole answer's attribution (token-weighted mean of sentences)."""
        total: dict[str, float] = {}
        weight = 0
        for s in self.sentences:
            n = max(1, s.token_end - s.token_start)
            weight += n
            for sid, m in s.source_mass.items():
                total[sid] = total.get(sid, 0.0) + m * n
        return {k: v / weight for k, v in total.items()} if weight else {}

    def to_prediction(self, row_id: str) -> dict[str, Any]:
        """One row in the shared benchmark's prediction format."""
        return {
            "id": row_id,
            "text": self.text,
            "sentences": [
                {
                    "text": s.text,
                    "start": s.char_start,
                    "end": s.char_end,
                    "citations": [_citation_row(c) for c in s.citations],
                    "source_mass": s.source_mass,
                    "grounded": s.grounded,
                }
                for s in self.sentences
            ],
        }


def _citation_row(citation: Citation) -> dict[str, Any]:
    row: dict[str, Any] = {"source_id": citation.source_id, "score": citation.score}
    if citation.seconds:
        row["seconds"] = [list(span) for span in citation.seconds]
    if citation.boxes:
        row["boxes"] = [list(box) for box in citation.boxes]
    return row


class TextDelta(BaseModel):
    """Streaming event: new answer text."""

    model_config = _FROZEN
    kind: Literal["text"] = "text"
    text: str
    token_index: int


class SentenceEvent(BaseModel):
    """Streaming event: a sentence is complete and cited."""

    model_config = _FROZEN
    kind: Literal["sentence"] = "sentence"
    sentence: SentenceAttribution


class FinalEvent(BaseModel):
    """Streaming event: the whole result (identical to what ``generate`` returns)."""

    model_config = _FROZEN
    kind: Literal["final"] = "final"
    answer: TracedAnswer


StreamEvent = TextDelta | SentenceEvent | FinalEvent


def merge_located(citations: list[Citation]) -> list[Citation]:
    """One citation per timed / boxed source: its cited units' seconds merged into spans
    (adjacent bins join) and its boxes listed; the score is the units' summed vote.

    Text citations pass through unchanged. Order: by score, best first.
    """
    located: dict[str, list[Citation]] = {}
    out: list[Citation] = []
    for c in citations:
        if c.seconds or c.boxes:
            located.setdefault(c.source_id, []).append(c)
        else:
            out.append(c)
    for group in located.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        by_place = sorted(group, key=lambda c: (c.seconds[0] if c.seconds else (0.0, 0.0), c.char_start))
        first = by_place[0]
        out.append(
            first.model_copy(
                update={
                    "score": sum(c.score for c in group),
                    "cited_text": " ".join(c.cited_text for c in by_place if c.cited_text),
                    "char_start": min(c.char_start for c in group),
                    "char_end": max(c.char_end for c in group),
                    "seconds": merge_spans(span for c in group for span in c.seconds),
                    "boxes": [box for c in by_place for box in c.boxes],
                }
            )
        )
    return sorted(out, key=lambda c: -c.score)


def merge_spans(spans: Iterable[tuple[float, float]], gap: float = 1e-6) -> list[tuple[float, float]]:
    """Sorted union of time spans; spans closer than ``gap`` seconds are joined."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
