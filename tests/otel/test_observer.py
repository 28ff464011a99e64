"""OTelObserver on a fake tracer: span names, attributes, parent/child links, errors, nesting."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from omnitrace_core.observers import GenerationInfo
from omnitrace_integrations.otel import OTelObserver
from omnitrace_integrations.otel import attributes as A
from tests.otel.otel_fakes import MODEL, SOURCES, FakeTracer, make_answer


def _run(tracer: FakeTracer, exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    assert tracer.flush_observers(5.0)
    spans = exporter.get_finished_spans()
    parents = [s for s in spans if s.name.startswith(("chat ", "attribute "))]
    assert len(parents) == 1, [s.name for s in spans]
    children = sorted((s for s in spans if s.name == A.SENTENCE_SPAN_NAME), key=lambda s: s.start_time or 0)
    return parents[0], children


def test_generation_span_with_a_child_per_sentence(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider)])
    answer = tracer.generate(sources=[], question="Where is the Eiffel Tower?")
    parent, children = _run(tracer, span_exporter)

    assert parent.name == f"chat {MODEL}"
    attrs = dict(parent.attributes or {})
    assert attrs[A.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[A.GEN_AI_REQUEST_MODEL] == MODEL
    assert attrs[A.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == answer.prompt_tokens
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == answer.generated_tokens
    assert attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert attrs[A.OPENINFERENCE_SPAN_KIND] == "LLM"
    assert attrs[A.LLM_TOKEN_COUNT_COMPLETION] == 22
    assert attrs[A.OMNITRACE_SENTENCE_COUNT] == 2
    assert parent.status.status_code is StatusCode.OK

    assert [c.attributes[A.OMNITRACE_SENTENCE_INDEX] for c in children] == [0, 1]  # type: ignore[index]
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == parent.context.trace_id
        assert child.attributes[A.OPENINFERENCE_SPAN_KIND] == "RETRIEVER"  # type: ignore[index]
        assert child.attributes[A.OMNITRACE_RUN_ID] == attrs[A.OMNITRACE_RUN_ID]  # type: ignore[index]
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time  # type: ignore[operator]
    # citation counts per sentence
    first, second = (dict(c.attributes or {}) for c in children)
    assert first[A.OMNITRACE_SENTENCE_CITATION_COUNT] == 2
    assert sorted(
        k for k in first if k.startswith("retrieval.documents.") and k.endswith(".document.id")
    ) == [
        "retrieval.documents.0.document.id",
        "retrieval.documents.1.document.id",
    ]
    assert second[A.OMNITRACE_SENTENCE_CITATION_COUNT] == 0
    assert second[A.OMNITRACE_SENTENCE_GROUNDED] is False
    assert not any(k.startswith("retrieval.documents.") for k in second)


def test_content_is_off_by_default(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider)])
    answer = tracer.generate(sources=[], question="Where is the Eiffel Tower?")
    tracer.flush_observers()
    secrets = [
        answer.text,
        "Where is the Eiffel Tower?",
        *SOURCES.values(),
        *(s.text for s in answer.sentences),
    ]
    for span in span_exporter.get_finished_spans():
        values = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()})
        assert not [s for s in secrets if s in values], span.name
        assert (span.attributes or {})[A.OMNITRACE_RUN_ID]


def test_content_capture_by_flag_and_env(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider, capture_content=True)])
    answer = tracer.generate(sources=[], question="Where is the Eiffel Tower?")
    parent, children = _run(tracer, span_exporter)
    assert (parent.attributes or {})[A.OUTPUT_VALUE] == answer.text
    assert (children[0].attributes or {})[
        "retrieval.documents.0.document.content"
    ] == "The Eiffel Tower is in Paris."

    span_exporter.clear()
    monkeypatch.setenv("OMNITRACE_OTEL_CAPTURE_CONTENT", "true")
    observer = OTelObserver(tracer_provider=tracer_provider)
    assert observer.capture_content is True
    tracer2 = FakeTracer(observers=[observer])
    tracer2.generate(sources=[], question="q?")
    parent2, _ = _run(tracer2, span_exporter)
    assert json.loads(str((parent2.attributes or {})[A.INPUT_VALUE]))["question"] == "q?"


def test_attribute_span_name_and_operation(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider)])
    tracer.attribute(sources=[], question="q", response="r")
    parent, children = _run(tracer, span_exporter)
    assert parent.name == f"attribute {MODEL}"
    assert (parent.attributes or {})[A.GEN_AI_OPERATION_NAME] == "attribute"
    assert A.GEN_AI_RESPONSE_FINISH_REASONS not in (parent.attributes or {})
    assert len(children) == 2


def test_spans_nest_under_the_callers_current_span(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider)])
    app = tracer_provider.get_tracer("app")
    with app.start_as_current_span("langchain run") as outer:
        tracer.generate(sources=[], question="q")
    parent, children = _run(tracer, span_exporter)
    assert parent.parent is not None
    assert parent.parent.span_id == outer.get_span_context().span_id
    assert {c.context.trace_id for c in children} == {outer.get_span_context().trace_id}


def test_error_sets_status_records_exception_and_reaches_caller(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider)], fail_after=1)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        tracer.generate(sources=[], question="q")
    parent, children = _run(tracer, span_exporter)
    assert parent.status.status_code is StatusCode.ERROR
    assert "decoder exploded" in (parent.status.description or "")
    assert (parent.attributes or {})[A.ERROR_TYPE] == "RuntimeError"
    assert [e.name for e in parent.events] == ["exception"]
    assert len(children) == 1  # the sentence completed before the failure is kept


def test_abandoned_stream_span_is_ended_with_an_error(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    """The consumer stops reading: the span ends with ERROR (at the latest on shutdown)."""
    observer = OTelObserver(tracer_provider=tracer_provider)
    tracer = FakeTracer(observers=[observer])
    events = tracer.stream(sources=[], question="q")
    next(events)  # consumer reads one event and walks away
    events.close()
    tracer.flush_observers()
    observer.shutdown()
    assert observer.open_runs == 0
    (parent,) = [s for s in span_exporter.get_finished_spans() if s.name.startswith("chat")]
    assert parent.status.status_code is StatusCode.ERROR


def test_open_runs_are_bounded(tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter) -> None:
    observer = OTelObserver(tracer_provider=tracer_provider, max_open_runs=2)
    infos = [
        GenerationInfo(
            run_id=f"r{i}",
            operation="chat",
            model=MODEL,
            signal="attmean",
            source_ids=(),
            question="q",
            prompt_tokens=1,
        )
        for i in range(3)
    ]
    for info in infos:  # three starts whose end never comes
        observer.on_generation_start(info)
    assert observer.open_runs == 2
    (ended,) = span_exporter.get_finished_spans()
    assert (ended.attributes or {})[A.OMNITRACE_RUN_ID] == "r0"
    assert "abandoned" in (ended.status.description or "")
    observer.on_generation_end(infos[2], make_answer())
    assert observer.open_runs == 1


def test_many_generations_each_get_their_own_tree(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(make_answer(), observers=[OTelObserver(tracer_provider=tracer_provider)])
    for _ in range(5):
        tracer.generate(sources=[], question="q")
    tracer.flush_observers()
    spans = span_exporter.get_finished_spans()
    parents = {s.context.span_id for s in spans if s.name.startswith("chat")}
    assert len(parents) == 5
    children = [s for s in spans if s.name == A.SENTENCE_SPAN_NAME]
    assert len(children) == 10
    assert {c.parent.span_id for c in children if c.parent} == parents
