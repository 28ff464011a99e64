"""Result objects -> span attributes (pure functions, no SDK)."""

from __future__ import annotations

import json

from omnitrace_core.observers import GenerationInfo
from omnitrace_integrations.otel import attributes as A
from omnitrace_integrations.otel.content import content_capture_enabled, truncate
from omnitrace_integrations.otel.spans import (
    generation_end_attributes,
    generation_name,
    generation_start_attributes,
    request_attributes,
    sentence_attributes,
)
from tests.otel.otel_fakes import MODEL, SOURCES, make_answer


def _info(operation: str = "chat") -> GenerationInfo:
    return GenerationInfo(
        run_id="r1",
        operation=operation,
        model=MODEL,
        signal="attmean",
        source_ids=tuple(SOURCES),
        question="Where is the Eiffel Tower?",
        prompt_tokens=120,
        request={"max_new_tokens": 32, "temperature": 0.7, "do_sample": True, "no_repeat_ngram_size": 3},
        sources=dict(SOURCES),
    )


def test_generation_name() -> None:
    assert generation_name(_info()) == f"chat {MODEL}"
    assert generation_name(_info("attribute")) == f"attribute {MODEL}"


def test_start_attributes_without_content() -> None:
    attrs = generation_start_attributes(_info(), capture_content=False)
    assert attrs[A.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[A.GEN_AI_REQUEST_MODEL] == MODEL
    assert attrs[A.OPENINFERENCE_SPAN_KIND] == "LLM"
    assert attrs[A.LLM_MODEL_NAME] == MODEL
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert attrs[A.OMNITRACE_SOURCE_IDS] == ["doc1", "doc2"]
    assert attrs[A.OMNITRACE_CONTENT_CAPTURED] is False
    assert not any(k in attrs for k in (A.INPUT_VALUE, A.GEN_AI_INPUT_MESSAGES))
    assert not any("Eiffel" in str(v) for v in attrs.values())


def test_request_parameters_map_to_genai_or_omnitrace() -> None:
    attrs = request_attributes({"max_new_tokens": 32, "temperature": 0.7, "top_k": None, "do_sample": True})
    assert attrs[A.GEN_AI_REQUEST_MAX_TOKENS] == 32
    assert attrs[A.GEN_AI_REQUEST_TEMPERATURE] == 0.7
    assert attrs["omnitrace.request.do_sample"] is True
    assert A.GEN_AI_REQUEST_TOP_K not in attrs  # None is not recorded
    assert json.loads(str(attrs[A.LLM_INVOCATION_PARAMETERS])) == {
        "do_sample": True,
        "max_new_tokens": 32,
        "temperature": 0.7,
    }


def test_start_attributes_with_content() -> None:
    attrs = generation_start_attributes(_info(), capture_content=True)
    payload = json.loads(str(attrs[A.INPUT_VALUE]))
    assert payload == {"question": "Where is the Eiffel Tower?", "sources": SOURCES}
    assert attrs["llm.input_messages.0.message.role"] == "user"
    assert attrs["llm.input_messages.0.message.content"] == "Where is the Eiffel Tower?"
    messages = json.loads(str(attrs[A.GEN_AI_INPUT_MESSAGES]))
    assert messages[0]["parts"][0]["content"] == "Where is the Eiffel Tower?"


def test_end_attributes() -> None:
    answer = make_answer()
    attrs = generation_end_attributes(answer, capture_content=False)
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 22
    assert attrs[A.LLM_TOKEN_COUNT_TOTAL] == 142
    assert attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert attrs[A.OMNITRACE_SENTENCE_COUNT] == 2
    assert attrs[A.OMNITRACE_GROUNDED_SENTENCE_COUNT] == 1
    assert attrs[A.OMNITRACE_CITED_SOURCE_IDS] == ["doc1"]
    assert attrs["omnitrace.timing.total_s"] == 1.5
    assert A.OUTPUT_VALUE not in attrs
    with_content = generation_end_attributes(answer, capture_content=True)
    assert with_content[A.OUTPUT_VALUE] == answer.text
    assert with_content["llm.output_messages.0.message.content"] == answer.text


def test_forced_answer_has_no_finish_reason() -> None:
    attrs = generation_end_attributes(make_answer(mode="attribute"), capture_content=False)
    assert A.GEN_AI_RESPONSE_FINISH_REASONS not in attrs
    assert attrs[A.OMNITRACE_MODE] == "attribute"


def test_sentence_attributes_list_cited_units_as_documents() -> None:
    sentence = make_answer().sentences[0]
    attrs = sentence_attributes(_info(), sentence, capture_content=False)
    assert attrs[A.OPENINFERENCE_SPAN_KIND] == "RETRIEVER"
    assert attrs[A.OMNITRACE_SENTENCE_INDEX] == 0
    assert (attrs[A.OMNITRACE_SENTENCE_CHAR_START], attrs[A.OMNITRACE_SENTENCE_CHAR_END]) == (
        0,
        len(sentence.text),
    )
    assert attrs[A.OMNITRACE_SENTENCE_GROUNDED] is True
    assert attrs[A.OMNITRACE_SENTENCE_CITATION_COUNT] == 2
    assert attrs[A.OMNITRACE_SENTENCE_CITED_SOURCE_IDS] == ["doc1"]
    assert attrs[A.OMNITRACE_SENTENCE_TOP_SOURCE_ID] == "doc1"
    assert json.loads(str(attrs[A.OMNITRACE_SENTENCE_SOURCE_MASS])) == {"doc1": 0.9, "doc2": 0.1}
    assert attrs["retrieval.documents.0.document.id"] == "doc1#0"
    assert attrs["retrieval.documents.0.document.score"] == 0.75
    assert attrs["retrieval.documents.1.document.id"] == "doc1#1"
    meta = json.loads(str(attrs["retrieval.documents.0.document.metadata"]))
    assert meta == {
        "source_id": "doc1",
        "unit_id": "doc1#0",
        "char_start": 0,
        "char_end": 29,
        "modality": "text",
        "title": "Eiffel",
        "url": "https://example.org/eiffel",
        "metadata": {"lang": "en"},
    }
    assert "retrieval.documents.0.document.content" not in attrs
    assert A.INPUT_VALUE not in attrs


def test_sentence_content_is_recorded_and_truncated_on_request() -> None:
    sentence = make_answer().sentences[0]
    attrs = sentence_attributes(_info(), sentence, capture_content=True, max_content_chars=10)
    assert attrs["retrieval.documents.0.document.content"] == "The Eiffe…"
    assert attrs[A.INPUT_VALUE] == "The Eiffe…"


def test_content_capture_switches(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert content_capture_enabled() is False
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    assert content_capture_enabled() is True
    assert content_capture_enabled(False) is False  # the explicit flag wins
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    monkeypatch.setenv("OMNITRACE_OTEL_CAPTURE_CONTENT", "1")
    assert content_capture_enabled() is True
    monkeypatch.setenv("OMNITRACE_OTEL_CAPTURE_CONTENT", "no")
    assert content_capture_enabled() is False
    assert truncate("abc", None) == "abc"
