"""The user message of an omni prompt: sources in order, then the question.

Same layout as the text builder (:func:`omnitrace_core.sources.build_prompt`): a ``Sources:``
block where every source gets a ``[label] title`` header, then ``Question: ...``. A text source
is written out (whole, by sentence, or by transcript segment, as its units); a media source is
the family's placeholder (``<|vision_start|><|image_pad|><|vision_end|>``), which the
processor later expands into the medium's tokens. The header of a text source belongs to its
first unit; the header of a media source is scaffolding, so media units own exactly their
medium's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omnitrace_core.media.omni.specs import ModalitySpec
from omnitrace_core.sources import MediaSource, Source, SourceUnit, TextSource, split_into_sentences


@dataclass(frozen=True)
class TextPiece:
    """A text unit and its character span in the user message."""

    unit: SourceUnit
    start: int
    end: int


@dataclass(frozen=True)
class MediaSlot:
    """A media source and the span of its placeholder in the user message."""

    source: MediaSource
    start: int
    end: int


@dataclass(frozen=True)
class UserMessage:
    """The composed message, its text units and its media placeholders, in prompt order."""

    text: str
    pieces: list[TextPiece]
    slots: list[MediaSlot]


def compose_message(
    sources: Sequence[Source], question: str, spec: ModalitySpec, model_name: str, split: bool
) -> UserMessage:
    """Lay the sources and the question out as one user message.

    Raises:
        UnsupportedModalityError: if a media source's modality is not read by the family.
    """
    parts = ["Sources:\n"]
    offset = len(parts[0])
    pieces: list[TextPiece] = []
    slots: list[MediaSlot] = []
    for src in sources:
        header = f"[{src.label or src.id}]" + (f" {src.title}" if src.title else "") + "\n"
        if isinstance(src, MediaSource):
            placeholder = spec.tokens(src.modality, model_name).placeholder
            start = offset + len(header)
            slots.append(MediaSlot(src, start, start + len(placeholder)))
            block = header + placeholder + "\n\n"
        else:
            text = src.text.strip()
            pieces.extend(_text_pieces(src, text, offset, offset + len(header), split))
            block = header + text + "\n\n"
        parts.append(block)
        offset += len(block)
    parts.append(f"Question: {question.strip()}")
    return UserMessage("".join(parts), pieces, slots)


def _text_pieces(
    src: TextSource, text: str, block_start: int, text_start: int, split: bool
) -> list[TextPiece]:
    """A text source's units (whole / sentences / timed segments) and their message spans."""
    lead = len(src.text) - len(src.text.lstrip())
    timed = [
        (max(0, seg.char_start - lead), min(len(text), seg.char_end - lead), (seg.start_s, seg.end_s))
        for seg in src.segments or []
        if seg.char_start is not None and seg.char_end is not None
    ]
    timed = [t for t in timed if t[1] > t[0]]
    spans = (
        [(a, b) for a, b, _ in timed] if timed else split_into_sentences(text) if split else [(0, len(text))]
    )
    out: list[TextPiece] = []
    for k, (a, b) in enumerate(spans):
        unit = SourceUnit(
            unit_id=f"{src.id}#{k}" if split or timed else src.id,
            source_id=src.id,
            index=k,
            text=text[a:b],
            char_start=lead + a,
            char_end=lead + b,
            modality=src.modality,
            seconds=timed[k][2] if timed else None,
        )
        out.append(TextPiece(unit, block_start if k == 0 else text_start + a, text_start + b))
    return out
