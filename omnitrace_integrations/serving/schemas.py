"""The wire format: OpenAI chat-completions requests and responses plus OmniTrace's extra fields.

A plain OpenAI client sends :class:`ChatCompletionRequest` without ``documents`` and reads
``choices[0].message.content``; everything OmniTrace adds (``documents`` in, ``annotations`` and
``omnitrace`` out) is an extra field such a client ignores. ``docs/serving.md`` documents every field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omnitrace_core import Citation, SentenceAttribution, TracedAnswer

_REQ = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, n=1, ...)


class Document(BaseModel):
    """One source in ``documents``: text, or media as a ``data:`` URL.

    ``url`` is where a text document came from, echoed in its citations (never fetched).
    Media must come inline: ``data`` = ``data:<mime>;base64,...``; a remote URL is refused.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str | None = None
    data: str | None = None
    modality: Literal["text", "image", "audio", "video"] | None = None
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    """Shown to the model in place of ``id`` (citations keep ``id``)."""


class Message(BaseModel):
    """An OpenAI chat message. ``content``: a string or a list of parts (``text``, ``image_url``
    / ``input_audio`` with inline data). A ``tool`` message's content is a source cited as its
    ``tool_call_id``."""

    model_config = _REQ

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class OmniTraceOptions(BaseModel):
    """Per-request OmniTrace options (``"omnitrace": {...}`` in the request)."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = None
    """Replaces the server's system prompt (system messages are still appended to it)."""
    split_sources: bool | None = None
    """Cite sentences inside documents instead of whole documents."""
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    format_instruction: str | None = None
    """Replaces the instruction a ``response_format`` adds to the system prompt (``""``: none).
    The Python clients send ``""``: they put their own instruction in the prompt, as in-process."""
    include_answer: bool = False
    """Add the full core result (``TracedAnswer`` JSON, per-token records included) as
    ``omnitrace.answer``: what the Python clients use to rebuild identical results."""


class StreamOptions(BaseModel):
    model_config = _REQ
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = _REQ

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list[dict[str, Any]] | None = None
    """OpenAI function tools: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    """``{"type": "text" | "json_object"}`` or
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``."""
    documents: list[Document] = Field(default_factory=list)
    omnitrace: OmniTraceOptions = Field(default_factory=OmniTraceOptions)


class AttributeRequest(BaseModel):
    """``POST /v1/attribute``: attribute ``response`` (e.g. another system's answer) to the sources."""

    model_config = _REQ

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    response: str = Field(min_length=1)
    documents: list[Document] = Field(default_factory=list)
    omnitrace: OmniTraceOptions = Field(default_factory=OmniTraceOptions)


# -- responses ---------------------------------------------------------------------------------


def source_citation(sentence: SentenceAttribution, citation: Citation) -> dict[str, Any]:
    """One message annotation: OpenAI's ``{"type": ..., "<type>": {start_index, end_index, url,
    title}}`` shape, type ``source_citation``, with OmniTrace's fields beside OpenAI's."""
    body: dict[str, Any] = {
        "start_index": sentence.char_start,
        "end_index": sentence.char_end,
        "url": citation.url,
        "title": citation.title,
        "source_id": citation.source_id,
        "unit_id": citation.unit_id,
        "score": citation.score,
        "cited_text": citation.cited_text,
        "source_start": citation.char_start,
        "source_end": citation.char_end,
        "sentence_index": sentence.index,
        "modality": citation.modality,
    }
    if citation.seconds:
        body["seconds"] = [list(span) for span in citation.seconds]
    if citation.boxes:
        body["boxes"] = [list(box) for box in citation.boxes]
    return {"type": "source_citation", "source_citation": body}


def sentence_annotations(sentence: SentenceAttribution) -> list[dict[str, Any]]:
    return [source_citation(sentence, c) for c in sentence.citations]


def answer_annotations(answer: TracedAnswer) -> list[dict[str, Any]]:
    return [a for s in answer.sentences for a in sentence_annotations(s)]


def sentence_record(sentence: SentenceAttribution, include_attribution: bool = False) -> dict[str, Any]:
    """A sentence as sent in ``omnitrace.sentences`` and in each streamed citation event
    (with ``include_answer``, also the core ``SentenceAttribution`` as ``attribution``)."""
    record = {
        "index": sentence.index,
        "text": sentence.text,
        "start_index": sentence.char_start,
        "end_index": sentence.char_end,
        "grounded": sentence.grounded,
        "source_mass": sentence.source_mass,
        "annotations": sentence_annotations(sentence),
    }
    if include_attribution:
        record["attribution"] = sentence.model_dump(mode="json")
    return record


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def omnitrace_block(answer: TracedAnswer | None, include_answer: bool, notes: list[str]) -> dict[str, Any]:
    """The ``omnitrace`` object of a response (or of the last streamed chunk)."""
    if answer is None:
        return {"sentences": [], "signal": None, "notes": notes, "answer": None}
    block: dict[str, Any] = {
        "sentences": [sentence_record(s) for s in answer.sentences],
        "signal": answer.signal,
        "notes": [*notes, *answer.errors],
    }
    if include_answer:
        block["answer"] = answer.model_dump(mode="json")
    return block


def error_body(
    message: str, code: str, type_: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
