"""Pure functions from OmniTrace results to span attributes (no OpenTelemetry import).

Kept apart from the observer so the mapping can be tested and reused (e.g. by a LangChain or
LlamaIndex callback that owns its own spans).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from omnitrace_core.observers import GenerationInfo
from omnitrace_core.results import SentenceAttribution, TracedAnswer
from omnitrace_integrations.otel import attributes as A
from omnitrace_integrations.otel.content import truncate

AttributeValue = str | bool | int | float | list[str] | list[int] | list[float] | list[bool]
Attributes = dict[str, AttributeValue]


def generation_name(info: GenerationInfo) -> str:
    """``chat {model}`` or ``attribute {model}``."""
    return A.GENERATION_SPAN_NAME.format(operation=info.operation, model=info.model)


def generation_start_attributes(
    info: GenerationInfo, *, capture_content: bool, max_content_chars: int | None = None
) -> Attributes:
    """Attributes known when a generation starts (model, request parameters, sources)."""
    attrs: Attributes = {
        A.GEN_AI_OPERATION_NAME: info.operation,
        A.GEN_AI_PROVIDER_NAME: A.PROVIDER_NAME,
        A.GEN_AI_REQUEST_MODEL: info.model,
        A.OPENINFERENCE_SPAN_KIND: A.SPAN_KIND_LLM,
        A.LLM_MODEL_NAME: info.model,
        A.LLM_PROVIDER: A.PROVIDER_NAME,
        A.LLM_TOKEN_COUNT_PROMPT: info.prompt_tokens,
        A.GEN_AI_USAGE_INPUT_TOKENS: info.prompt_tokens,
        A.OMNITRACE_RUN_ID: info.run_id,
        A.OMNITRACE_SIGNAL: info.signal,
        A.OMNITRACE_SOURCE_IDS: list(info.source_ids),
        A.OMNITRACE_SOURCE_COUNT: len(info.source_ids),
        A.OMNITRACE_CONTENT_CAPTURED: capture_content,
    }
    attrs.update(request_attributes(info.request))
    if capture_content:
        attrs.update(_input_content(info, max_content_chars))
    return attrs


def request_attributes(request: Mapping[str, Any]) -> Attributes:
    """Generation parameters: GenAI attributes where one exists, ``omnitrace.request.*`` otherwise."""
    attrs: Attributes = {}
    params: dict[str, Any] = {}
    for key, value in request.items():
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = list(value)  # e.g. stop_sequences: a string array attribute
        elif value is None or not isinstance(value, (str, bool, int, float)):
            continue
        params[key] = value
        attrs[A.REQUEST_PARAMETER_ATTRIBUTES.get(key, A.OMNITRACE_REQUEST_PREFIX + key)] = value
    if params:
        attrs[A.LLM_INVOCATION_PARAMETERS] = json.dumps(params, sort_keys=True)
    return attrs


def _input_content(info: GenerationInfo, limit: int | None) -> Attributes:
    sources = {sid: truncate(text, limit) for sid, text in info.sources.items()}
    question = truncate(info.question, limit)
    user_message = {"role": "user", "parts": [{"type": "text", "content": question}]}
    return {
        A.INPUT_VALUE: json.dumps({"question": question, "sources": sources}, ensure_ascii=False),
        A.INPUT_MIME_TYPE: A.MIME_JSON,
        A.message(A.LLM_INPUT_MESSAGES, 0, A.MESSAGE_ROLE): "user",
        A.message(A.LLM_INPUT_MESSAGES, 0, A.MESSAGE_CONTENT): question,
        A.GEN_AI_INPUT_MESSAGES: json.dumps([user_message], ensure_ascii=False),
    }


def generation_end_attributes(
    answer: TracedAnswer, *, capture_content: bool, max_content_chars: int | None = None
) -> Attributes:
    """Attributes of the finished answer: usage, finish reason, citation summary, timings."""
    grounded = sum(1 for s in answer.sentences if s.grounded)
    attrs: Attributes = {
        A.GEN_AI_RESPONSE_MODEL: answer.model,
        A.GEN_AI_USAGE_INPUT_TOKENS: answer.prompt_tokens,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: answer.generated_tokens,
        A.LLM_TOKEN_COUNT_PROMPT: answer.prompt_tokens,
        A.LLM_TOKEN_COUNT_COMPLETION: answer.generated_tokens,
        A.LLM_TOKEN_COUNT_TOTAL: answer.prompt_tokens + answer.generated_tokens,
        A.OMNITRACE_MODE: answer.mode,
        A.OMNITRACE_SENTENCE_COUNT: len(answer.sentences),
        A.OMNITRACE_GROUNDED_SENTENCE_COUNT: grounded,
        A.OMNITRACE_CITED_SOURCE_IDS: answer.cited_source_ids,
    }
    if answer.finish_reason is not None:
        attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [str(answer.finish_reason)]
    if answer.errors:
        attrs[A.OMNITRACE_ERRORS] = list(answer.errors)
    for key, seconds in answer.timings.items():
        attrs[A.OMNITRACE_TIMING_PREFIX + key] = float(seconds)
    if capture_content:
        text = truncate(answer.text, max_content_chars)
        output_message = {
            "role": "assistant",
            "parts": [{"type": "text", "content": text}],
            "finish_reason": answer.finish_reason or "stop",
        }
        attrs.update(
            {
                A.OUTPUT_VALUE: text,
                A.OUTPUT_MIME_TYPE: A.MIME_TEXT,
                A.message(A.LLM_OUTPUT_MESSAGES, 0, A.MESSAGE_ROLE): "assistant",
                A.message(A.LLM_OUTPUT_MESSAGES, 0, A.MESSAGE_CONTENT): text,
                A.GEN_AI_OUTPUT_MESSAGES: json.dumps([output_message], ensure_ascii=False),
            }
        )
    return attrs


def sentence_attributes(
    info: GenerationInfo,
    sentence: SentenceAttribution,
    *,
    capture_content: bool,
    max_content_chars: int | None = None,
) -> Attributes:
    """Attributes of one cited sentence: OpenInference RETRIEVER documents plus ``omnitrace.*``.

    Each citation becomes ``retrieval.documents.{k}`` (k in citation order): id = the cited
    unit, score = its curated vote, metadata = JSON with the source id, character span, title,
    url, modality and the source's metadata; content (the unit's text) only with content capture.
    """
    cited = list(dict.fromkeys(c.source_id for c in sentence.citations))
    attrs: Attributes = {
        A.OPENINFERENCE_SPAN_KIND: A.SPAN_KIND_RETRIEVER,
        A.OMNITRACE_RUN_ID: info.run_id,
        A.OMNITRACE_SIGNAL: info.signal,
        A.OMNITRACE_SENTENCE_INDEX: sentence.index,
        A.OMNITRACE_SENTENCE_CHAR_START: sentence.char_start,
        A.OMNITRACE_SENTENCE_CHAR_END: sentence.char_end,
        A.OMNITRACE_SENTENCE_TOKEN_START: sentence.token_start,
        A.OMNITRACE_SENTENCE_TOKEN_END: sentence.token_end,
        A.OMNITRACE_SENTENCE_GROUNDED: sentence.grounded,
        A.OMNITRACE_SENTENCE_CITATION_COUNT: len(sentence.citations),
        A.OMNITRACE_SENTENCE_CITED_SOURCE_IDS: cited,
        A.OMNITRACE_SENTENCE_SOURCE_MASS: json.dumps(sentence.source_mass, sort_keys=True),
    }
    if sentence.source_mass:
        attrs[A.OMNITRACE_SENTENCE_TOP_SOURCE_ID] = max(
            sentence.source_mass, key=lambda k: sentence.source_mass[k]
        )
    for k, c in enumerate(sentence.citations):
        metadata: dict[str, Any] = {
            "source_id": c.source_id,
            "unit_id": c.unit_id,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "modality": c.modality,
        }
        if c.title is not None:
            metadata["title"] = c.title
        if c.url is not None:
            metadata["url"] = c.url
        if c.metadata:
            metadata["metadata"] = c.metadata
        attrs[A.retrieval_document(k, A.DOCUMENT_ID)] = c.unit_id
        attrs[A.retrieval_document(k, A.DOCUMENT_SCORE)] = float(c.score)
        attrs[A.retrieval_document(k, A.DOCUMENT_METADATA)] = json.dumps(
            metadata, ensure_ascii=False, default=str
        )
        if capture_content:
            attrs[A.retrieval_document(k, A.DOCUMENT_CONTENT)] = truncate(c.cited_text, max_content_chars)
    if capture_content:
        text = truncate(sentence.text, max_content_chars)
        attrs[A.INPUT_VALUE] = text
        attrs[A.INPUT_MIME_TYPE] = A.MIME_TEXT
        attrs[A.OMNITRACE_SENTENCE_TEXT] = text
    return attrs
