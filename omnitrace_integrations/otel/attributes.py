"""Every span name and attribute key OmniTrace emits, in one place.

Three vocabularies are combined (documented in ``docs/observability.md``):

- OpenTelemetry GenAI semantic conventions (``gen_ai.*``) on the generation span, so any
  GenAI-aware backend shows the model call.
- OpenInference (``openinference.span.kind``, ``llm.*``, ``retrieval.documents.*``), so Arize
  Phoenix and other OpenInference backends show the generation as an LLM span and each cited
  sentence as a RETRIEVER span listing its cited source units as documents.
- ``omnitrace.*``: attribution-specific attributes that no convention covers yet.

The values here are plain strings (no import of an incubating semconv module at run time); a
test checks them against ``opentelemetry-semantic-conventions`` and
``openinference-semantic-conventions``.
"""

from __future__ import annotations

from typing import Final

# -- span names ---------------------------------------------------------------------------------
GENERATION_SPAN_NAME: Final = "{operation} {model}"
"""Format of the generation span name: ``chat {model}`` or ``attribute {model}``."""
SENTENCE_SPAN_NAME: Final = "cite sentence"
"""Name of each per-sentence child span (its index is ``omnitrace.sentence.index``)."""
INSTRUMENTATION_SCOPE: Final = "omnitrace_integrations.otel"

# -- OpenTelemetry GenAI semantic conventions ---------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
ERROR_TYPE: Final = "error.type"

PROVIDER_NAME: Final = "omnitrace"
"""Value of ``gen_ai.provider.name``: a local Hugging Face model run in-process by OmniTrace."""

# Generation parameters (``GenerationInfo.request`` keys) that have a GenAI attribute.
REQUEST_PARAMETER_ATTRIBUTES: Final[dict[str, str]] = {
    "max_new_tokens": GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": GEN_AI_REQUEST_TEMPERATURE,
    "top_p": GEN_AI_REQUEST_TOP_P,
    "top_k": GEN_AI_REQUEST_TOP_K,
    "seed": GEN_AI_REQUEST_SEED,
    "stop_sequences": GEN_AI_REQUEST_STOP_SEQUENCES,
}

# -- OpenInference ------------------------------------------------------------------------------
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
SPAN_KIND_LLM: Final = "LLM"
SPAN_KIND_RETRIEVER: Final = "RETRIEVER"
LLM_MODEL_NAME: Final = "llm.model_name"
LLM_PROVIDER: Final = "llm.provider"
LLM_INVOCATION_PARAMETERS: Final = "llm.invocation_parameters"
LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
LLM_INPUT_MESSAGES: Final = "llm.input_messages"
LLM_OUTPUT_MESSAGES: Final = "llm.output_messages"
MESSAGE_ROLE: Final = "message.role"
MESSAGE_CONTENT: Final = "message.content"
INPUT_VALUE: Final = "input.value"
INPUT_MIME_TYPE: Final = "input.mime_type"
OUTPUT_VALUE: Final = "output.value"
OUTPUT_MIME_TYPE: Final = "output.mime_type"
RETRIEVAL_DOCUMENTS: Final = "retrieval.documents"
DOCUMENT_ID: Final = "document.id"
DOCUMENT_SCORE: Final = "document.score"
DOCUMENT_CONTENT: Final = "document.content"
DOCUMENT_METADATA: Final = "document.metadata"
MIME_TEXT: Final = "text/plain"
MIME_JSON: Final = "application/json"

# -- omnitrace.* (no convention exists for citations yet) --------------------------------------
OMNITRACE_RUN_ID: Final = "omnitrace.run_id"
OMNITRACE_SIGNAL: Final = "omnitrace.signal"
OMNITRACE_MODE: Final = "omnitrace.mode"
OMNITRACE_SOURCE_IDS: Final = "omnitrace.source_ids"
OMNITRACE_SOURCE_COUNT: Final = "omnitrace.source_count"
OMNITRACE_CITED_SOURCE_IDS: Final = "omnitrace.cited_source_ids"
OMNITRACE_SENTENCE_COUNT: Final = "omnitrace.sentence_count"
OMNITRACE_GROUNDED_SENTENCE_COUNT: Final = "omnitrace.grounded_sentence_count"
OMNITRACE_ERRORS: Final = "omnitrace.errors"
OMNITRACE_TIMING_PREFIX: Final = "omnitrace.timing."
"""Prefix of the answer's timings, e.g. ``omnitrace.timing.total_s``."""
OMNITRACE_CONTENT_CAPTURED: Final = "omnitrace.content_captured"
OMNITRACE_REQUEST_PREFIX: Final = "omnitrace.request."
"""Prefix of generation parameters without a GenAI attribute, e.g. ``omnitrace.request.do_sample``."""

OMNITRACE_SENTENCE_INDEX: Final = "omnitrace.sentence.index"
OMNITRACE_SENTENCE_CHAR_START: Final = "omnitrace.sentence.char_start"
OMNITRACE_SENTENCE_CHAR_END: Final = "omnitrace.sentence.char_end"
OMNITRACE_SENTENCE_TOKEN_START: Final = "omnitrace.sentence.token_start"
OMNITRACE_SENTENCE_TOKEN_END: Final = "omnitrace.sentence.token_end"
OMNITRACE_SENTENCE_GROUNDED: Final = "omnitrace.sentence.grounded"
OMNITRACE_SENTENCE_CITATION_COUNT: Final = "omnitrace.sentence.citation_count"
OMNITRACE_SENTENCE_CITED_SOURCE_IDS: Final = "omnitrace.sentence.cited_source_ids"
OMNITRACE_SENTENCE_SOURCE_MASS: Final = "omnitrace.sentence.source_mass"
"""JSON object ``{source_id: share}`` (OpenTelemetry attributes cannot hold maps)."""
OMNITRACE_SENTENCE_TOP_SOURCE_ID: Final = "omnitrace.sentence.top_source_id"
OMNITRACE_SENTENCE_TEXT: Final = "omnitrace.sentence.text"
"""The sentence itself (content: recorded only when content capture is on)."""


def retrieval_document(index: int, field: str) -> str:
    """``retrieval.documents.{index}.{field}``, e.g. ``retrieval.documents.0.document.id``."""
    return f"{RETRIEVAL_DOCUMENTS}.{index}.{field}"


def message(prefix: str, index: int, field: str) -> str:
    """``{prefix}.{index}.{field}``, e.g. ``llm.input_messages.0.message.role``."""
    return f"{prefix}.{index}.{field}"
