"""Spans exported over OTLP/HTTP to a real local Arize Phoenix and read back from its REST API.

Skipped when ``arize-phoenix`` is not installed; deselect with ``-m "not phoenix_server"``
(not ``phoenix``: arize-phoenix ships a pytest plugin that owns that marker name).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omnitrace_core import Tracer

pytest.importorskip("phoenix")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from omnitrace_integrations.otel import OmniTraceInstrumentor
from omnitrace_integrations.otel.phoenix import local_phoenix, otlp_tracer_provider, wait_for_spans

pytestmark = pytest.mark.phoenix_server
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "otel_phoenix.py"


@pytest.fixture(scope="module")
def phoenix_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from omnitrace_integrations.otel.phoenix import _free_port

    log = tmp_path_factory.mktemp("phoenix") / "phoenix.log"
    with local_phoenix(port=_free_port(), log_path=log) as url:
        yield url


def test_tiny_model_spans_arrive_in_phoenix(
    phoenix_url: str, tiny_model: Any, tiny_tokenizer: Any, sources: list[Any]
) -> None:
    provider = otlp_tracer_provider(phoenix_url, project="tiny")
    instrumentor = OmniTraceInstrumentor()
    instrumentor.instrument(tracer_provider=provider, capture_content=True)
    try:
        tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
        answer = tracer.attribute(
            sources, "How tall?", "The lighthouse stands 42 metres tall. It was founded in 1905."
        )
        assert tracer.flush_observers(10.0)
    finally:
        instrumentor.uninstrument()
        provider.force_flush()
        provider.shutdown()
    spans = wait_for_spans(phoenix_url, "tiny", count=1 + len(answer.sentences))
    (chat,) = [s for s in spans if s["name"] == "attribute tiny-llama"]
    assert chat["span_kind"] == "LLM"
    assert chat["status_code"] == "OK"
    attrs = chat["attributes"]
    assert attrs["gen_ai.operation.name"] == "attribute"
    assert attrs["gen_ai.usage.output_tokens"] == answer.generated_tokens
    assert attrs["omnitrace.sentence_count"] == len(answer.sentences)
    assert attrs["output.value"] == answer.text
    children = sorted(
        (s for s in spans if s["name"] == "cite sentence"),
        key=lambda s: s["attributes"]["omnitrace.sentence.index"],
    )
    assert len(children) == len(answer.sentences)
    for span, sentence in zip(children, answer.sentences, strict=True):
        a = span["attributes"]
        assert span["span_kind"] == "RETRIEVER"
        assert span["parent_id"] == chat["context"]["span_id"]
        assert a["omnitrace.sentence.citation_count"] == len(sentence.citations)
        for k, c in enumerate(sentence.citations):
            assert a[f"retrieval.documents.{k}.document.id"] == c.unit_id
            assert a[f"retrieval.documents.{k}.document.score"] == pytest.approx(c.score)
            assert a[f"retrieval.documents.{k}.document.content"] == c.cited_text
            # Phoenix parses the JSON metadata and returns it flattened
            assert a[f"retrieval.documents.{k}.document.metadata.source_id"] == c.source_id
            assert a[f"retrieval.documents.{k}.document.metadata.char_end"] == c.char_end


@pytest.mark.model
def test_example_on_packaged_model(phoenix_url: str) -> None:
    spec = importlib.util.spec_from_file_location("otel_phoenix_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    answer = example.run_traced_generation(phoenix_url, "example", max_new_tokens=32)
    spans = wait_for_spans(phoenix_url, "example", count=2 + len(answer.sentences))
    assert example.check_spans(spans, answer) == []
