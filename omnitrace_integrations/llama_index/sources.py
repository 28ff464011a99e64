"""LlamaIndex inputs -> OmniTrace sources.

Nodes (from a retriever or query engine) and chat content blocks (``CitableBlock``,
``DocumentBlock``) become :class:`omnitrace_core.TextSource` objects whose ids are the
caller's (node id, block source, document title), so every citation points back to them.

``ImageBlock`` / ``AudioBlock`` / ``VideoBlock`` content, and nodes without text that hold
an image, audio or video (``ImageNode``, ``Node.image_resource`` / ``audio_resource`` /
``video_resource``), become :class:`omnitrace_core.sources.MediaSource` objects: the block's or
node's bytes (LlamaIndex stores them base64-encoded), its ``path``, or a ``file://`` /
``data:`` URL. Nothing is ever downloaded: a chat block with only an ``http(s)`` URL is
refused (:class:`UnsupportedContentError`), a retrieved node with one is skipped with a note.
Whether the model can read the medium is the tracer's decision (a text model raises
``UnsupportedModalityError``, or transcribes audio with ``TracerConfig(audio_fallback="asr")``).
Duplicate ids are merged when identical and refused otherwise.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Sequence
from io import IOBase
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    CitableBlock,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    VideoBlock,
)
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, Node, NodeWithScore
from pydantic import BaseModel, ConfigDict, Field

from omnitrace_core import InvalidInputError, TextSource
from omnitrace_core.errors import MediaAccessError, MediaError
from omnitrace_core.media.data_url import decode_base64, decode_data_url
from omnitrace_core.media.paths import NO_LOCAL_FILES, LocalMediaPolicy
from omnitrace_core.sources import MediaModality, MediaSource, Source
from omnitrace_core.tools import tool_source_id
from omnitrace_integrations.llama_index.tools import message_tool_calls, tool_result_name

logger = logging.getLogger("omnitrace.llama_index")

_SCALARS = (str, int, float, bool, type(None))
SourceLike: TypeAlias = TextSource | MediaSource | dict[str, Any] | NodeWithScore | BaseNode
MediaBlock: TypeAlias = ImageBlock | AudioBlock | VideoBlock

#: How to hand over a file instead of a remote URL (in errors and notes).
MEDIA_HINT = (
    "pass the bytes themselves (image= / audio= / video=), or a local file (path=... or "
    "url='file:///path/to/file') the LLM allows through media_root"
)


class UnsupportedContentError(InvalidInputError):
    """A content block cannot be used as given (e.g. only a remote URL); the message says why and how."""


class PreparedSources(BaseModel):
    """Sources ready for the tracer, with what was left out and why.

    Attributes:
        sources: Text and media sources in input order, ids unique.
        nodes: Source id -> the node it came from (node inputs only).
        notes: One human-readable line per skipped or merged input.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sources: list[Source] = Field(default_factory=list)
    nodes: dict[str, NodeWithScore] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def add(self, source: Source, node: NodeWithScore | None = None) -> None:
        """Append ``source``; merge an identical duplicate, refuse a conflicting one.

        Raises:
            InvalidInputError: if a different text (or file) arrives under an id already present.
        """
        for existing in self.sources:
            if existing.id != source.id:
                continue
            if _content(existing) == _content(source):
                what = "text" if isinstance(source, TextSource) else f"{source.modality} content"
                self.note(f"duplicate source id {source.id!r}: identical {what}, kept once")
                return
            raise InvalidInputError(
                f"duplicate source id {source.id!r} with different content: ids must identify one "
                "text or file"
            )
        self.sources.append(source)
        if node is not None:
            self.nodes[source.id] = node

    def note(self, message: str) -> None:
        """Record (and log) why an input was skipped or merged."""
        logger.warning("%s", message)
        self.notes.append(message)


def _content(source: Source) -> tuple[Any, ...]:
    if isinstance(source, TextSource):
        return ("text", source.text)
    return (source.modality, source.path, source.data)


