"""Fixtures for the OpenTelemetry tests: in-memory exporters and a fake tracer (see ``otel_fakes``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otel.otel_fakes import FakeTracer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "phoenix_server: starts a local Arize Phoenix server (needs arize-phoenix; slower)"
    )


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def fake_tracer() -> FakeTracer:
    return FakeTracer()


@pytest.fixture(autouse=True)
def _no_content_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Content capture must be off unless a test turns it on."""
    from omnitrace_integrations.otel.content import CAPTURE_CONTENT_ENV, GENAI_CAPTURE_CONTENT_ENV

    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    monkeypatch.delenv(GENAI_CAPTURE_CONTENT_ENV, raising=False)
