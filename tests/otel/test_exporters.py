"""A failing or slow exporter never loses the answer nor blocks generation."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from omnitrace_integrations.otel import OTelObserver
from omnitrace_integrations.otel.exporters import LoggedSpanExporter
from tests.otel.otel_fakes import FakeTracer, make_answer


class FailingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise ConnectionError("collector unreachable")

    def shutdown(self) -> None:
        pass


class SlowExporter(InMemorySpanExporter):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(self.delay_s)
        return super().export(spans)


@pytest.mark.parametrize("processor", [SimpleSpanProcessor, BatchSpanProcessor])
def test_failing_exporter_loses_no_answer(processor: type) -> None:
    exporter = FailingExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor(exporter))
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=provider)])
    answers = [tracer.generate(sources=[], question="q") for _ in range(3)]
    assert [a.text for a in answers] == [make_answer().text] * 3
    assert tracer.flush_observers()
    provider.force_flush()
    assert exporter.calls >= 1  # the exporter really was called and really failed
    provider.shutdown()


@pytest.mark.parametrize("processor", [SimpleSpanProcessor, BatchSpanProcessor])
def test_slow_exporter_does_not_block_generation(processor: type) -> None:
    exporter = SlowExporter(delay_s=0.5)
    provider = TracerProvider()
    provider.add_span_processor(processor(exporter))
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=provider)])
    t0 = time.perf_counter()
    answers = [tracer.generate(sources=[], question="q") for _ in range(4)]
    elapsed = time.perf_counter() - t0
    # 4 generations x 3 spans x 0.5 s = 6 s of exporting with the simple processor
    assert elapsed < 1.0, elapsed
    assert len(answers) == 4
    assert tracer.flush_observers(timeout=30.0)
    provider.force_flush()
    assert len(exporter.get_finished_spans()) == 12  # nothing dropped, only late
    provider.shutdown()


def test_logged_exporter_reports_failures_once_per_interval() -> None:
    failing = FailingExporter()
    exporter = LoggedSpanExporter(failing, min_interval_s=60.0)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=provider)])
    with capture_logs() as logs:
        tracer.generate(sources=[], question="q")
        tracer.generate(sources=[], question="q")
        assert tracer.flush_observers()
    failures = [e for e in logs if e["event"] == "exporter_failed"]
    assert failures == [
        {
            "event": "exporter_failed",
            "log_level": "error",
            "exporter": "FailingExporter",
            "spans_dropped": 1,
            "reason": "ConnectionError: collector unreachable",
            "suppressed_since_last": 0,
        }
    ]
    assert failing.calls == 6
    provider.shutdown()


def test_logged_exporter_passes_success_through() -> None:
    inner = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LoggedSpanExporter(inner)))
    tracer = FakeTracer(observers=[OTelObserver(tracer_provider=provider)])
    with capture_logs() as logs:
        tracer.generate(sources=[], question="q")
        tracer.flush_observers()
    assert len(inner.get_finished_spans()) == 3
    assert logs == []
