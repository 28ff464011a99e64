"""From LangChain input (messages, content blocks, ``Document``s) to the tracer's request.

Sources come from where LangChain users already put them:

- standard ``text-plain`` and ``file`` content blocks in any input message (``id`` = the
  block's ``id``; ``title``, ``url``, ``context`` are carried along);
- ``image`` / ``audio`` / ``video`` content blocks (v1 standard ``base64`` + ``mime_type`` or
  ``url``; v0 ``source_type`` blocks; OpenAI ``image_url`` with a ``data:`` URL and
  ``input_audio``) as :class:`~omnitrace_core.sources.MediaSource` objects: base64 and
  ``data:`` URLs become bytes; ``file://`` URLs, local paths and a ``path`` key name a local
  file, which is read only if the chat model allows it (``media_root`` / ``allowed_media_paths``,
  :mod:`omnitrace_core.media.paths`): refused by default.
  Nothing is ever downloaded: an ``http(s)`` URL or a ``file_id`` is refused, saying how to
  pass the file instead. Whether the model can read the medium is the tracer's decision (a
  text model raises ``UnsupportedModalityError``, or transcribes audio with
  ``TracerConfig(audio_fallback="asr")``);
- ``ToolMessage``s: ``Document``s in the message's ``artifact`` (e.g. a retriever tool with
  ``response_format="content_and_artifact"``; each tagged with ``tool`` / ``tool_call_id``
  metadata, a document returned twice is one source), else the tool's text output as one
  source with id ``<tool name>:<tool_call_id>`` (so a citation says which tool call it was);
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
import mimetypes
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from omnitrace_core import InvalidInputError, TextSource
from omnitrace_core.media.data_url import decode_base64, decode_data_url
from omnitrace_core.media.paths import NO_LOCAL_FILES, LocalMediaPolicy
from omnitrace_core.sources import MediaModality, MediaSource, Source
from omnitrace_core.tools import tool_source_id as core_tool_source_id

logger = logging.getLogger("omnitrace.langchain")

#: Block types that carry no source and no question text (ignored in input messages).
_IGNORED_TYPES = frozenset(
    {"reasoning", "tool_call", "tool_call_chunk", "server_tool_call", "server_tool_result", "tool_use"}
)
#: Media content block types and the modality of their source (``image_url`` and
#: ``input_audio`` are OpenAI Chat Completions blocks).
_MEDIA_TYPES: dict[str, MediaModality] = {
    "image": "image",
    "audio": "audio",
    "video": "video",
    "image_url": "image",
    "input_audio": "audio",
}
#: Ids LangChain generates itself (``create_image_block``, OpenAI block conversion): random, so a
#: media block carrying one is cited as ``<type>-<n>`` instead (the id is kept in metadata).
_AUTO_ID = re.compile(r"^lc_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: How to hand over a file instead of a remote reference (in error messages).
_MEDIA_HINT = (
    "pass the file's bytes as base64 ('base64': ..., 'mime_type': ...), or a local file "
    "(url='file:///path/to/file' or 'path': '/path/to/file') the chat model allows through media_root"
)
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
        sources: Text and media sources in order (ids unique).
        question: The last human turn, with earlier turns as context.
        system: Concatenated system messages ("" if none).
        turns: The conversation as chat-template turns (used when there are no sources).
    """

    sources: list[Source] = field(default_factory=list)
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


def coerce_sources(sources: Any, start: int = 0) -> list[Source]:
    """Coerce the ``sources=`` kwarg: ``Document``s, ``TextSource``s, ``MediaSource``s, dicts or strings.

    A dict with ``modality`` ``image`` / ``audio`` / ``video`` and no ``text`` becomes a
    ``MediaSource`` (``path`` or ``data``); any other dict a ``TextSource``.
    """
    if sources is None:
        return []
    if isinstance(sources, (str, Document, TextSource, MediaSource, dict)):
        sources = [sources]
    out: list[Source] = []
    for k, item in enumerate(sources):
        position = start + k
        if isinstance(item, Document):
            out.append(document_to_source(item, position))
        elif isinstance(item, (TextSource, MediaSource)):
            out.append(item)
        elif isinstance(item, dict):
            media = item.get("modality") in _MEDIA_TYPES and "text" not in item
            try:
                if media:
                    out.append(MediaSource(**{"id": str(position), **item}))
                else:
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
                f"source #{position} must be a Document, TextSource, MediaSource, dict or str, "
                f"got {type(item).__name__}"
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


def _media_block_id(block: dict[str, Any], modality: str, counter: int) -> tuple[str, str | None]:
    """The id a media block is cited by, and the LangChain-generated id it replaced (if any)."""
    value = block.get("id")
    if block.get("source_type") == "id":  # a v0 ID block: its ``id`` is a provider file id
        value = None
    if isinstance(value, str) and _AUTO_ID.match(value):
        return f"{modality}-{counter}", value
    if value is None:
        return f"{modality}-{counter}", None
    return _block_id(block, str(block["type"]), counter), None