def json_safe(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata with every value JSON-safe (scalars and lists of scalars kept, others ``str``)."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, _SCALARS):
            out[str(key)] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
            out[str(key)] = list(value)
        else:
            out[str(key)] = str(value)
    return out


def _non_text_kind(node: BaseNode) -> str:
    if isinstance(node, ImageNode):
        return "image"
    if isinstance(node, Node):
        for kind in ("image", "audio", "video"):
            if getattr(node, f"{kind}_resource", None) is not None:
                return kind
    return "non-text"


def _existing_file(path: str | Path, what: str) -> str:
    """A trusted (application-given) local file's absolute path; ``MediaError`` if it is missing."""
    resolved = Path(path).expanduser()
    try:
        is_file, exists = resolved.is_file(), resolved.exists()
    except (OSError, ValueError):
        is_file = exists = False
    if not is_file:
        state = "is not a file" if exists else "not found"
        raise MediaError(f"{what}: file {str(path)[:200]!r} {state}")
    return str(resolved.resolve())


def _resolve_url(
    url: str, what: str, policy: LocalMediaPolicy | None = None
) -> tuple[bytes | None, str | None, str | None]:
    """``(data, path, mime)`` for a ``data:`` or ``file://`` URL (a file checked by ``policy``
    when given: a message's block; ``None``: a trusted node).

    Raises:
        UnsupportedContentError: for any other URL (nothing is downloaded).
        MediaError: for a ``file://`` URL to a missing file.
    """
    if url.startswith("data:"):
        data, mime = decode_data_url(url, what)
        return data, None, mime
    parsed = urlparse(url)
    if parsed.scheme.lower() == "file" and parsed.netloc in ("", "localhost"):
        local = url2pathname(unquote(parsed.path))
        return None, policy.resolve(local, what) if policy else _existing_file(local, what), None
    raise UnsupportedContentError(
        f"{what} has only a remote url ({url!r}): nothing is downloaded; {MEDIA_HINT}"
    )


def _read_bytes(value: bytes | str | IOBase, what: str) -> bytes:
    if isinstance(value, IOBase):  # kept as given by LlamaIndex: raw bytes
        value.seek(0)
        raw = value.read()
        return raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    return decode_base64(value, what)


def _mime(modality: str, mime: str | None, path: str | None, what: str) -> str | None:
    """The MIME type (guessed from the path if not given); refuse one of another modality."""
    if not mime and path is not None:
        mime = mimetypes.guess_type(path)[0]
    major = mime.split("/", 1)[0] if mime else ""
    if major in ("image", "audio", "video") and major != modality:
        raise InvalidInputError(f"{what}: MIME type {mime!r} is not {modality}")
    return mime or None


def _audio_mime(fmt: str | None) -> str | None:
    """``AudioBlock.format`` (an extension such as ``wav``, ``mp3``) as a MIME type."""
    if not fmt:
        return None
    if "/" in fmt:
        return fmt
    return mimetypes.guess_type(f"x.{fmt}")[0] or f"audio/{fmt}"


def media_block_source(
    block: MediaBlock,
    source_id: str,
    title: str | None = None,
    policy: LocalMediaPolicy = NO_LOCAL_FILES,
) -> MediaSource:
    """An ``ImageBlock`` / ``AudioBlock`` / ``VideoBlock`` as a media source (no download, ever).

    Content is read from the block's bytes (``image`` / ``audio`` / ``video``, stored
    base64-encoded by LlamaIndex, or a file object), else its ``path``, else a ``data:`` or
    ``file://`` ``url``. A local file is read only if ``policy`` allows it (default: never;
    :mod:`omnitrace_core.media.paths`).

    Raises:
        UnsupportedContentError: if the block has only an http(s) (or other remote) URL.
        MediaAccessError: a local file the policy does not allow (not saying whether it exists).
        MediaError: if its (allowed) file does not exist.
        InvalidInputError: for invalid base64, a malformed data: URL, or no content at all.
    """
    modality: MediaModality = block.block_type
    what = f"{block.block_type} block {source_id!r}"
    if isinstance(block, ImageBlock):
        raw, mime = block.image, block.image_mimetype
    elif isinstance(block, AudioBlock):
        raw, mime = block.audio, _audio_mime(block.format)
    else:
        raw, mime = block.video, block.video_mimetype
    data: bytes | None = None
    path: str | None = None
    url = str(block.url) if block.url is not None else None
    if raw is not None:
        data = _read_bytes(raw, what)
    elif block.path is not None:
        path = policy.resolve(str(block.path), what)
    elif url:
        data, path, url_mime = _resolve_url(url, what, policy)
        mime = mime or url_mime
    else:
        raise InvalidInputError(f"{what} has no content: {MEDIA_HINT}")
    if data is not None and not data:
        raise InvalidInputError(f"{what}: the data is empty (0 bytes)")
    meta: dict[str, Any] = {"block_type": block.block_type}
    if getattr(block, "detail", None):
        meta["detail"] = block.detail  # type: ignore[union-attr]
    if isinstance(block, VideoBlock) and block.fps:
        meta["fps"] = block.fps
    return MediaSource(
        id=source_id,
        modality=modality,
        path=path,
        data=data,
        mime_type=_mime(modality, mime, path, what),
        title=title,
        url=url if url and not url.startswith("data:") else None,
        metadata=meta,
    )


def _node_media(node: BaseNode) -> tuple[MediaModality, Any, str | None, str | None, str | None] | None:
    """``(modality, base64 data, path, url, mime)`` of a node's image / audio / video, if any."""
    if isinstance(node, ImageNode):
        if node.image or node.image_path or node.image_url:
            return "image", node.image, node.image_path, node.image_url, node.image_mimetype
        return None
    if isinstance(node, Node):
        kinds: tuple[MediaModality, ...] = ("image", "audio", "video")
        for kind in kinds:
            res = getattr(node, f"{kind}_resource", None)
            if res is not None and (res.data or res.path or res.url):
                path = str(res.path) if res.path is not None else None
                url = str(res.url) if res.url is not None else None
                return kind, res.data, path, url, res.mimetype
    return None


def _node_media_source(nws: NodeWithScore, metadata: dict[str, Any], title: str | None) -> Source | str:
    """A text-less node's image / audio / video as a media source, or a note why it is skipped.

    Remote-only (http) media and missing files are skipped with a note, never downloaded;
    invalid base64 data raises ``InvalidInputError`` naming the node.
    """
    node = nws.node
    found = _node_media(node)
    kind = _non_text_kind(node)
    if found is None:
        return f"node {node.node_id!r} has no text ({kind} content) and no file or data, and was skipped"
    modality, raw, path, url, mime = found
    what = f"node {node.node_id!r} ({modality})"
    data: bytes | None = None
    try:
        if raw:
            data = _read_bytes(raw, what)
        elif path:
            path = _existing_file(path, what)
        elif url:
            data, path, url_mime = _resolve_url(url, what)
            mime = mime or url_mime
    except (UnsupportedContentError, MediaError) as exc:
        return f"node {node.node_id!r} has no text ({modality} content) and was skipped: {exc}"
    remote = url if url and not url.startswith("data:") else None
    return MediaSource(
        id=node.node_id,
        modality=modality,
        path=path if data is None else None,
        data=data,
        mime_type=_mime(modality, mime, path, what),
        title=title,
        url=remote,
        metadata=metadata,
    )


def node_source(item: NodeWithScore | BaseNode) -> Source | str:
    """One node as a source, or a note saying why it cannot be one.

    A node with text becomes a text source: its own text (``MetadataMode.NONE``), so
    character offsets of citations are relative to ``node.text``. A node without text that
    holds an image / audio / video (``ImageNode``, ``Node.*_resource``) becomes a media
    source; remote-only media (nothing is downloaded) and missing files give a note. The title
    is the node's ``title`` or ``file_name`` metadata; the node id, ref doc id, retrieval score
    and metadata ride along in the source's ``metadata``.
    """
    nws = item if isinstance(item, NodeWithScore) else NodeWithScore(node=item)
    node = nws.node
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    meta = node.metadata or {}
    title = meta.get("title") or meta.get("file_name")
    metadata = {
        "node_id": node.node_id,
        "ref_doc_id": node.ref_doc_id,
        "retrieval_score": nws.score,
        "node_metadata": json_safe(meta),
    }
    if not text or not text.strip():
        return _node_media_source(nws, metadata, str(title) if title else None)
    url = meta.get("url") or meta.get("file_path")
    return TextSource(
        id=node.node_id,
        text=text,
        title=str(title) if title else None,
        url=str(url) if url else None,
        metadata=metadata,
    )


def prepare_node_sources(nodes: Sequence[NodeWithScore | BaseNode]) -> PreparedSources:
    """Retrieved nodes -> sources: text-less nodes skipped, repeated node ids kept once.

    A retriever may return one node twice (fusion, several retrievers); the first occurrence
    (normally the better-scored) is kept.
    """
    prepared = PreparedSources()
    for item in nodes:
        nws = item if isinstance(item, NodeWithScore) else NodeWithScore(node=item)
        if nws.node.node_id in prepared.nodes:
            prepared.note(f"node {nws.node.node_id!r} was retrieved more than once; kept once")
            continue
        src = node_source(nws)
        if isinstance(src, str):
            prepared.note(src)
            continue
        prepared.add(src, nws)
    return prepared


def coerce_sources(items: Sequence[SourceLike]) -> PreparedSources:
    """Sources given directly (``sources=`` keyword): TextSources, MediaSources, dicts or nodes.

    A dict with ``modality`` ``image`` / ``audio`` / ``video`` and no ``text`` becomes a
    ``MediaSource``; any other dict a ``TextSource``.
    """
    prepared = PreparedSources()
    for i, item in enumerate(items):
        if isinstance(item, (NodeWithScore, BaseNode)):
            nws = item if isinstance(item, NodeWithScore) else NodeWithScore(node=item)
            src = node_source(nws)
            if isinstance(src, str):
                prepared.note(src)
            else:
                prepared.add(src, nws)
        elif isinstance(item, (TextSource, MediaSource)):
            prepared.add(item)
        elif isinstance(item, dict):
            media = item.get("modality") in ("image", "audio", "video") and "text" not in item
            try:
                prepared.add(MediaSource(**item) if media else TextSource(**item))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"source #{i} ({item.get('id')!r}) is invalid: {exc}") from exc
        else:
            raise InvalidInputError(
                f"source #{i} must be a TextSource, MediaSource, dict, NodeWithScore or node, "
                f"got {type(item).__name__}"
            )
    return prepared


