"""OpenAI messages + ``documents`` -> what the tracer takes (sources, question, config, kwargs).

No web framework here: :class:`ApiError` carries the HTTP status and the error code, and the app
turns it into a JSON error. The question is read from the conversation exactly as
``ChatOmniTrace`` reads LangChain messages (the last user turn, earlier turns appended as
context), so a LangChain or LlamaIndex client gets the same citations remotely as in-process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from omnitrace_core import (
    Grammar,
    InvalidInputError,
    MediaSource,
    MissingDependencyError,
    TextSource,
    TracerConfig,
)
from omnitrace_core.decoding import check_grammar, response_format_constraint
from omnitrace_core.media.data_url import decode_data_url as parse_data_url
from omnitrace_core.sources import Source
from omnitrace_core.tools import ToolSpec, resolve_choice, tool_call_grammar, tool_source_id
from omnitrace_integrations.serving.schemas import ChatCompletionRequest, Document, Message, OmniTraceOptions
from omnitrace_integrations.serving.settings import ServeSettings

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
    """System and user / assistant text turns (a conversation without sources)."""
    chat_turns: list[dict[str, Any]] = field(default_factory=list)
    """:attr:`turns` plus the assistant's tool calls and the ``tool`` results, in order (what
    :func:`omnitrace_core.tools.render_prompt` shows the model in a tool turn)."""
    notes: list[str] = field(default_factory=list)


def decode_data_url(value: str, where: str) -> tuple[bytes, str | None]:
    """``data:<mime>;base64,<payload>`` -> (bytes, mime), read as the adapters read it
    (:func:`omnitrace_core.media.data_url.decode_data_url`). Remote URLs are refused by name
    (the server fetches nothing); base64 only, as in OpenAI's API; an empty payload is left to
    the source's own check (``invalid_input``)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        raise ApiError(
            400,
            "remote_url_refused",
            f"{where}: remote URLs are refused (the server fetches nothing); "
            "send the file inline as a data: URL",
            param=where,
        )
    try:
        return parse_data_url(value, where, base64_only=True, allow_empty=True)
    except InvalidInputError as exc:
        raise ApiError(400, "invalid_data_url", str(exc), where) from exc


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
    chat: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # id -> tool name of the calls the assistant made so far
    for i, message in enumerate(messages):
        made = _assistant_calls(message, i)
        calls.update({c["id"]: c["name"] for c in made if c["id"]})
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
            name = message.name or calls.get(message.tool_call_id)
            conv.sources.append(
                TextSource(
                    id=tool_source_id(name, message.tool_call_id),
                    text=text,
                    title=name,
                    metadata={"tool": name, "tool_call_id": message.tool_call_id} if name else {},
                )
            )
            chat.append(
                {
                    "role": "tool",
                    "content": text,
                    "tool_call_id": message.tool_call_id,
                    "name": name or "tool",
                }
            )
        elif message.role in ("system", "developer"):
            if text.strip():
                systems.append(text.strip())
        elif made:
            chat.append({"role": "assistant", "content": text.strip(), "tool_calls": made})
            if text.strip():
                history.append((message.role, text.strip()))
        elif text.strip():
            history.append((message.role, text.strip()))
            chat.append({"role": message.role, "content": text.strip()})
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
    conv.chat_turns = ([{"role": "system", "content": conv.system}] if conv.system else []) + chat
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


def _assistant_calls(message: Message, index: int) -> list[dict[str, Any]]:
    """An assistant message's OpenAI ``tool_calls`` as ``[{"id", "name", "arguments"}]`` (the
    arguments parsed from their JSON string), the turn shape ``render_prompt`` takes."""
    out: list[dict[str, Any]] = []
    for k, call in enumerate(message.tool_calls or []):
        where = f"messages[{index}].tool_calls[{k}]"
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, "invalid_message", f"{where}: needs function.name (a string)", where)
        args: Any = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ApiError(
                    400, "invalid_message", f"{where}: function.arguments is not JSON ({exc.msg})", where
                ) from exc
        if not isinstance(args, dict):
            raise ApiError(
                400, "invalid_message", f"{where}: function.arguments must be a JSON object", where
            )
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        out.append({"id": call_id, "name": fn["name"], "arguments": args})
    return out