def _url_content(
    url: str, kind: str, sid: str, what: str, policy: LocalMediaPolicy
) -> tuple[bytes | None, str | None, str | None]:
    """``(data, path, mime)`` for a block's ``url``: data: URLs, file:// URLs and local paths."""
    if url.startswith("data:"):
        data, mime = decode_data_url(url, what)
        return data, None, mime
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedContentError(
                f"{what}: file URL {url!r} names another host ({parsed.netloc!r}); only local "
                f"files can be read ({_MEDIA_HINT})"
            )
        return None, policy.resolve(url2pathname(unquote(parsed.path)), what), None
    if scheme and len(scheme) > 1:  # http(s), s3, gs, ftp...; one letter is a Windows drive
        raise UnsupportedContentError(
            f"content block {sid!r} of type {kind!r} is not supported with a remote url ({url!r}): "
            f"ChatOmniTrace downloads nothing; {_MEDIA_HINT}"
        )
    return None, policy.resolve(url, what), None


def _media_fields(block: dict[str, Any], kind: str, what: str) -> dict[str, Any]:
    """The block's content reference, whatever its format: ``base64`` / ``url`` / ``path`` /
    ``file_id`` / ``mime_type`` (missing keys are None) plus format-specific metadata."""
    if kind == "image_url":
        inner = block.get("image_url")
        url = inner.get("url") if isinstance(inner, dict) else inner
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError(f"{what} has no image_url.url")
        detail = inner.get("detail") if isinstance(inner, dict) else None
        return {"url": url, "extra": {"detail": detail} if detail else {}}
    if kind == "input_audio":
        inner = block.get("input_audio")
        if not isinstance(inner, dict) or inner.get("data") is None:
            raise InvalidInputError(f"{what} has no input_audio.data (base64 audio)")
        fmt = inner.get("format")
        mime = f"audio/{fmt}" if isinstance(fmt, str) and fmt else None
        return {"base64": inner["data"], "mime_type": mime, "extra": {"format": fmt} if fmt else {}}
    fields: dict[str, Any] = {
        "base64": block.get("base64"),
        "url": block.get("url"),
        "path": block.get("path"),
        "file_id": block.get("file_id"),
        "mime_type": block.get("mime_type"),
        "extra": {},
    }
    source_type = block.get("source_type")  # LangChain v0 blocks
    if source_type == "base64":
        fields["base64"] = block.get("data")
    elif source_type == "id":
        fields["file_id"] = block.get("id")
    return fields


def _media_block_to_source(
    block: dict[str, Any], counter: int, policy: LocalMediaPolicy = NO_LOCAL_FILES
) -> MediaSource:
    """One image / audio / video content block as a ``MediaSource`` (no download, ever).

    Raises:
        UnsupportedContentError: for a remote url or a ``file_id`` (nothing is downloaded).
        MediaError: for a local file that does not exist.
        InvalidInputError: for invalid base64, a malformed data: URL, no content, or a MIME
            type of another modality.
    """
    kind = str(block["type"])
    modality = _MEDIA_TYPES[kind]
    sid, generated_id = _media_block_id(block, modality, counter)
    what = f"{kind} content block {sid!r}"
    fields = _media_fields(block, kind, what)
    url = fields.get("url")
    if url is not None and not isinstance(url, str):
        raise InvalidInputError(f"{what}: url must be a string, got {type(url).__name__}")
    mime = fields.get("mime_type")
    data: bytes | None = None
    path: str | None = None
    if fields.get("base64") is not None:
        b64 = fields["base64"]
        if isinstance(b64, str) and b64.startswith("data:"):
            data, url_mime = decode_data_url(b64, what)
            mime = mime or url_mime
        else:
            data = decode_base64(b64, what)
    elif fields.get("path") is not None:
        if not isinstance(fields["path"], str) or not fields["path"].strip():
            raise InvalidInputError(f"{what}: path must be a non-empty string")
        path = policy.resolve(fields["path"], what)
    elif url:
        data, path, url_mime = _url_content(url, kind, sid, what, policy)
        mime = mime or url_mime
    elif fields.get("file_id"):
        raise UnsupportedContentError(
            f"{what} refers to an uploaded file (file_id {fields['file_id']!r}): ChatOmniTrace "
            f"downloads nothing; {_MEDIA_HINT}"
        )
    else:
        raise InvalidInputError(f"{what} carries no data: {_MEDIA_HINT}")
    if data is not None and not data:
        raise InvalidInputError(f"{what}: the data is empty (0 bytes)")
    if mime is None and path is not None:
        mime = mimetypes.guess_type(path)[0]
    if mime is not None and not isinstance(mime, str):
        raise InvalidInputError(f"{what}: mime_type must be a string, got {type(mime).__name__}")
    major = mime.split("/", 1)[0] if mime else ""
    if major in ("image", "audio", "video") and major != modality:
        raise InvalidInputError(f"{what}: MIME type {mime!r} is not {modality}")
    extras = block.get("extras") if isinstance(block.get("extras"), dict) else {}
    meta: dict[str, Any] = {"block_type": kind, **fields["extra"]}
    if mime:
        meta["mime_type"] = mime
    if generated_id:
        meta["block_id"] = generated_id
    meta.update(extras or {})
    remote = url if url and not url.startswith("data:") else None
    title = block.get("title") or (extras or {}).get("title")
    try:
        return MediaSource(
            id=sid,
            modality=modality,
            path=path,
            data=data,
            mime_type=mime,
            title=str(title) if title else None,
            url=remote,
            metadata=_json_safe(meta),
        )
    except ValueError as exc:
        raise InvalidInputError(f"{what} is invalid: {exc}") from exc


