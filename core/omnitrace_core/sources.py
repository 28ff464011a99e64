"""Source units and the prompt that lays them out.

A *source* is what the caller hands in (a passage with an id); a *unit* is what a citation
points at: the whole source, or one of its sentences when ``split_sources`` is on. Each unit
knows its character span in its source and its token span in the prompt, so attention mass on
prompt positions can be summed per unit. Everything else in the prompt (chat template,
instruction, question) is scaffolding and never a source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from omnitrace_core.errors import InvalidInputError

Modality = Literal["text", "image", "audio", "video"]


class TextSource(BaseModel):
    """A text passage the model may draw on.

    Attributes:
        id: Caller's identifier; returned unchanged in every citation.
        text: The passage.
        title: Shown to the model before the text and carried into citations.
        url: Carried into citations (never shown to the model).
        metadata: Carried into citations unchanged.
        label: Shown to the model in place of ``id`` (small models copy long ids into answers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    text: str
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    """Shown to the model instead of ``id`` (e.g. ``doc1`` for a UUID node id); results keep ``id``."""
    modality: Literal["text"] = "text"

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


def validate_sources(sources: Sequence[TextSource | dict[str, Any]]) -> list[TextSource]:
    """Coerce and check a list of sources; raise naming the bad one."""
    if sources is None or len(sources) == 0:
        raise InvalidInputError("sources is empty: give at least one source to attribute to")
    out: list[TextSource] = []
    for i, src in enumerate(sources):
        if isinstance(src, TextSource):
            out.append(src)
            continue
        if not isinstance(src, dict):
            raise InvalidInputError(f"source #{i} must be a TextSource or dict, got {type(src).__name__}")
        try:
            known = {k: v for k, v in src.items() if k in TextSource.model_fields and k != "modality"}
            if src.get("modality", "text") != "text":
                raise InvalidInputError(
                    f"source #{i} ({src.get('id')!r}) has modality {src.get('modality')!r}; "
                    "this tracer handles text sources only"
                )
            out.append(TextSource(**known))
        except InvalidInputError:
            raise
        except ValidationError as exc:  # re-raise naming the source and the field
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise InvalidInputError(f"source #{i} ({src.get('id')!r}) is invalid: {problems}") from exc
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

    model_config = ConfigDict(frozen=True)

    input_ids: list[int]
    units: list[SourceUnit]
    reference_positions: list[int]
    text: str


def _format_user_message(
    sources: Sequence[TextSource], question: str, split: bool
) -> tuple[str, list[tuple[SourceUnit, int, int]]]:
    """Return the user message and each unit with its character span in that message."""
    parts: list[str] = ["Sources:\n"]
    offset = len(parts[0])
    spans: list[tuple[SourceUnit, int, int]] = []
    for src in sources:
        header = f"[{src.label or src.id}]" + (f" {src.title}" if src.title else "") + "\n"
        text = src.text.strip()
        lead = len(src.text) - len(src.text.lstrip())
        block_start = offset
        text_start = offset + len(header)
        pieces = split_into_sentences(text) if split else [(0, len(text))]
        for k, (a, b) in enumerate(pieces):
            unit = SourceUnit(
                unit_id=f"{src.id}#{k}" if split else src.id,
                source_id=src.id,
                index=k,
                text=text[a:b],
                char_start=lead + a,
                char_end=lead + b,
            )
            # The header (id and title) belongs to the first unit of its source.
            start = block_start if k == 0 else text_start + a
            spans.append((unit, start, text_start + b))
        block = header + text + "\n\n"
        parts.append(block)
        offset += len(block)
    parts.append(f"Question: {question.strip()}")
    return "".join(parts), spans


def build_prompt(
    tokenizer: Any,
    sources: Sequence[TextSource],
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
    user, unit_spans = _format_user_message(sources, question, split_sources)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user}
    ]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # plain LMs: a simple textual layout
        text = (system_prompt + "\n\n" if system_prompt else "") + user + "\nAnswer: "
    user_at = text.find(user)
    if user_at < 0:
        raise InvalidInputError("the chat template altered the user message; cannot locate the sources")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [(int(o[0]), int(o[1])) for o in enc["offset_mapping"]]
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
    return PromptLayout(input_ids=ids, units=units, reference_positions=reference, text=text)
