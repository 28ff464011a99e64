"""The attribute names match the conventions they claim to follow."""

from __future__ import annotations

import pytest

from omnitrace_integrations.otel import attributes as A


def test_genai_names_match_opentelemetry_semconv() -> None:
    g = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    pairs = {
        A.GEN_AI_OPERATION_NAME: g.GEN_AI_OPERATION_NAME,
        A.GEN_AI_PROVIDER_NAME: g.GEN_AI_PROVIDER_NAME,
        A.GEN_AI_REQUEST_MODEL: g.GEN_AI_REQUEST_MODEL,
        A.GEN_AI_RESPONSE_MODEL: g.GEN_AI_RESPONSE_MODEL,
        A.GEN_AI_RESPONSE_ID: g.GEN_AI_RESPONSE_ID,
        A.GEN_AI_REQUEST_MAX_TOKENS: g.GEN_AI_REQUEST_MAX_TOKENS,
        A.GEN_AI_REQUEST_TEMPERATURE: g.GEN_AI_REQUEST_TEMPERATURE,
        A.GEN_AI_REQUEST_TOP_P: g.GEN_AI_REQUEST_TOP_P,
        A.GEN_AI_REQUEST_TOP_K: g.GEN_AI_REQUEST_TOP_K,
        A.GEN_AI_REQUEST_SEED: g.GEN_AI_REQUEST_SEED,
        A.GEN_AI_USAGE_INPUT_TOKENS: g.GEN_AI_USAGE_INPUT_TOKENS,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: g.GEN_AI_USAGE_OUTPUT_TOKENS,
        A.GEN_AI_RESPONSE_FINISH_REASONS: g.GEN_AI_RESPONSE_FINISH_REASONS,
        A.GEN_AI_INPUT_MESSAGES: g.GEN_AI_INPUT_MESSAGES,
        A.GEN_AI_OUTPUT_MESSAGES: g.GEN_AI_OUTPUT_MESSAGES,
    }
    assert {ours: theirs for ours, theirs in pairs.items() if ours != theirs} == {}


def test_openinference_names_match_openinference_semconv() -> None:
    semconv = pytest.importorskip("openinference.semconv.trace")
    S, D, M = semconv.SpanAttributes, semconv.DocumentAttributes, semconv.MessageAttributes
    kinds = semconv.OpenInferenceSpanKindValues
    pairs = {
        A.OPENINFERENCE_SPAN_KIND: S.OPENINFERENCE_SPAN_KIND,
        A.SPAN_KIND_LLM: kinds.LLM.value,
        A.SPAN_KIND_RETRIEVER: kinds.RETRIEVER.value,
        A.LLM_MODEL_NAME: S.LLM_MODEL_NAME,
        A.LLM_PROVIDER: S.LLM_PROVIDER,
        A.LLM_INVOCATION_PARAMETERS: S.LLM_INVOCATION_PARAMETERS,
        A.LLM_TOKEN_COUNT_PROMPT: S.LLM_TOKEN_COUNT_PROMPT,
        A.LLM_TOKEN_COUNT_COMPLETION: S.LLM_TOKEN_COUNT_COMPLETION,
        A.LLM_TOKEN_COUNT_TOTAL: S.LLM_TOKEN_COUNT_TOTAL,
        A.LLM_INPUT_MESSAGES: S.LLM_INPUT_MESSAGES,
        A.LLM_OUTPUT_MESSAGES: S.LLM_OUTPUT_MESSAGES,
        A.MESSAGE_ROLE: M.MESSAGE_ROLE,
        A.MESSAGE_CONTENT: M.MESSAGE_CONTENT,
        A.INPUT_VALUE: S.INPUT_VALUE,
        A.INPUT_MIME_TYPE: S.INPUT_MIME_TYPE,
        A.OUTPUT_VALUE: S.OUTPUT_VALUE,
        A.OUTPUT_MIME_TYPE: S.OUTPUT_MIME_TYPE,
        A.RETRIEVAL_DOCUMENTS: S.RETRIEVAL_DOCUMENTS,
        A.DOCUMENT_ID: D.DOCUMENT_ID,
        A.DOCUMENT_SCORE: D.DOCUMENT_SCORE,
        A.DOCUMENT_CONTENT: D.DOCUMENT_CONTENT,
        A.DOCUMENT_METADATA: D.DOCUMENT_METADATA,
    }
    assert {ours: theirs for ours, theirs in pairs.items() if ours != theirs} == {}


def test_indexed_names() -> None:
    assert A.retrieval_document(3, A.DOCUMENT_SCORE) == "retrieval.documents.3.document.score"
    assert A.message(A.LLM_INPUT_MESSAGES, 0, A.MESSAGE_ROLE) == "llm.input_messages.0.message.role"


def test_every_constant_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text(encoding="utf-8")
    names = [
        v
        for k, v in vars(A).items()
        if k.isupper() and isinstance(v, str) and ("." in v) and not k.startswith(("INSTRUMENTATION", "MIME"))
    ]
    missing = [n for n in names if f"`{n}" not in doc]
    assert missing == []
