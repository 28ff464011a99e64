"""OmniTraceInstrumentor: instrument / uninstrument every Tracer, OpenInference style."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omnitrace_integrations.otel import OmniTraceInstrumentor, OTelObserver
from tests.otel.otel_fakes import MODEL, FakeTracer


@pytest.fixture
def instrumentor() -> Iterator[OmniTraceInstrumentor]:
    inst = OmniTraceInstrumentor()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


def _names(exporter: InMemorySpanExporter) -> list[str]:
    return sorted(s.name for s in exporter.get_finished_spans())


def test_instrument_traces_tracers_created_before_and_after(
    instrumentor: OmniTraceInstrumentor, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    before = FakeTracer()
    instrumentor.instrument(tracer_provider=tracer_provider)
    after = FakeTracer()
    before.generate(sources=[], question="q")
    after.generate(sources=[], question="q")
    list(after.stream(sources=[], question="q"))
    after.attribute(sources=[], question="q", response="r")
    for t in (before, after):
        assert t.flush_observers()
    assert _names(span_exporter) == sorted(
        [f"chat {MODEL}"] * 3 + [f"attribute {MODEL}"] + ["cite sentence"] * 8
    )
    assert isinstance(instrumentor.observer, OTelObserver)
    assert after.observers.observers == [instrumentor.observer]  # attached once, not per call


def test_uninstrument_stops_spans_and_detaches(
    instrumentor: OmniTraceInstrumentor, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    instrumentor.instrument(tracer_provider=tracer_provider)
    tracer = FakeTracer()
    tracer.generate(sources=[], question="q")
    tracer.flush_observers()
    count = len(span_exporter.get_finished_spans())
    assert count == 3
    instrumentor.uninstrument()
    assert tracer.observers.observers == []
    assert instrumentor.observer is None
    tracer.generate(sources=[], question="q")
    FakeTracer().generate(sources=[], question="q")
    tracer.flush_observers()
    assert len(span_exporter.get_finished_spans()) == count


def test_instrument_twice_is_a_no_op_and_content_flag_passes_through(
    instrumentor: OmniTraceInstrumentor, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    instrumentor.instrument(tracer_provider=tracer_provider, capture_content=True)
    first = instrumentor.observer
    instrumentor.instrument(tracer_provider=tracer_provider)
    assert instrumentor.observer is first
    assert first is not None and first.capture_content is True
    tracer = FakeTracer()
    answer = tracer.generate(sources=[], question="q")
    tracer.flush_observers()
    chat = next(s for s in span_exporter.get_finished_spans() if s.name.startswith("chat"))
    assert (chat.attributes or {})["output.value"] == answer.text


def test_lazy_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import sys

    import omnitrace_integrations.otel as otel_pkg

    real_import = builtins.__import__

    def no_otel(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("opentelemetry"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for mod in [m for m in sys.modules if m.startswith("omnitrace_integrations.otel.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(ImportError, match=r'pip install "omnitrace-integrations\[otel\]"'):
        _ = otel_pkg.OTelObserver
