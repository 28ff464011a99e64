"""StructlogObserver events and the OpenTelemetry id processor (structlog.testing.capture_logs)."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from omnitrace_core import SentenceAttribution, TracedAnswer
from omnitrace_core.observers import GenerationInfo
from omnitrace_integrations.logging import StructlogObserver, add_otel_context, events
from tests.factories import make_answer, make_citation, make_sentence

INFO = GenerationInfo(
    run_id="run-1",
    operation="chat",
    model="fake-135m",
    signal="attmean",
    source_ids=("doc1", "doc2"),
    question="secret question?",
    prompt_tokens=100,
    request={"max_new_tokens": 16},
    sources={"doc1": "secret source one", "doc2": "secret source two"},
)


def _sentence(index: int, cited: bool) -> SentenceAttribution:
    citations = [make_citation("doc1", 0.83333, "secret source one")] if cited else []
    mass = {"doc1": 1.0} if cited else {}
    return make_sentence(index, "secret sentence.", citations=citations, token_end=4, source_mass=mass)


def _answer(errors: list[str] | None = None) -> TracedAnswer:
    return make_answer(
        [_sentence(0, True)],
        model="fake-135m",
        prompt_tokens=100,
        generated_tokens=8,
        errors=errors,
        timings={"total_s": 2.0, "first_token_s": 0.5},
    )


def test_generation_events_have_stable_names_and_fields() -> None:
    obs = StructlogObserver()
    with capture_logs() as logs:
        obs.on_generation_start(INFO)
        obs.on_sentence(INFO, _sentence(0, True))
        obs.on_generation_end(INFO, _answer())
    assert [(e["event"], e["log_level"]) for e in logs] == [
        (events.GENERATION_STARTED, "info"),
        (events.SENTENCE_CITED, "info"),
        (events.GENERATION_FINISHED, "info"),
    ]
    started, cited, finished = logs
    assert started["run_id"] == "run-1"
    assert started["source_ids"] == ["doc1", "doc2"]
    assert started["prompt_tokens"] == 100
    assert started["request"] == {"max_new_tokens": 16}
    assert cited["source_ids"] == ["doc1"]
    assert cited["unit_ids"] == ["doc1"]
    assert cited["scores"] == [0.8333]
    assert finished["generated_tokens"] == 8
    assert finished["seconds"] == 2.0
    assert finished["tokens_per_second"] == 4.0
    assert finished["grounded_sentences"] == 1
    assert finished["timings"] == {"total_s": 2.0, "first_token_s": 0.5}
    assert not [e for e in logs if "secret" in repr(e)]  # never content


def test_uncited_sentence_is_a_warning() -> None:
    with capture_logs() as logs:
        StructlogObserver().on_sentence(INFO, _sentence(3, False))
    assert logs == [
        {
            "event": events.CURATION_EMPTY,
            "log_level": "warning",
            "run_id": "run-1",
            "index": 3,
            "char_start": 0,
            "char_end": 16,
            "grounded": False,
            "source_mass": {},
        }
    ]


def test_degraded_answer_and_failure() -> None:
    obs = StructlogObserver()
    with capture_logs() as logs:
        obs.on_generation_end(INFO, _answer(errors=["curation failed: boom"]))
        obs.on_generation_error(INFO, ValueError("bad things"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        (events.GENERATION_FINISHED, "info"),
        (events.ATTRIBUTION_DEGRADED, "warning"),
        (events.GENERATION_FAILED, "error"),
    ]
    assert logs[1]["errors"] == ["curation failed: boom"]
    assert logs[2]["error_type"] == "ValueError"
    assert logs[2]["error"] == "bad things"


def test_library_does_not_configure_structlog_or_logging() -> None:
    import logging

    before = (structlog.get_config(), logging.getLogger().handlers[:], logging.getLogger().level)
    obs = StructlogObserver()
    with capture_logs():
        obs.on_generation_start(INFO)
    assert (structlog.get_config(), logging.getLogger().handlers[:], logging.getLogger().level) == before


def test_add_otel_context_puts_ids_of_current_span() -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("app") as span:
        record = add_otel_context(None, "info", {"event": "x"})
        ctx = span.get_span_context()
    assert record == {
        "event": "x",
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
    }
    assert add_otel_context(None, "info", {"event": "outside"}) == {"event": "outside"}


def test_add_otel_context_works_in_a_structlog_chain() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    captured: list[dict[str, object]] = []

    def keep(logger: object, name: str, event_dict: dict[str, object]) -> str:
        captured.append(dict(event_dict))
        return ""

    log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[add_otel_context, keep])
    with provider.get_tracer("t").start_as_current_span("app"):
        log.info("hello", a=1)
    assert set(captured[0]) == {"event", "a", "trace_id", "span_id"}
    assert len(str(captured[0]["trace_id"])) == 32
