"""OTel spans and structlog events from one tracer at once (two observers, two delivery threads)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from omnitrace_integrations.logging import StructlogObserver
from omnitrace_integrations.otel import OTelObserver
from tests.otel.otel_fakes import FakeTracer


def test_spans_and_logs_from_the_same_generations(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=tracer_provider), StructlogObserver()])
    runs = 30
    with capture_logs() as logs:
        for _ in range(runs):
            tracer.generate(sources=[], question="q")
        assert tracer.flush_observers(10.0)
    spans = span_exporter.get_finished_spans()
    assert len([s for s in spans if s.name.startswith("chat")]) == runs
    assert len([s for s in spans if s.name == "cite sentence"]) == 2 * runs
    names = [e["event"] for e in logs]
    assert names.count("generation_started") == runs
    assert names.count("generation_finished") == runs
    assert names.count("sentence_cited") == runs and names.count("curation_empty") == runs
    run_ids = {e["run_id"] for e in logs}
    assert run_ids == {s.attributes["omnitrace.run_id"] for s in spans if s.name.startswith("chat")}  # type: ignore[index]


def test_a_slow_observer_does_not_cost_spans(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    """Each observer's callbacks must run in their own copy of the caller's context: a context
    object can be entered by one thread at a time, so sharing one copy between delivery threads
    makes a busy observer's neighbours fail with ``RuntimeError: cannot enter context``."""
    import time

    from omnitrace_core.observers import TraceObserver

    class Slow(TraceObserver):
        def on_generation_start(self, info: object) -> None:
            time.sleep(0.2)

    tracer = FakeTracer(observers=[Slow(), OTelObserver(tracer_provider=tracer_provider)])
    tracer.generate(sources=[], question="q")
    assert tracer.flush_observers(10.0)
    assert sorted(s.name for s in span_exporter.get_finished_spans()) == [
        "chat fake-135m",
        "cite sentence",
        "cite sentence",
    ]
