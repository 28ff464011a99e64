"""OpenAI messages + ``documents`` -> what the tracer takes (sources, question, config, kwargs).

No web framework here: :class:`ApiError` carries the HTTP status and the error code, and the app
turns it into a JSON error. The question is read from the conversation exactly as
``ChatOmniTrace`` reads LangChain messages (the last user turn, earlier turns appended as
context), so a LangChain or LlamaIndex client gets the same citations remotely as in-process.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from omnitrace_core import MediaSource, TextSource, TracerConfig
from omnitrace_core.sources import Source
from omnitrace_integrations.serving.schemas import Document, Message, OmniTraceOptions
from omnitrace_integrations.serving.settings import ServeSettings

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)
_MODALITY_BY_MIME = {"image": "image", "audio": "audio", "video": "video"}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, machine-readable ``code`` (the limit or
    the problem), and a message naming it."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass
class Conversation:
    """What the tracer needs from one request."""

    sources: list[Source] = field(default_factory=list)
    question: str = ""
    system: str = ""
    turns: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def decode_data_url(value: str, where: str) -> tuple[bytes, str | None]:
    """``data:<mime>;base64,<payload>`` -> (bytes, mime). Remote URLs are refused by name."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        raise ApiError(
            400,
            "remote_url_refused",
            f"{where}: remote URLs are refused (the server fetches nothing); "
            "send the file inline as a data: URL",
            param=where,
        )
    m = _DATA_URL.match(value)
    if m is None:
        raise ApiError(
            400, "invalid_data_url", f"{where}: expected a data: URL (data:<mime>;base64,...)", where
        )
    if not m.group("b64"):
        raise ApiError(400, "invalid_data_url", f"{where}: only base64 data: URLs are accepted", where)
    try:
        return base64.b64decode(m.group("data"), validate=True), m.group("mime")
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_data_url", f"{where}: invalid base64 ({exc})", where) from exc


def _media(doc_id: str, data_url: str, modality: str | None, where: str, **extra: Any) -> MediaSource:
    data, mime = decode_data_url(data_url, where)
    kind = modality or _MODALITY_BY_MIME.get((mime or "").split("/")[0])
    if kind not in ("image", "audio", "video"):
        raise ApiError(
            400,
            "unsupported_media",
            f"{where}: cannot tell the modality of MIME type {mime!r}; set modality to image, audio or video",
            where,
        )
    return MediaSource(id=doc_id, modality=kind, data=data, mime_type=mime, **extra)


def document_source(doc: Document, position: int) -> Source:
    where = f"documents[{position}]"
    if doc.text is not None and doc.data is not None:
        raise ApiError(400, "invalid_document", f"{where} ({doc.id!r}): give text or data, not both", where)
    if doc.data is not None:
        return _media(
            doc.id,
            doc.data,
            doc.modality if doc.modality != "text" else None,
            where,
            title=doc.title,
            metadata=doc.metadata,
        )
    if doc.text is None:
        raise ApiError(400, "invalid_document", f"{where} ({doc.id!r}): no text and no data", where)
    if doc.modality not in (None, "text"):
        raise ApiError(
            400, "invalid_document", f"{where} ({doc.id!r}): {doc.modality} needs data (a data: URL)", where
        )
    return TextSource(
        id=doc.id, text=doc.text, title=doc.title, url=doc.url, metadata=doc.metadata, label=doc.label
    )