class ParsedMessages(BaseModel):
    """Chat messages split into what the tracer needs.

    Attributes:
        prepared: Sources found in ``CitableBlock`` / ``DocumentBlock`` / media block content.
        question: Text of the last user message, preceded by earlier turns if any.
        system_prompt: Text of the system messages, if any.
        turns: (role, text) of every non-system message, for plain generation.
    """

    prepared: PreparedSources
    question: str
    system_prompt: str | None = None
    turns: list[tuple[str, str]] = Field(default_factory=list)


def _document_text(block: DocumentBlock, policy: LocalMediaPolicy = NO_LOCAL_FILES) -> str | None:
    """A text document's content: its data, or a local file the policy allows (never a download).

    Raises:
        MediaAccessError: the block names a local file the policy does not allow.
        UnsupportedContentError: the block has only a remote URL.
    """
    mimetype = block.document_mimetype or ""
    if mimetype and not mimetype.startswith("text/"):
        return None
    what = f"document block {block.title or 'input_document'!r}"
    try:
        if block.data is not None:
            data = block.resolve_document().read()
        elif block.path is not None:
            data = Path(policy.resolve(str(block.path), what)).read_bytes()
        elif block.url is not None:
            _, path, _ = _resolve_url(str(block.url), what, policy)
            data = Path(path).read_bytes() if path else b""
        else:
            return None
    except (MediaAccessError, UnsupportedContentError):
        raise
    except Exception:
        return None
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def _citable_sources(
    block: CitableBlock, prepared: PreparedSources, policy: LocalMediaPolicy = NO_LOCAL_FILES
) -> list[Source]:
    """A citable block's text (and text documents) as one source with id ``block.source``;
    its images as media sources: id ``block.source`` when an image is all it holds, else
    ``<source>:image-<k>``."""
    parts: list[str] = []
    media: list[ImageBlock] = []
    for inner in block.content:
        if isinstance(inner, TextBlock):
            parts.append(inner.text)
        elif isinstance(inner, DocumentBlock) and (doc := _document_text(inner, policy)) is not None:
            parts.append(doc)
        elif isinstance(inner, ImageBlock):
            media.append(inner)
        else:
            prepared.note(
                f"citable block {block.source!r}: {inner.block_type} content skipped (only text "
                "documents are attributed)"
            )
    text = "\n".join(p for p in parts if p.strip())
    title = block.title or None
    out: list[Source] = [TextSource(id=block.source, text=text, title=title)] if text else []
    for k, inner in enumerate(media, 1):
        sid = block.source if not text and len(media) == 1 else f"{block.source}:{inner.block_type}-{k}"
        out.append(media_block_source(inner, sid, title, policy))
    return out


