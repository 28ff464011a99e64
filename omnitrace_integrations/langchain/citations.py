"""Cited answers as LangChain content, and back: annotations, cited ``Document``s, rendering.

The chat model writes each sentence's citations as standard
``langchain_core.messages.content.Citation`` annotations on a ``text`` block
(``start_index`` / ``end_index`` = the sentence's span in the answer, ``cited_text`` = the
cited unit, ``id`` / ``title`` / ``url`` from the source, the rest in ``extras``). The helpers
here read only those standard annotations, so they also work on messages from other
providers that cite the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.messages.content import Citation as LCCitation
from langchain_core.messages.content import create_citation

from omnitrace_core import Citation, InvalidInputError, SentenceAttribution, TracedAnswer
from omnitrace_core.structured import FieldCitation
from omnitrace_core.structured import field_citations as core_field_citations
from omnitrace_integrations.langchain.messages import _json_safe

__all__ = [
    "answer_text_block",
    "citation_annotation",
    "citations_by_sentence",
    "cited_documents",
    "cited_documents_by_sentence",
    "field_citations",
    "render_cited_answer",
    "sentence_annotations",
    "traced_answer",
]

#: Index of the answer's text block (constant, so streamed chunks merge into one block).
TEXT_BLOCK_INDEX = 0


def citation_annotation(sentence: SentenceAttribution, citation: Citation) -> LCCitation:
    """One standard ``Citation`` annotation for a cited unit of a sentence.

    ``extras`` always holds ``source_id``, ``unit_id``, ``score``, ``modality``,
    ``sentence_index`` and the unit's ``source_char_start`` / ``source_char_end``; a media
    citation adds where in the file: ``seconds`` (``[[start_s, end_s], ...]``, audio / video
    and transcripts) and ``boxes`` (``[[x0, y0, x1, y1], ...]`` in pixels, images).
    """
    extras: dict[str, Any] = {
        "source_id": citation.source_id,
        "unit_id": citation.unit_id,
        "score": citation.score,
        "modality": citation.modality,
        "sentence_index": sentence.index,
        "source_char_start": citation.char_start,
        "source_char_end": citation.char_end,
    }
    if citation.seconds:
        extras["seconds"] = [[float(a), float(b)] for a, b in citation.seconds]
    if citation.boxes:
        extras["boxes"] = [[int(v) for v in box] for box in citation.boxes]
    return create_citation(
        url=citation.url,
        title=citation.title,
        start_index=sentence.char_start,
        end_index=sentence.char_end,
        cited_text=citation.cited_text,
        id=citation.source_id,
        **extras,
    )


def sentence_annotations(sentence: SentenceAttribution) -> list[LCCitation]:
    """The annotations of one sentence, in citation order."""
    return [citation_annotation(sentence, c) for c in sentence.citations]


def answer_text_block(answer: TracedAnswer) -> dict[str, Any]:
    """The whole answer as one standard ``text`` block with its citation annotations."""
    block: dict[str, Any] = {"type": "text", "text": answer.text, "index": TEXT_BLOCK_INDEX}
    annotations = [a for s in answer.sentences for a in sentence_annotations(s)]
    if annotations:
        block["annotations"] = annotations
    return block


def traced_answer(message: BaseMessage) -> TracedAnswer | None:
    """The full core result carried in ``response_metadata["omnitrace"]`` (None if absent)."""
    data = getattr(message, "response_metadata", {}).get("omnitrace")
    return TracedAnswer.model_validate(data) if isinstance(data, dict) else None


#: ``response_metadata`` key of a structured reply's per-field citations.
FIELD_CITATIONS_KEY = "field_citations"


def field_citations(message: BaseMessage) -> list[FieldCitation]:
    """Per-field citations of a structured (JSON) reply: for each leaf field of the parsed
    object, its JSON path, its value's span in the raw JSON text and the sources the value's
    tokens were drawn from (:func:`omnitrace_core.structured.field_citations`).

    ``with_structured_output`` stores them in the raw message's
    ``response_metadata["field_citations"]`` (see ``include_raw=True``); for any other message
    carrying a traced JSON answer they are computed from ``response_metadata["omnitrace"]``.

    Returns:
        The field citations; empty when the reply was not attributed (no sources).

    Raises:
        InvalidInputError: the attributed reply is not one JSON value.
    """
    stored = getattr(message, "response_metadata", {}).get(FIELD_CITATIONS_KEY)
    if isinstance(stored, list):
        return [FieldCitation.model_validate(f) for f in stored]
    answer = traced_answer(message)
    return core_field_citations(answer) if answer is not None else []


def with_field_citations(message: BaseMessage) -> BaseMessage:
    """``message`` with ``response_metadata["field_citations"]`` added when it carries a traced
    answer that is one JSON value (unchanged otherwise: no sources, or a reply the token limit
    cut, which structured output refuses anyway)."""
    answer = traced_answer(message)
    if answer is None:
        return message
    try:
        fields = core_field_citations(answer)
    except InvalidInputError:
        return message
    metadata = {
        **message.response_metadata,
        FIELD_CITATIONS_KEY: [_json_safe(f.model_dump(mode="json")) for f in fields],
    }
    return message.model_copy(update={"response_metadata": metadata})


def _text_blocks(message: BaseMessage) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "text"]


def _text(message: BaseMessage) -> str:
    return "".join(str(b.get("text", "")) for b in _text_blocks(message))


def _citations(message: BaseMessage) -> list[tuple[int, dict[str, Any]]]:
    """Every citation annotation with the offset of its text block in the message text."""
    out: list[tuple[int, dict[str, Any]]] = []
    offset = 0
    for block in _text_blocks(message):
        for ann in block.get("annotations") or []:
            if isinstance(ann, dict) and ann.get("type") == "citation":
                out.append((offset, ann))
        offset += len(str(block.get("text", "")))
    return out


def citations_by_sentence(message: BaseMessage) -> list[dict[str, Any]]:
    """The cited spans of a message, in order.

    Returns:
        One entry per cited span: ``{"start", "end", "text", "citations": [annotation, ...]}``
        (offsets in the message text).
    """
    text = _text(message)
    spans: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for offset, ann in _citations(message):
        start = offset + int(ann.get("start_index", 0))
        end = offset + int(ann.get("end_index", len(text)))
        spans.setdefault((start, end), []).append(ann)
    return [
        {"start": a, "end": b, "text": text[a:b], "citations": anns}
        for (a, b), anns in sorted(spans.items())
    ]


def _source_key(ann: dict[str, Any]) -> str:
    extras = ann.get("extras") or {}
    return str(extras.get("source_id") or ann.get("id") or ann.get("url") or ann.get("title") or "")


def _document(ann: dict[str, Any], sources: dict[str, dict[str, Any]]) -> Document:
    key = _source_key(ann)
    info = sources.get(key, {})
    metadata: dict[str, Any] = dict(info.get("metadata") or {})
    for name in ("title", "url"):
        if ann.get(name) is not None:
            metadata.setdefault(name, ann[name])
    extras = ann.get("extras") or {}
    if "score" in extras:
        metadata["citation_score"] = extras["score"]
    for name in ("seconds", "boxes"):  # where in a media file the cited part is
        if extras.get(name):
            metadata[f"cited_{name}"] = extras[name]
    if extras.get("modality") not in (None, "text"):
        metadata.setdefault("modality", extras["modality"])
    return Document(page_content=str(ann.get("cited_text", "")), id=key or None, metadata=metadata)


def _sources_by_id(message: BaseMessage) -> dict[str, dict[str, Any]]:
    data = getattr(message, "response_metadata", {}).get("omnitrace")
    if not isinstance(data, dict):
        return {}
    return {str(s.get("id")): s for s in data.get("sources", []) if isinstance(s, dict)}


def cited_documents_by_sentence(message: BaseMessage) -> list[dict[str, Any]]:
    """Per cited span, the cited ``Document``s (``page_content`` = the cited text).

    Returns:
        ``[{"start", "end", "text", "documents": [Document, ...]}, ...]``; each document's
        ``id`` is the source id, its metadata the source's metadata plus ``citation_score``
        (and, for a media citation, ``modality`` and ``cited_seconds`` / ``cited_boxes``).
    """
    sources = _sources_by_id(message)
    return [
        {
            "start": entry["start"],
            "end": entry["end"],
            "text": entry["text"],
            "documents": [_document(a, sources) for a in entry["citations"]],
        }
        for entry in citations_by_sentence(message)
    ]


def cited_documents(message: BaseMessage) -> list[Document]:
    """The union of cited documents, in order of first citation (one per source / unit)."""
    sources = _sources_by_id(message)
    seen: dict[tuple[str, str], Document] = {}
    for _, ann in _citations(message):
        key = (_source_key(ann), str(ann.get("cited_text", "")))
        if key not in seen:
            seen[key] = _document(ann, sources)
    return list(seen.values())


def render_cited_answer(
    message: BaseMessage,
    style: Literal["plain", "markdown"] = "plain",
    *,
    sources_heading: str = "Sources",
) -> str:
    """The answer with ``[n]`` markers after each cited sentence and a numbered source list.

    Args:
        message: A message whose text blocks carry citation annotations.
        style: ``plain`` text or ``markdown`` (links for sources with a url).
        sources_heading: Heading of the source list.

    Returns:
        The rendered answer; with no citations, the plain answer text.
    """
    text = _text(message)
    numbers: dict[str, int] = {}
    labels: dict[str, tuple[str, str | None]] = {}
    inserts: dict[int, list[int]] = {}
    for entry in citations_by_sentence(message):
        for ann in entry["citations"]:
            key = _source_key(ann)
            if key not in numbers:
                numbers[key] = len(numbers) + 1
                labels[key] = (str(ann.get("title") or key), ann.get("url"))
            marks = inserts.setdefault(entry["end"], [])
            if numbers[key] not in marks:
                marks.append(numbers[key])
    if not numbers:
        return text
    out: list[str] = []
    last = 0
    for pos in sorted(inserts):
        out.append(text[last:pos])
        out.append("".join(f"[{n}]" for n in sorted(inserts[pos])))
        last = pos
    out.append(text[last:])
    lines = ["".join(out).rstrip(), ""]
    if style == "markdown":
        lines.append(f"**{sources_heading}**")
        lines.append("")
        for key, n in numbers.items():
            title, url = labels[key]
            shown = f"[{title}]({url})" if url else title
            suffix = f" (`{key}`)" if title != key else ""
            lines.append(f"{n}. {shown}{suffix}")
    else:
        lines.append(f"{sources_heading}:")
        for key, n in numbers.items():
            title, url = labels[key]
            suffix = f" ({key})" if title != key else ""
            lines.append(f"[{n}] {title}{suffix}" + (f" <{url}>" if url else ""))
    return "\n".join(lines)


def answer_metadata(answer: TracedAnswer) -> dict[str, Any]:
    """``response_metadata`` for a traced answer (JSON-safe)."""
    return {
        "model_name": answer.model,
        "finish_reason": answer.finish_reason or "stop",
        "omnitrace": _json_safe(answer.model_dump(mode="json")),
    }


def sentence_event_data(
    sentence: SentenceAttribution, annotations: Sequence[LCCitation]
) -> dict[str, Any]:
    """Payload of the ``omnitrace_citation`` custom event (JSON-safe)."""
    return {
        "sentence": sentence.model_dump(mode="json"),
        "annotations": [dict(a) for a in annotations],
        "grounded": sentence.grounded,
    }
