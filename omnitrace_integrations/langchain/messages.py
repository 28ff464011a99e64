"""From LangChain input (messages, content blocks, ``Document``s) to the tracer's request.

Sources come from where LangChain users already put them:

- standard ``text-plain`` and ``file`` content blocks in any input message (``id`` = the
  block's ``id``; ``title``, ``url``, ``context`` are carried along);
- ``ToolMessage``s: ``Document``s in the message's ``artifact`` (e.g. a retriever tool with
  ``response_format="content_and_artifact"``), else the tool's text output with the
  ``tool_call_id`` as id;
- the ``sources=`` invocation kwarg: ``Document``s (id from ``Document.id``, else
  ``metadata["source"]``, else the position), ``TextSource``s or dicts.

The question is the last human turn; earlier turns are kept as conversation context in the
prompt scaffolding (never a source). Ids survive unchanged into every citation.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from omnitrace_core import InvalidInputError, TextSource

logger = logging.getLogger("omnitrace.langchain")

#: Block types that carry no source and no question text (ignored in input messages).
_IGNORED_TYPES = frozenset(
    {"reasoning", "tool_call", "tool_call_chunk", "server_tool_call", "server_tool_result"}
)
#: Media blocks the core cannot trace yet.
_MEDIA_TYPES = frozenset({"image", "audio", "video", "image_url", "input_audio"})
#: MIME types of ``file`` blocks read as text.
_TEXT_MIME_PREFIXES = ("text/",)
_TEXT_MIME_TYPES = frozenset(
    {"application/json", "application/xml", "application/x-yaml", "application/yaml"}
)


class UnsupportedContentError(InvalidInputError):
    """An input content block cannot be used (its type or MIME type is named in the message)."""


@dataclass
class ChatRequest:
    """What the tracer needs, read from LangChain input.

    Attributes:
        sources: Text sources in order (ids unique).
        question: The last human turn, with earlier turns as context.
        system: Concatenated system messages ("" if none).
        turns: The conversation as chat-template turns (used when there are no sources).
    """

    sources: list[TextSource] = field(default_factory=list)
    question: str = ""
    system: str = ""
    turns: list[dict[str, str]] = field(default_factory=list)


def document_source_id(doc: Document, position: int) -> str:
    """The id a ``Document`` is cited by: ``Document.id``, else ``metadata["source"]``, else its position."""
    if doc.id is not None and str(doc.id) != "":
        return str(doc.id)
    src = doc.metadata.get("source") if isinstance(doc.metadata, dict) else None
    if src is not None and str(src).strip():
        return str(src)
    return str(position)


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON-safe values (non-JSON values become their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def document_to_source(doc: Document, position: int) -> TextSource:
    """A ``Document`` as a text source (title / url read from common metadata keys)."""
    if not isinstance(doc.page_content, str) or not doc.page_content.strip():
        raise InvalidInputError(
            f"document #{position} ({document_source_id(doc, position)!r}) has no text"
        )
    meta = dict(doc.metadata or {})
    title = meta.get("title")
    url = meta.get("url")
    if url is None and isinstance(meta.get("source"), str) and "://" in meta["source"]:
        url = meta["source"]
    return TextSource(
        id=document_source_id(doc, position),
        text=doc.page_content,
        title=str(title) if title is not None else None,
        url=str(url) if url is not None else None,
        metadata=_json_safe(meta),
    )


def coerce_sources(sources: Any, start: int = 0) -> list[TextSource]:
    """Coerce the ``sources=`` kwarg: ``Document``s, ``TextSource``s, dicts or strings."""
    if sources is None:
        return []
    if isinstance(sources, (str, Document, TextSource, dict)):
        sources = [sources]
    out: list[TextSource] = []
    for k, item in enumerate(sources):
        position = start + k
        if isinstance(item, Document):
            out.append(document_to_source(item, position))
        elif isinstance(item, TextSource):
            out.append(item)
        elif isinstance(item, dict):
            try:
                out.append(TextSource(**{"id": str(position), **item}))
            except Exception as exc:
                raise InvalidInputError(
                    f"source #{position} ({item.get('id')!r}) is invalid: {exc}"
                ) from exc
        elif isinstance(item, str):
            if not item.strip():
                raise InvalidInputError(f"source #{position} is an empty string")
            out.append(TextSource(id=str(position), text=item))
        else:
            raise InvalidInputError(
                f"source #{position} must be a Document, TextSource, dict or str, got {type(item).__name__}"
            )
    return out


def _block_id(block: dict[str, Any], kind: str, counter: int) -> str:
    if "id" in block:
        value = block["id"]
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(
                f"a {kind!r} content block has an empty id {value!r}: give it a non-empty id"
            )
        return value
    return f"{kind}-{counter}"


def _decode_base64_text(data: str, what: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{what}: base64 data is not valid UTF-8 text ({exc})") from exc


def _block_to_source(block: dict[str, Any], counter: int) -> TextSource:
    kind = block["type"]
    sid = _block_id(block, "source" if kind == "text-plain" else kind, counter)
    extras = block.get("extras") if isinstance(block.get("extras"), dict) else {}
    meta: dict[str, Any] = {"block_type": kind}
    if block.get("context"):
        meta["context"] = block["context"]
    meta.update(extras or {})
    if kind == "file":
        mime = str(block.get("mime_type") or "")
        if not (mime.startswith(_TEXT_MIME_PREFIXES) or mime in _TEXT_MIME_TYPES):
            raise UnsupportedContentError(
                f"file content block {sid!r} has MIME type {mime or 'None'!r}; only text files "
                "(text/*, application/json, ...) can be sources (PDFs and binaries are not supported)"
            )
        meta["mime_type"] = mime
    text = block.get("text")
    if text is None and block.get("base64") is not None:
        text = _decode_base64_text(str(block["base64"]), f"{kind} content block {sid!r}")
    if text is None:
        where = "url" if block.get("url") else "file_id" if block.get("file_id") else None
        hint = (
            f" (it only has a {where}; nothing is fetched, pass the text or base64 data)"
            if where
            else ""
        )
        raise UnsupportedContentError(f"{kind} content block {sid!r} carries no text{hint}")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{kind} content block {sid!r} has empty text")
    return TextSource(
        id=sid,
        text=text,
        title=str(block["title"]) if block.get("title") else None,
        url=str(block["url"]) if block.get("url") else None,
        metadata=_json_safe(meta),
    )


def _split_content(message: BaseMessage, counter: list[int]) -> tuple[str, list[TextSource]]:
    """The message's plain text and the sources its content blocks carry."""
    content = message.content
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidInputError(
            f"{type(message).__name__} content must be a str or a list of content blocks, "
            f"got {type(content).__name__}"
        )
    texts: list[str] = []
    sources: list[TextSource] = []
    for item in content:
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, dict):
            raise InvalidInputError(
                f"{type(message).__name__} content block must be a str or dict, got {type(item).__name__}"
            )
        kind = item.get("type")
        if kind == "text":
            value = item.get("text", "")
            if not isinstance(value, str):
                raise InvalidInputError(
                    f"a text content block has non-string text ({type(value).__name__})"
                )
            texts.append(value)
        elif kind in ("text-plain", "file"):
            counter[0] += 1
            sources.append(_block_to_source(item, counter[0]))
        elif kind in _IGNORED_TYPES:
            continue
        elif kind in _MEDIA_TYPES:
            raise UnsupportedContentError(
                f"content block type {kind!r} is not supported: ChatOmniTrace traces text sources only "
                "(text-plain and text file blocks, tool output, or sources=[Document, ...])"
            )
        else:
            raise UnsupportedContentError(
                f"content block type {kind!r} is not supported by ChatOmniTrace "
                "(supported: text, text-plain, file with a text MIME type)"
            )
    return "".join(texts), sources


