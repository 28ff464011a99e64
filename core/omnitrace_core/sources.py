"""Source units and the prompt that lays them out.

A *source* is what the caller hands in (a passage with an id); a *unit* is what a citation
points at: the whole source, or one of its sentences when ``split_sources`` is on. Each unit
knows its character span in its source and its token span in the prompt, so attention mass on
prompt positions can be summed per unit. Everything else in the prompt (chat template,
instruction, question) is scaffolding and never a source.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.validation import CheckedModel, show

Modality = Literal["text", "image", "audio", "video"]
MediaModality = Literal["image", "audio", "video"]


class _SourceModel(CheckedModel):
    """Frozen, no unknown fields, finite numbers, no bool / bytes coerced, no lone surrogate;
    refusals are :class:`InvalidInputError` naming the field and the value."""

    error_class = InvalidInputError


class TimedSegment(_SourceModel):
    """A stretch of a recording, in seconds, optionally with the text spoken in it.

    Attributes:
        start_s: Start time in seconds.
        end_s: End time in seconds (``>= start_s``).
        char_start: For a transcript source: where the segment's words start in its ``text``.
        char_end: For a transcript source: where they end.
        text: The words spoken (informational; the transcript's ``text`` is what the model reads).
    """

    start_s: float = Field(ge=0.0)
    end_s: float = Field(ge=0.0)
    char_start: int | None = Field(None, ge=0)
    char_end: int | None = Field(None, ge=0)
    text: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TimedSegment:
        if self.end_s < self.start_s:
            raise ValueError(f"segment ends ({self.end_s} s) before it starts ({self.start_s} s)")
        if (self.char_start is None) != (self.char_end is None):
            raise ValueError("give both char_start and char_end, or neither")
        if self.char_start is not None and self.char_end is not None and self.char_end <= self.char_start:
            raise ValueError(f"segment char span [{self.char_start}, {self.char_end}) is empty")
        return self


class TextSource(_SourceModel):
    """A text passage the model may draw on.

    Attributes:
        id: Caller's identifier; returned unchanged in every citation.
        text: The passage.
        title: Shown to the model before the text and carried into citations.
        url: Carried into citations (never shown to the model).
        metadata: Carried into citations unchanged.
        label: Shown to the model in place of ``id`` (small models copy long ids into answers).
    """

    id: str
    text: str
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    """Shown to the model instead of ``id`` (e.g. ``doc1`` for a UUID node id); results keep ``id``."""
    modality: Literal["text", "audio", "video"] = "text"
    """``audio`` / ``video`` for a transcript of a recording (its ``segments`` carry the seconds)."""
    segments: list[TimedSegment] | None = None
    """Timed stretches of ``text`` (a transcript's ASR segments): each becomes a unit whose
    citations carry its seconds. Every segment needs ``char_start`` / ``char_end`` in ``text``."""

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source id must be a non-empty string")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source text is empty")
        return value

    @model_validator(mode="after")
    def _segments_inside_text(self) -> TextSource:
        if self.segments is None:
            return self
        if not self.segments:
            raise ValueError("segments is empty: omit it, or give at least one segment")
        prev_end = 0
        for k, seg in enumerate(self.segments):
            if seg.char_start is None or seg.char_end is None:
                raise ValueError(f"segment #{k} has no char_start / char_end in the source text")
            if seg.char_end > len(self.text):
                raise ValueError(
                    f"segment #{k} ends at char {seg.char_end}, past the text ({len(self.text)})"
                )
            if seg.char_start < prev_end:
                raise ValueError(f"segment #{k} overlaps the previous one (char {seg.char_start})")
            prev_end = seg.char_end
        return self


class MediaSource(_SourceModel):
    """An image, audio clip or video the model may draw on.

    A native omni / vision-language model reads it directly (its units are image regions or
    time bins); a text model can read an audio source only through speech recognition
    (``TracerConfig.audio_fallback="asr"``), which turns it into a timed transcript.

    Attributes:
        id: Caller's identifier; returned unchanged in every citation.
        modality: ``image``, ``audio`` or ``video``.
        path: A local file.
        data: The file's bytes (instead of ``path``, e.g. from a base64 content block).
        mime_type: Format hint for ``data`` (``audio/wav``, ``image/png``...).
        segments: Caller-supplied time segments (e.g. ASR or diarisation segments) used as the
            units of an audio / video source instead of fixed one-second bins.
    """

    id: str
    modality: MediaModality
    path: str | None = None
    data: bytes | None = Field(None, repr=False)
    mime_type: str | None = None
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    segments: list[TimedSegment] | None = None

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source id must be a non-empty string")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> MediaSource:
        if (self.path is None) == (self.data is None):
            raise ValueError(f"a {self.modality} source needs exactly one of 'path' or 'data'")
        if self.data is not None and len(self.data) == 0:
            raise ValueError(f"the {self.modality} data is empty (0 bytes)")
        if self.segments is not None and self.modality == "image":
            raise ValueError("an image source has no time segments")
        return self


Source = TextSource | MediaSource


class SourceUnit(BaseModel):
    """The unit a citation points at, with its location in the source and in the prompt."""

    model_config = ConfigDict(frozen=True)

    unit_id: str
    source_id: str
    index: int
    text: str
    char_start: int
    char_end: int
    token_start: int = -1
    token_end: int = -1
    modality: Modality = "text"
    seconds: tuple[float, float] | None = None
    """Where the unit sits in its recording (audio / video units and transcript segments)."""
    box: tuple[int, int, int, int] | None = None
    """Pixel box ``(x0, y0, x1, y1)`` of an image (or video-frame) region unit."""
    token_positions: tuple[int, ...] | None = None
    """Explicit prompt positions when the unit's tokens are not contiguous (an image region
    owns one stretch per merged-token row); ``token_start`` / ``token_end`` then bound them."""


def validate_sources(sources: Sequence[Source | dict[str, Any]]) -> list[Source]:
    """Coerce and check a list of sources; raise naming the bad one.

    A dict with ``modality`` ``image`` / ``audio`` / ``video`` and a ``path`` or ``data`` (and
    no ``text``) becomes a :class:`MediaSource`; a dict with ``text`` a :class:`TextSource`
    (an ``audio`` / ``video`` one is a transcript).
    """
    if isinstance(sources, (str, bytes, dict, TextSource, MediaSource)) or not isinstance(sources, Iterable):
        raise InvalidInputError(
            f"sources={show(sources)}: must be a list of sources (TextSource, MediaSource or dicts), "
            f"got {type(sources).__name__}"
        )
    sources = list(sources)
    if len(sources) == 0:
        raise InvalidInputError("sources is empty: give at least one source to attribute to")
    out: list[Source] = []
    for i, src in enumerate(sources):
        if isinstance(src, (TextSource, MediaSource)):
            out.append(src)
            continue
        if not isinstance(src, dict):
            raise InvalidInputError(
                f"source #{i} must be a TextSource, MediaSource or dict, got {type(src).__name__}"
            )
        modality = src.get("modality", "text")
        if modality not in ("text", "image", "audio", "video"):
            raise InvalidInputError(
                f"source #{i} ({src.get('id')!r}) has unknown modality {modality!r}; "
                "expected text, image, audio or video"
            )
        if modality == "image" and "text" in src:
            raise InvalidInputError(
                f"source #{i} ({src.get('id')!r}) has modality 'image' and a 'text': an image source "
                "gives its file as 'path' or 'data' (text of an image is not supported)"
            )
        media = modality != "text" and "text" not in src
        model: type[BaseModel] = MediaSource if media else TextSource
        try:
            known = {str(k): v for k, v in src.items() if k in model.model_fields}
            out.append(model(**known))  # type: ignore[arg-type]
        except InvalidInputError as exc:  # re-raise naming the source, the field and the value
            cause = exc.__cause__
            problems = (
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'source'}"
                    + (f"={show(e['input'])}" if e["loc"] and "input" in e else "")
                    + f": {e['msg'].removeprefix('Value error, ')}"
                    for e in cause.errors()
                )
                if isinstance(cause, ValidationError)
                else str(exc)
            )
            raise InvalidInputError(f"source #{i} ({show(src.get('id'))}) is invalid: {problems}") from exc
    seen: dict[str, int] = {}
    for i, src in enumerate(out):
        if src.id in seen:
            raise InvalidInputError(f"duplicate source id {src.id!r} (sources #{seen[src.id]} and #{i})")
        seen[src.id] = i
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def split_into_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of a source (a light rule: sources are clean prose)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text.rstrip())))
    return [(a, b) for a, b in spans if b > a]


class PromptLayout(BaseModel):
    """The tokenised prompt and where every unit sits in it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    input_ids: list[int]
    units: list[SourceUnit]
    reference_positions: list[int]
    text: str
    model_inputs: dict[str, Any] = Field(default_factory=dict)
    """Extra inputs for the model's forward / generate (pixel values, audio features, grids)."""
    header_positions: list[int] = Field(default_factory=list)
    """The prompt's last positions, after the user's message (the chat template's assistant
    header): like the response, they sit after the question, away from the sources. Their
    rows are the default position-bias reference (``MappingConfig.prompt_reference``)."""
    question_positions: list[int] = Field(default_factory=list)
    """The question's own positions (``MappingConfig.question_competes``); empty when the
    builder does not mark them."""


def _format_user_message(
    sources: Sequence[TextSource], question: str, split: bool
) -> tuple[str, list[tuple[SourceUnit, int, int]], tuple[int, int]]:
    """Return the user message, each unit with its character span in that message, and the
    question's character span."""
    parts: list[str] = ["Sources:\n"]
    offset = len(parts[0])
    spans: list[tuple[SourceUnit, int, int]] = []
    for src in sources:
        header = f"[{src.label or src.id}]" + (f" {src.title}" if src.title else "") + "\n"
        text = src.text.strip()
        lead = len(src.text) - len(src.text.lstrip())
        block_start = offset
        text_start = offset + len(header)
        timed = _timed_pieces(src, lead, len(text))
        if timed:
            pieces = [(a, b) for a, b, _ in timed]
        else:
            pieces = split_into_sentences(text) if split else [(0, len(text))]
        for k, (a, b) in enumerate(pieces):
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
            # The header (id and title) belongs to the first unit of its source.
            start = block_start if k == 0 else text_start + a
            spans.append((unit, start, text_start + b))
        block = header + text + "\n\n"
        parts.append(block)
        offset += len(block)
    label = "Question: "
    parts.append(label + question.strip())
    q_start = offset + len(label)
    return "".join(parts), spans, (q_start, q_start + len(question.strip()))


def _timed_pieces(src: TextSource, lead: int, length: int) -> list[tuple[int, int, tuple[float, float]]]:
    """A transcript's segments as spans of its stripped text, each with its seconds."""
    out: list[tuple[int, int, tuple[float, float]]] = []
    for seg in src.segments or []:
        assert seg.char_start is not None and seg.char_end is not None  # checked by the model
        a, b = max(0, seg.char_start - lead), min(length, seg.char_end - lead)
        if b > a:
            out.append((a, b, (seg.start_s, seg.end_s)))
    return out


#: Serialises our tokenizer calls: a fast tokenizer's ``split_special_tokens`` is a flag set on
#: the shared Rust tokenizer before each call, so two threads could otherwise swap it.
_ENCODE_LOCK = threading.Lock()


def control_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special (control) token strings, longest first (``<|im_start|>``, ``</s>``...)."""
    found = {str(t) for t in (getattr(tokenizer, "all_special_tokens", None) or [])}
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(getattr(tok, "content", tok)))
    return sorted((t for t in found if t), key=len, reverse=True)


def encode_with_plain_spans(
    tokenizer: Any, text: str, plain: Sequence[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``, where the characters in the ``plain`` spans
    (user-supplied: sources, question, system prompt) are encoded as plain text.

    A control token such as ``<|im_start|>`` written inside a source or a question must not
    become the real special token: it would let a document open a new chat turn (prompt
    injection). The chat template's own control tokens (outside ``plain``) stay special. When
    no plain span holds a control token the whole text is encoded in one call, exactly as
    before; otherwise each stretch is encoded on its own, the plain ones with
    ``split_special_tokens=True``.

    Raises:
        InvalidInputError: if the tokenizer still produced a special token inside a plain span
            (it does not support ``split_special_tokens``).
    """
    specials = control_tokens(tokenizer)
    risky = any(tok in text[a:b] for a, b in plain for tok in specials)
    with _ENCODE_LOCK:
        if not risky:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(enc["input_ids"]), [(int(o[0]), int(o[1])) for o in enc["offset_mapping"]]
        pieces: list[tuple[int, int, bool]] = []
        cursor = 0
        for a, b in sorted(plain):
            if a > cursor:
                pieces.append((cursor, a, False))
            pieces.append((max(a, cursor), b, True))
            cursor = max(cursor, b)
        if cursor < len(text):
            pieces.append((cursor, len(text), False))
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        special_ids = set(getattr(tokenizer, "all_special_ids", None) or [])
        for a, b, is_plain in pieces:
            if b <= a:
                continue
            enc = tokenizer(
                text[a:b],
                add_special_tokens=False,
                return_offsets_mapping=True,
                split_special_tokens=is_plain,
            )
            piece_ids = list(enc["input_ids"])
            if is_plain and special_ids & set(piece_ids):
                raise InvalidInputError(
                    "a source, question or system prompt holds a control token "
                    f"({', '.join(t for t in specials if t in text[a:b])}) that this tokenizer cannot "
                    "encode as plain text (no split_special_tokens support): remove it from the input"
                )
            ids.extend(piece_ids)
            offsets.extend((int(s) + a, int(e) + a) for s, e in enc["offset_mapping"])
        return ids, offsets


def encode_plain(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``text`` (a response) as plain text: control tokens in it are characters, never special tokens."""
    return encode_with_plain_spans(tokenizer, text, [(0, len(text))])


def build_prompt(
    tokenizer: Any,
    sources: Sequence[Source],
    question: str,
    system_prompt: str | None,
    split_sources: bool = False,
) -> PromptLayout:
    """Lay the sources and question out in the model's chat template and locate every unit.

    Raises:
        InvalidInputError: if the question is empty or a unit cannot be located.
    """
    if question is None or not question.strip():
        raise InvalidInputError("question is empty")
    for src in sources:
        if not isinstance(src, TextSource):
            raise InvalidInputError(
                f"source {src.id!r} is a {src.modality} file: a text prompt cannot hold it "
                "(use a model that takes it, or audio_fallback='asr' for audio)"
            )
    texts = [src for src in sources if isinstance(src, TextSource)]
    user, unit_spans, (q_a, q_b) = _format_user_message(texts, question, split_sources)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user}
    ]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # plain LMs: a simple textual layout
        text = (system_prompt + "\n\n" if system_prompt else "") + user + "\nAnswer: "
    # The user message is the last message: its last occurrence is the message itself (a
    # system prompt that quotes it must not capture the source spans).
    user_at = text.rfind(user)
    if user_at < 0:
        raise InvalidInputError("the chat template altered the user message; cannot locate the sources")
    plain = [(user_at, user_at + len(user))]
    system_at = text.find(system_prompt) if system_prompt else -1
    if system_prompt and system_at >= 0 and system_at + len(system_prompt) <= user_at:
        plain.insert(0, (system_at, system_at + len(system_prompt)))
    ids, offsets = encode_with_plain_spans(tokenizer, text, plain)
    units: list[SourceUnit] = []
    prev_end = 0
    for unit, a, b in unit_spans:
        a_abs, b_abs = user_at + a, user_at + b
        toks = [i for i, (s, e) in enumerate(offsets) if e > s and s < b_abs and e > a_abs]
        if not toks:
            raise InvalidInputError(f"source {unit.source_id!r} produced no prompt tokens")
        # Unit spans are disjoint: a token straddling two units belongs to the first.
        start = max(toks[0], prev_end)
        units.append(unit.model_copy(update={"token_start": start, "token_end": toks[-1] + 1}))
        prev_end = toks[-1] + 1
    reference = list(range(prev_end, len(ids)))
    user_end = user_at + len(user)
    header = [i for i in reference if offsets[i][0] >= user_end]
    q_a, q_b = user_at + q_a, user_at + q_b
    asked = [i for i in reference if offsets[i][0] < min(offsets[i][1], q_b) and offsets[i][1] > q_a]
    return PromptLayout(
        input_ids=ids,
        units=units,
        reference_positions=reference,
        text=text,
        header_positions=header,
        question_positions=asked,
    )