def _split_content(
    message: BaseMessage, counter: list[int], policy: LocalMediaPolicy = NO_LOCAL_FILES
) -> tuple[str, list[Source]]:
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
    sources: list[Source] = []
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
            counter[0] += 1
            sources.append(_media_block_to_source(item, counter[0], policy))
        else:
            raise UnsupportedContentError(
                f"content block type {kind!r} is not supported by ChatOmniTrace (supported: text, "
                "text-plain, file with a text MIME type, image, audio, video)"
            )
    return "".join(texts), sources


def tool_source_id(message: ToolMessage) -> str:
    """The id a tool's text output is cited by: ``<tool name>:<call id>`` (the call id alone
    when the message has no tool name)."""
    return core_tool_source_id(message.name or None, message.tool_call_id)


def _tool_sources(
    message: ToolMessage, counter: list[int], policy: LocalMediaPolicy = NO_LOCAL_FILES
) -> tuple[str, list[Source]]:
    """A tool result as sources: its artifact ``Document``s (``content_and_artifact`` tools,
    e.g. a retriever: each keeps its id, tagged with the tool and call), else its text output
    as one source named after the tool and the call."""
    tool_meta = {"tool": message.name, "tool_call_id": message.tool_call_id}
    artifact = message.artifact
    if isinstance(artifact, Document):
        artifact = [artifact]
    if isinstance(artifact, list) and artifact and all(isinstance(d, Document) for d in artifact):
        docs: list[Source] = []
        for doc in artifact:
            counter[0] += 1
            src = document_to_source(doc, counter[0])
            meta = {**src.metadata, **{k: v for k, v in tool_meta.items() if v}}
            docs.append(src.model_copy(update={"metadata": meta, "title": src.title or message.name}))
        return "", docs
    text, block_sources = _split_content(message, counter, policy)
    if block_sources:
        return "", block_sources
    if not text.strip():
        return "", []
    return "", [
        TextSource(
            id=tool_source_id(message),
            text=text,
            title=message.name or None,
            metadata={k: v for k, v in tool_meta.items() if v},
        )
    ]


_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def read_messages(
    messages: Sequence[BaseMessage],
    extra_sources: Any = None,
    media_policy: LocalMediaPolicy = NO_LOCAL_FILES,
    require_question: bool = True,
) -> ChatRequest:
    """Read the sources, question and system text from LangChain messages.

    Args:
        messages: The (normalised) input messages.
        extra_sources: The ``sources=`` kwarg (``Document``s, ``TextSource``s, dicts or strings).
        media_policy: Which local files media blocks may name (default: none; see
            :mod:`omnitrace_core.media.paths`). The ``sources=`` kwarg is the application's own
            and is not checked.
        require_question: Raise when there is no human text (else ``question`` stays "").

    Returns:
        The request; ``sources`` is empty when nothing cites.

    Raises:
        UnsupportedContentError: for unknown content block types, non-text files, or media given
            only as a remote url / ``file_id`` (nothing is downloaded).
        MediaError: for a media block naming a local file that does not exist.
        InvalidInputError: for empty / duplicate ids, non-string content, invalid base64, or no
            question.
    """
    counter = [0]
    request = ChatRequest()
    systems: list[str] = []
    history: list[tuple[str, str]] = []
    for message in messages:
        if isinstance(message, ToolMessage):
            _, found = _tool_sources(message, counter, media_policy)
            # The same document returned by two calls (a retriever asked twice) is one source.
            seen = {(s.id, getattr(s, "text", None)) for s in request.sources}
            request.sources.extend(s for s in found if (s.id, getattr(s, "text", None)) not in seen)
            continue
        text, found = _split_content(message, counter, media_policy)
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
        if not require_question:  # e.g. a tool turn: the caller checks what it needs
            return request
        raise InvalidInputError("no question: the messages contain no human text to answer")
    earlier = history[:last_user]
    question = history[last_user][1]
    if earlier:
        lines = "\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in earlier)
        question = f"{question}\n\n(Conversation so far:\n{lines})"
    request.question = question
    return request


def _check_ids(sources: list[Source]) -> None:
    seen: dict[str, int] = {}
    for i, src in enumerate(sources):
        if src.id in seen:
            raise InvalidInputError(
                f"duplicate source id {src.id!r} (sources #{seen[src.id]} and #{i}); "
                "source ids must be unique"
            )
        seen[src.id] = i