def _content_text(message: Message, index: int, sources: list[Source]) -> str:
    """A message's text; inline media parts of user messages become sources."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for k, part in enumerate(content):
        where = f"messages[{index}].content[{k}]"
        kind = part.get("type")
        if kind == "text":
            value = part.get("text")
            if not isinstance(value, str):
                raise ApiError(400, "invalid_message", f"{where}: a text part needs a string 'text'", where)
            texts.append(value)
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, "invalid_message", f"{where}: image_url needs a url", where)
            sources.append(_media(f"image-{len(sources) + 1}", url, "image", where))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            data, fmt = audio.get("data"), audio.get("format", "wav")
            if not isinstance(data, str):
                raise ApiError(400, "invalid_message", f"{where}: input_audio needs base64 'data'", where)
            sources.append(
                _media(f"audio-{len(sources) + 1}", f"data:audio/{fmt};base64,{data}", "audio", where)
            )
        else:
            raise ApiError(
                400,
                "unsupported_content",
                f"{where}: content part type {kind!r} is not supported "
                "(text, image_url and input_audio with inline data are)",
                where,
            )
    return "\n".join(texts)


def read_conversation(
    messages: list[Message], documents: list[Document], settings: ServeSettings
) -> Conversation:
    """Sources, question, system text and chat turns of a request.

    Raises:
        ApiError: a bad message or document (400, named), too many sources (400 ``max_sources``),
            duplicate source ids, or no user text to answer.
    """
    conv = Conversation()
    systems: list[str] = []
    history: list[tuple[str, str]] = []
    calls: set[str] = set()  # tool call ids the assistant made so far (checked once there are any)
    for i, message in enumerate(messages):
        for call in message.tool_calls or []:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                calls.add(call["id"])
        text = _content_text(message, i, conv.sources)
        if message.role == "tool":
            if not message.tool_call_id:
                raise ApiError(
                    400,
                    "invalid_message",
                    f"messages[{i}]: a tool message needs tool_call_id (its output is cited by that id)",
                    f"messages[{i}].tool_call_id",
                )
            if calls and message.tool_call_id not in calls:
                raise ApiError(
                    400,
                    "unknown_tool_call_id",
                    f"messages[{i}]: tool_call_id {message.tool_call_id!r} answers no earlier assistant "
                    f"tool call (known: {', '.join(sorted(calls))})",
                    f"messages[{i}].tool_call_id",
                )
            conv.sources.append(TextSource(id=message.tool_call_id, text=text, title=message.name))
        elif message.role in ("system", "developer"):
            if text.strip():
                systems.append(text.strip())
        elif text.strip():
            history.append((message.role, text.strip()))
    conv.sources.extend(document_source(d, k) for k, d in enumerate(documents))
    if len(conv.sources) > settings.max_sources:
        raise ApiError(
            400,
            "max_sources",
            f"{len(conv.sources)} sources (documents, tool and media parts) "
            f"> max_sources {settings.max_sources}",
            "documents",
        )
    seen: set[str] = set()
    for src in conv.sources:
        if src.id in seen:
            raise ApiError(400, "duplicate_source_id", f"source id {src.id!r} is given twice", "documents")
        seen.add(src.id)
    conv.system = "\n".join(systems)
    conv.turns = ([{"role": "system", "content": conv.system}] if conv.system else []) + [
        {"role": role, "content": text} for role, text in history
    ]
    last_user = max((k for k, (role, _) in enumerate(history) if role == "user"), default=None)
    if last_user is None:
        raise ApiError(
            400, "no_question", "no question: the messages contain no user text to answer", "messages"
        )
    earlier = history[:last_user]
    question = history[last_user][1]
    if earlier:
        lines = "\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in earlier)
        question = f"{question}\n\n(Conversation so far:\n{lines})"
    conv.question = question
    return conv


def tracer_config(base: TracerConfig, conv: Conversation, options: OmniTraceOptions) -> TracerConfig:
    """The server's config with the request's system prompt / split_sources."""
    update: dict[str, Any] = {}
    system_prompt = options.system_prompt if options.system_prompt is not None else base.system_prompt
    if conv.system:
        system_prompt = f"{system_prompt}\n{conv.system}"
    if system_prompt != base.system_prompt:
        update["system_prompt"] = system_prompt
    if options.split_sources is not None:
        update["split_sources"] = options.split_sources
    return base.model_copy(update=update) if update else base


def count_prompt_tokens(tokenizer: Any, conv: Conversation, config: TracerConfig) -> int:
    """Tokens of the text the prompt is built from (sources, question, system prompt)."""
    parts = [config.system_prompt, conv.question]
    parts += [s.text for s in conv.sources if isinstance(s, TextSource)]
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in parts if p)


def generation_kwargs(
    settings: ServeSettings,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    no_repeat_ngram_size: int | None,
    tokenizer: Any,
    default_max_tokens: int | None = None,
) -> dict[str, Any]:
    """OpenAI sampling fields -> ``model.generate`` kwargs (greedy unless temperature > 0).

    Without ``max_tokens`` the tracer's own default applies (``generation.max_new_tokens``),
    capped by the server's ``max_tokens`` limit.
    """
    default = min(default_max_tokens or settings.max_tokens, settings.max_tokens)
    wanted = max_tokens if max_tokens is not None else default
    if wanted > settings.max_tokens:
        raise ApiError(
            400,
            "max_tokens",
            f"max_tokens {wanted} > the server's limit of {settings.max_tokens}",
            "max_tokens",
        )
    gen: dict[str, Any] = {"max_new_tokens": int(wanted)}
    if temperature:
        gen["do_sample"] = True
        gen["temperature"] = float(temperature)
        if top_p is not None:
            gen["top_p"] = float(top_p)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "invalid_stop", "stop: at most 4 non-empty strings", "stop")
    if stops:
        gen["stop_strings"] = stops
        gen["tokenizer"] = tokenizer
    if no_repeat_ngram_size is not None:
        gen["no_repeat_ngram_size"] = no_repeat_ngram_size
    return gen
