"""The instrumentor on real Tracers: a tiny random Llama (fast) and the packaged model (e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

from omnitrace_core import FinalEvent, Tracer
from omnitrace_integrations.logging import StructlogObserver
from omnitrace_integrations.otel import OmniTraceInstrumentor
from omnitrace_integrations.otel import attributes as A


@pytest.fixture
def instrumented(tracer_provider: TracerProvider) -> Iterator[OmniTraceInstrumentor]:
    inst = OmniTraceInstrumentor()
    inst.instrument(tracer_provider=tracer_provider)
    yield inst
    inst.uninstrument()


def _check_tree(spans: tuple[ReadableSpan, ...], answer: Any, operation: str) -> None:
    parents = [s for s in spans if s.name == f"{operation} {answer.model}"]
    assert len(parents) == 1, [s.name for s in spans]
    parent = parents[0]
    attrs = dict(parent.attributes or {})
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == answer.prompt_tokens
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == answer.generated_tokens
    assert attrs[A.OMNITRACE_SENTENCE_COUNT] == len(answer.sentences)
    children = sorted(
        (s for s in spans if s.name == A.SENTENCE_SPAN_NAME),
        key=lambda s: s.attributes[A.OMNITRACE_SENTENCE_INDEX],  # type: ignore[index]
    )
    assert len(children) == len(answer.sentences)
    for child, sentence in zip(children, answer.sentences, strict=True):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        c = dict(child.attributes or {})
        assert c[A.OMNITRACE_SENTENCE_CITATION_COUNT] == len(sentence.citations)
        assert (c[A.OMNITRACE_SENTENCE_CHAR_START], c[A.OMNITRACE_SENTENCE_CHAR_END]) == (
            sentence.char_start,
            sentence.char_end,
        )
        for k, citation in enumerate(sentence.citations):
            assert c[A.retrieval_document(k, A.DOCUMENT_ID)] == citation.unit_id
            assert c[A.retrieval_document(k, A.DOCUMENT_SCORE)] == pytest.approx(citation.score)


def test_tiny_model_generate_stream_attribute(
    instrumented: OmniTraceInstrumentor,
    span_exporter: InMemorySpanExporter,
    tiny_model: Any,
    tiny_tokenizer: Any,
    sources: list[Any],
) -> None:
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
    answer = tracer.generate(sources, "How tall is the lighthouse?", max_new_tokens=12)
    assert tracer.flush_observers()
    _check_tree(span_exporter.get_finished_spans(), answer, "chat")

    span_exporter.clear()
    final = [
        e
        for e in tracer.stream(sources, "When was it founded?", max_new_tokens=12)
        if isinstance(e, FinalEvent)
    ]
    assert tracer.flush_observers()
    _check_tree(span_exporter.get_finished_spans(), final[0].answer, "chat")

    span_exporter.clear()
    forced = tracer.attribute(
        sources, "How tall?", "The lighthouse stands 42 metres tall. It was lit every night."
    )
    assert tracer.flush_observers()
    _check_tree(span_exporter.get_finished_spans(), forced, "attribute")


def test_tiny_model_bad_input_leaves_no_open_span(
    instrumented: OmniTraceInstrumentor,
    span_exporter: InMemorySpanExporter,
    tiny_model: Any,
    tiny_tokenizer: Any,
    sources: list[Any],
) -> None:
    from omnitrace_core import InvalidInputError

    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
    with pytest.raises(InvalidInputError):
        tracer.generate(sources, "q?", max_new_tokens=0)
    assert tracer.flush_observers()
    assert instrumented.observer is not None and instrumented.observer.open_runs == 0
    assert span_exporter.get_finished_spans() == ()


def test_tiny_model_decoder_failure_is_recorded(
    instrumented: OmniTraceInstrumentor,
    span_exporter: InMemorySpanExporter,
    tiny_model: Any,
    tiny_tokenizer: Any,
    sources: list[Any],
) -> None:
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
    with pytest.raises(Exception, match=r"no_such_generation_kwarg"):
        tracer.generate(sources, "q?", max_new_tokens=4, no_such_generation_kwarg=1)
    assert tracer.flush_observers()
    (span,) = span_exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.model
def test_packaged_model_end_to_end(
    instrumented: OmniTraceInstrumentor,
    span_exporter: InMemorySpanExporter,
    tracer_provider: TracerProvider,
    default_tracer: Tracer,
    sources: list[Any],
) -> None:
    logs_observer = StructlogObserver()
    default_tracer.add_observer(logs_observer)
    try:
        with (
            capture_logs() as logs,
            tracer_provider.get_tracer("app").start_as_current_span("app request") as app,
        ):
            answer = default_tracer.generate(sources, "When was Valbrook Works founded?", max_new_tokens=24)
            assert default_tracer.flush_observers(10.0)
    finally:
        default_tracer.remove_observer(logs_observer)
    assert answer.text
    spans = span_exporter.get_finished_spans()
    _check_tree(spans, answer, "chat")
    (chat,) = [s for s in spans if s.name.startswith("chat ")]
    assert chat.parent is not None and chat.parent.span_id == app.get_span_context().span_id
    assert chat.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == (answer.finish_reason,)  # type: ignore[index]
    names = [e["event"] for e in logs]
    assert names[0] == "generation_started" and names[-1] == "generation_finished"
    assert names.count("sentence_cited") + names.count("curation_empty") == len(answer.sentences)


def test_calls_without_sources_get_a_span_too(
    instrumented: OmniTraceInstrumentor,
    span_exporter: InMemorySpanExporter,
    tiny_model: Any,
    tiny_tokenizer: Any,
) -> None:
    """A source-less call (LangChain, LlamaIndex, a tool turn) is a ``chat`` span with usage and
    the stop sequences, and no sentence children."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage

    from omnitrace_integrations.langchain import ChatOmniTrace
    from omnitrace_integrations.llama_index import OmniTraceLLM

    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
    msg = ChatOmniTrace(tracer=tracer, max_tokens=8).invoke("hello there", stop=["zzz"])
    response = OmniTraceLLM(tracer=tracer, max_new_tokens=6).chat([ChatMessage(role="user", content="hi")])
    assert tracer.flush_observers()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "chat tiny-llama"]
    assert len(spans) == 2 and not [s for s in span_exporter.get_finished_spans() if s.name == A.SENTENCE_SPAN_NAME]
    first, second = (dict(s.attributes or {}) for s in spans)
    assert first[A.GEN_AI_USAGE_INPUT_TOKENS] == msg.usage_metadata["input_tokens"]  # type: ignore[index]
    assert first[A.GEN_AI_USAGE_OUTPUT_TOKENS] == msg.usage_metadata["output_tokens"]  # type: ignore[index]
    assert tuple(first[A.GEN_AI_REQUEST_STOP_SEQUENCES]) == ("zzz",)  # type: ignore[arg-type]
    assert second[A.GEN_AI_USAGE_INPUT_TOKENS] == response.raw["usage"]["prompt_tokens"]
    assert all(s.status.status_code != StatusCode.ERROR for s in spans)