def parse_messages(
    messages: Sequence[ChatMessage], policy: LocalMediaPolicy = NO_LOCAL_FILES
) -> ParsedMessages:
    """Find sources, the question and the system prompt in LlamaIndex chat messages.

    ``CitableBlock`` -> a source with id ``block.source`` and title ``block.title`` (an image
    in it -> a media source, see :func:`_citable_sources`); ``DocumentBlock`` with text content
    -> a source with id its title (numbered if the title is the default or repeated);
    ``TextBlock`` -> the message's text; ``ImageBlock`` / ``AudioBlock`` / ``VideoBlock`` -> a
    media source with id ``<type>-<n>`` (``image-1``, ``audio-2``..., numbered over the media
    blocks of all messages); a ``tool`` message (a tool's result) -> a source with id
    ``<tool name>:<tool_call_id>`` (the name from the message or from the assistant's earlier
    call with that id), never a conversation turn.

    Raises:
        UnsupportedContentError: for a media block with only a remote URL (nothing is downloaded).
        MediaError: for a media block whose file does not exist.
        InvalidInputError: for invalid base64 data, or conflicting sources under one id.
    """
    prepared = PreparedSources()
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    doc_count = 0
    media_count = 0
    calls_by_id: dict[str, str] = {}
    for message in messages:
        if message.role == MessageRole.ASSISTANT:
            calls_by_id.update(
                {str(c["id"]): c["name"] for c in message_tool_calls(message) if c["id"] is not None}
            )
        if message.role == MessageRole.TOOL:
            _add_tool_result(message, calls_by_id, prepared)
            continue
        texts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, CitableBlock):
                found = _citable_sources(block, prepared, policy)
                if not found:
                    prepared.note(f"citable block {block.source!r} has no text and was skipped")
                for src in found:
                    prepared.add(src)
            elif isinstance(block, DocumentBlock):
                doc_count += 1
                text = _document_text(block, policy)
                label = block.title or "input_document"
                if text is None:
                    prepared.note(
                        f"document {label!r} ({block.document_mimetype or 'unknown type'}) was skipped: "
                        "only text documents are attributed"
                    )
                    continue
                taken = {s.id for s in prepared.sources}
                doc_id = label if label != "input_document" and label not in taken else f"{label}-{doc_count}"
                prepared.add(TextSource(id=doc_id, text=text, title=block.title))
            elif isinstance(block, (ImageBlock, AudioBlock, VideoBlock)):
                media_count += 1
                taken = {s.id for s in prepared.sources}
                sid = f"{block.block_type}-{media_count}"
                while sid in taken:
                    media_count += 1
                    sid = f"{block.block_type}-{media_count}"
                prepared.add(media_block_source(block, sid, policy=policy))
        text = "\n".join(t for t in texts if t.strip())
        if message.role == MessageRole.SYSTEM:
            if text:
                system.append(text)
        elif text:
            turns.append((str(message.role.value), text))
    question = _question(turns)
    return ParsedMessages(
        prepared=prepared,
        question=question,
        system_prompt="\n".join(system) or None,
        turns=turns,
    )