@dataclass(frozen=True)
class Constraints:
    """How a request constrains the reply: its tools, tool choice and response format.

    Attributes:
        tools: The request's tools.
        choice: ``auto`` / ``required`` / ``none`` / a tool's name (``none`` without tools).
        parallel: Whether one reply may hold several calls.
        grammar: The ``response_format`` grammar (None: free text).
        instruction: What the model is told about ``response_format`` (added to the system prompt).
    """

    tools: list[ToolSpec]
    choice: str
    parallel: bool
    grammar: Grammar | None
    instruction: str

    def tool_turn(self, conv: Conversation) -> bool:
        """Whether the reply is decoded as a tool call: tools are given and a call is forced,
        or ``auto`` has no tool result or document to answer from yet (the in-process rule:
        once results are in, ``auto`` answers from them and cites them)."""
        return bool(self.tools) and self.choice != "none" and (self.choice != "auto" or not conv.sources)


def _first_line(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0]


def read_constraints(req: ChatCompletionRequest, conv: Conversation) -> Constraints:
    """The request's ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` / ``response_format``,
    checked before the request waits for the model: each tool's schema and the response
    format's schema are compiled (llguidance), so a malformed one is a 400 naming it.

    Raises:
        ApiError: 400 ``invalid_tools``, ``invalid_tool_choice``, ``invalid_response_format`` or
            ``unsupported_combination``; 501 ``structured_not_installed`` without llguidance.
    """
    try:
        return _constraints(req, conv)
    except MissingDependencyError as exc:
        raise ApiError(501, "structured_not_installed", str(exc)) from exc


def _constraints(req: ChatCompletionRequest, conv: Conversation) -> Constraints:
    specs: list[ToolSpec] = []
    for k, tool in enumerate(req.tools or []):
        where = f"tools[{k}]"
        if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ApiError(
                400,
                "invalid_tools",
                f"{where}: only function tools are supported: {{'type': 'function', 'function': "
                f"{{'name', 'description', 'parameters'}}}}, got type {tool.get('type')!r}",
                where,
            )
        try:
            spec = ToolSpec.from_openai(tool)
            check_grammar(tool_call_grammar([spec], "required", parallel=False))
        except InvalidInputError as exc:
            name = tool["function"].get("name")
            raise ApiError(400, "invalid_tools", f"{where} ({name!r}): {_first_line(exc)}", where) from exc
        if any(s.name == spec.name for s in specs):
            raise ApiError(400, "invalid_tools", f"{where}: two tools are named {spec.name!r}", where)
        specs.append(spec)
    if req.tool_choice is not None and req.tool_choice != "none" and not specs:
        raise ApiError(
            400,
            "invalid_tool_choice",
            f"tool_choice {req.tool_choice!r} needs tools: none were given",
            "tool_choice",
        )
    try:
        choice = resolve_choice(specs, req.tool_choice) if specs else "none"
    except InvalidInputError as exc:
        raise ApiError(400, "invalid_tool_choice", str(exc), "tool_choice") from exc
    grammar, instruction = None, ""
    if req.response_format is not None:
        try:
            constraint = response_format_constraint(req.response_format)
            if constraint is not None:
                grammar, instruction = constraint
                check_grammar(grammar)
        except InvalidInputError as exc:
            raise ApiError(400, "invalid_response_format", _first_line(exc), "response_format") from exc
    if req.omnitrace.format_instruction is not None:
        instruction = req.omnitrace.format_instruction
    out = Constraints(specs, choice, req.parallel_tool_calls, grammar, instruction)
    if grammar is not None and out.tool_turn(conv):
        raise ApiError(
            400,
            "unsupported_combination",
            f"response_format with tool_choice {choice!r}: this reply is a tool call, decoded under the "
            "tool-call grammar; send response_format on the turn that answers (or tool_choice 'none')",
            "response_format",
        )
    return out


def tracer_config(
    base: TracerConfig, conv: Conversation, options: OmniTraceOptions, instruction: str = ""
) -> TracerConfig:
    """The server's config with the request's system prompt / split_sources (and a
    ``response_format`` instruction appended to the system prompt, as in-process)."""
    update: dict[str, Any] = {}
    system_prompt = options.system_prompt if options.system_prompt is not None else base.system_prompt
    extra = "\n".join(x for x in (conv.system, instruction) if x)
    if extra:
        system_prompt = f"{system_prompt}\n{extra}"
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
