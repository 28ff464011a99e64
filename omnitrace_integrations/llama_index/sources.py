"""LlamaIndex inputs -> OmniTrace text sources.

Nodes (from a retriever or query engine) and chat content blocks (``CitableBlock``,
``DocumentBlock``) become :class:`omnitrace_core.TextSource` objects whose ids are the
caller's (node id, block source, document title), so every citation points back to them.
Nodes and blocks without text (image, audio, video) are skipped with a note until the core
attributes other modalities; duplicate ids are merged when identical and refused otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeAlias

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

logger = logging.getLogger("omnitrace.llama_index")

_SCALARS = (str, int, float, bool, type(None))
SourceLike: TypeAlias = TextSource | dict[str, Any] | NodeWithScore | BaseNode


class PreparedSources(BaseModel):
    """Sources ready for the tracer, with what was left out and why.

    Attributes:
        sources: Text sources in input order, ids unique.
        nodes: Source id -> the node it came from (node inputs only).
        notes: One human-readable line per skipped or merged input.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sources: list[TextSource] = Field(default_factory=list)
    nodes: dict[str, NodeWithScore] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def add(self, source: TextSource, node: NodeWithScore | None = None) -> None:
        """Append ``source``; merge an identical duplicate, refuse a conflicting one.

        Raises:
            InvalidInputError: if a different text arrives under an id already present.
        """
        for existing in self.sources:
            if existing.id != source.id:
                continue
            if existing.text == source.text:
                self.note(f"duplicate source id {source.id!r}: identical text, kept once")
                return
            raise InvalidInputError(
                f"duplicate source id {source.id!r} with different text: ids must identify one text"
            )
        self.sources.append(source)
        if node is not None:
            self.nodes[source.id] = node

    def note(self, message: str) -> None:
        """Record (and log) why an input was skipped or merged."""
        logger.warning("%s", message)
        self.notes.append(message)


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


def node_source(item: NodeWithScore | BaseNode) -> TextSource | str:
    """One node as a text source, or a note saying why it cannot be one.

    The source text is the node's own text (``MetadataMode.NONE``), so character offsets of
    citations are relative to ``node.text``. The title is the node's ``title`` or
    ``file_name`` metadata; the node id, ref doc id, retrieval score and metadata ride along
    in ``TextSource.metadata``.
    """
    nws = item if isinstance(item, NodeWithScore) else NodeWithScore(node=item)
    node = nws.node
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    if not text or not text.strip():
        kind = _non_text_kind(node)
        return (
            f"node {node.node_id!r} has no text ({kind} content) and was skipped: only text "
            "nodes are attributed until multimodal support lands"
        )
    meta = node.metadata or {}
    title = meta.get("title") or meta.get("file_name")
    url = meta.get("url") or meta.get("file_path")
    return TextSource(
        id=node.node_id,
        text=text,
        title=str(title) if title else None,
        url=str(url) if url else None,
        metadata={
            "node_id": node.node_id,
            "ref_doc_id": node.ref_doc_id,
            "retrieval_score": nws.score,
            "node_metadata": json_safe(meta),
        },
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
    """Sources given directly (``sources=`` keyword): TextSources, dicts or nodes."""
    prepared = PreparedSources()
    for i, item in enumerate(items):
        if isinstance(item, (NodeWithScore, BaseNode)):
            nws = item if isinstance(item, NodeWithScore) else NodeWithScore(node=item)
            src = node_source(nws)
            if isinstance(src, str):
                prepared.note(src)
            else:
                prepared.add(src, nws)
        elif isinstance(item, TextSource):
            prepared.add(item)
        elif isinstance(item, dict):
            try:
                prepared.add(TextSource(**item))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"source #{i} ({item.get('id')!r}) is invalid: {exc}") from exc
        else:
            raise InvalidInputError(
                f"source #{i} must be a TextSource, dict, NodeWithScore or node, got {type(item).__name__}"
            )
    return prepared


class ParsedMessages(BaseModel):
    """Chat messages split into what the tracer needs.

    Attributes:
        prepared: Sources found in ``CitableBlock`` / ``DocumentBlock`` content.
        question: Text of the last user message, preceded by earlier turns if any.
        system_prompt: Text of the system messages, if any.
        turns: (role, text) of every non-system message, for plain generation.
    """

    prepared: PreparedSources
    question: str
    system_prompt: str | None = None
    turns: list[tuple[str, str]] = Field(default_factory=list)


def _document_text(block: DocumentBlock) -> str | None:
    mimetype = block.document_mimetype or ""
    if mimetype and not mimetype.startswith("text/"):
        return None
    try:
        data = block.resolve_document().read()
    except Exception:
        return None
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def _citable_text(block: CitableBlock, prepared: PreparedSources) -> str | None:
    parts: list[str] = []
    for inner in block.content:
        if isinstance(inner, TextBlock):
            parts.append(inner.text)
        elif isinstance(inner, DocumentBlock) and (doc := _document_text(inner)) is not None:
            parts.append(doc)
        else:
            prepared.note(
                f"citable block {block.source!r}: {inner.block_type} content skipped (text only until "
                "multimodal support lands)"
            )
    text = "\n".join(p for p in parts if p.strip())
    return text or None


def parse_messages(messages: Sequence[ChatMessage]) -> ParsedMessages:
    """Find sources, the question and the system prompt in LlamaIndex chat messages.

    ``CitableBlock`` -> a source with id ``block.source`` and title ``block.title``;
    ``DocumentBlock`` with text content -> a source with id its title (numbered if the
    title is the default or repeated); ``TextBlock`` -> the message's text; image, audio and
    video blocks -> skipped with a note.
    """
    prepared = PreparedSources()
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    doc_count = 0
    for message in messages:
        texts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, CitableBlock):
                text = _citable_text(block, prepared)
                if text is None:
                    prepared.note(f"citable block {block.source!r} has no text and was skipped")
                    continue
                prepared.add(TextSource(id=block.source, text=text, title=block.title or None))
            elif isinstance(block, DocumentBlock):
                doc_count += 1
                text = _document_text(block)
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
                prepared.note(
                    f"{block.block_type} block skipped: only text is attributed until multimodal lands"
                )
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