def _add_tool_result(message: ChatMessage, calls_by_id: dict[str, str], prepared: PreparedSources) -> None:
    """A ``tool`` message's text as one source with id ``<tool name>:<call id>`` (title: the
    tool's name; metadata: ``tool`` and ``tool_call_id``), so an answer cites the tool result
    each sentence came from. A result without text is skipped with a note."""
    call_id = message.additional_kwargs.get("tool_call_id")
    name = tool_result_name(message, calls_by_id)
    sid = tool_source_id(name, call_id)
    text = "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock) and b.text.strip())
    if not text:
        prepared.note(f"tool result {sid!r} has no text and was skipped")
        return
    meta: dict[str, Any] = {"tool": name, "tool_call_id": None if call_id is None else str(call_id)}
    prepared.add(TextSource(id=sid, text=text, title=name, metadata=meta))


def _question(turns: list[tuple[str, str]]) -> str:
    """The last user turn; earlier turns are prepended as conversation context."""
    last_user = max((i for i, (role, _) in enumerate(turns) if role == MessageRole.USER.value), default=-1)
    if last_user < 0:
        return turns[-1][1] if turns else ""
    history = turns[:last_user]
    if not history:
        return turns[last_user][1]
    lines = "\n".join(f"{role}: {text}" for role, text in history)
    return f"Conversation so far:\n{lines}\n\n{turns[last_user][1]}"