def _tool_sources(message: ToolMessage, counter: list[int]) -> tuple[str, list[TextSource]]:
    artifact = message.artifact
    if isinstance(artifact, Document):
        artifact = [artifact]
    if isinstance(artifact, list) and artifact and all(isinstance(d, Document) for d in artifact):
        docs = []
        for doc in artifact:
            counter[0] += 1
            docs.append(document_to_source(doc, counter[0]))
        return "", docs
    text, block_sources = _split_content(message, counter)
    if block_sources:
        return "", block_sources
    if not text.strip():
        return "", []
    return "", [
        TextSource(
            id=message.tool_call_id,
            text=text,
            title=message.name or None,
            metadata={"tool_call_id": message.tool_call_id, "tool": message.name},
        )
    ]


_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def read_messages(messages: Sequence[BaseMessage], extra_sources: Any = None) -> ChatRequest:
    """Read the sources, question and system text from LangChain messages.

    Args:
        messages: The (normalised) input messages.
        extra_sources: The ``sources=`` kwarg (``Document``s, ``TextSource``s, dicts or strings).

    Returns:
        The request; ``sources`` is empty when nothing cites.

    Raises:
        UnsupportedContentError: for media or unknown content block types, or non-text files.
        InvalidInputError: for empty / duplicate ids, non-string content, or no question.
    """
    counter = [0]
    request = ChatRequest()
    systems: list[str] = []
    history: list[tuple[str, str]] = []
    for message in messages:
        if isinstance(message, ToolMessage):
            _, found = _tool_sources(message, counter)
            request.sources.extend(found)
            continue
        text, found = _split_content(message, counter)
        request.sources.extend(found)
        if isinstance(message, SystemMessage):
            if text.strip():
                systems.append(text.strip())
        elif isinstance(message, (HumanMessage, AIMessage)) or message.type in _ROLES:
            role = _ROLES.get(message.type, "user")
            if text.strip():
                history.append((role, text.strip()))
        else:
            raise InvalidInputError(
                f"unsupported message type {type(message).__name__} ({message.type!r})"
            )
    request.sources.extend(coerce_sources(extra_sources, start=len(request.sources)))
    _check_ids(request.sources)
    request.system = "\n".join(systems)
    request.turns = ([{"role": "system", "content": request.system}] if request.system else []) + [
        {"role": role, "content": text} for role, text in history
    ]
    last_user = max((i for i, (role, _) in enumerate(history) if role == "user"), default=None)
    if last_user is None:
        raise InvalidInputError("no question: the messages contain no human text to answer")
    earlier = history[:last_user]
    question = history[last_user][1]
    if earlier:
        lines = "\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in earlier)
        question = f"{question}\n\n(Conversation so far:\n{lines})"
    request.question = question
    return request


def _check_ids(sources: list[TextSource]) -> None:
    seen: dict[str, int] = {}
    for i, src in enumerate(sources):
        if src.id in seen:
            raise InvalidInputError(
                f"duplicate source id {src.id!r} (sources #{seen[src.id]} and #{i}); "
                "source ids must be unique"
            )
        seen[src.id] = i
