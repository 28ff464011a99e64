"""An OmniTrace observer that turns generations and cited sentences into OpenTelemetry spans.

Usable on its own, without the instrumentor::

    tracer = Tracer.from_default(observers=[OTelObserver(tracer_provider=provider)])

Callbacks run on the observer's own delivery thread inside a copy of the caller's context, so
the generation span nests under whatever span was current when ``generate`` was called (a
LangChain or LlamaIndex run, a web request...). Sentence spans are children of the generation
span; each starts where the previous sentence ended, so the trace shows when each sentence was
decoded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from omnitrace_core.observers import GenerationInfo, TraceObserver
from omnitrace_core.results import SentenceAttribution, TracedAnswer
from omnitrace_integrations.otel import attributes as A
from omnitrace_integrations.otel.content import content_capture_enabled
from omnitrace_integrations.otel.spans import (
    generation_end_attributes,
    generation_name,
    generation_start_attributes,
    sentence_attributes,
)

_VERSION = "0.1.0"


@dataclass
class _Run:
    span: Span
    context: Any
    last_ns: int


class OTelObserver(TraceObserver):
    """Emits a ``chat {model}`` span per generation and a ``cite sentence`` child per sentence.

    Args:
        tracer_provider: Where spans go; ``None`` uses the global provider.
        capture_content: Record question, sources, answer, sentences and cited text. ``None``
            (default) reads ``OMNITRACE_OTEL_CAPTURE_CONTENT`` /
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``; off unless set.
        max_content_chars: Cut each recorded text to this many characters (``None``: no limit).
        max_open_runs: Generations whose end never arrives (a stream abandoned by its consumer)
            are ended with an error status once this many are open, so spans never pile up.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        capture_content: bool | None = None,
        max_content_chars: int | None = 4000,
        max_open_runs: int = 1024,
    ) -> None:
        self._tracer = trace.get_tracer(A.INSTRUMENTATION_SCOPE, _VERSION, tracer_provider=tracer_provider)
        self.capture_content = content_capture_enabled(capture_content)
        self.max_content_chars = max_content_chars
        self.max_open_runs = max_open_runs
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()

    # -- observer events ---------------------------------------------------------------------------
    def on_generation_start(self, info: GenerationInfo) -> None:
        start_ns = int(info.started_at * 1e9)
        span = self._tracer.start_span(
            generation_name(info),
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes=generation_start_attributes(
                info, capture_content=self.capture_content, max_content_chars=self.max_content_chars
            ),
        )
        with self._lock:
            self._runs[info.run_id] = _Run(span, trace.set_span_in_context(span), start_ns)
            evicted = self._evict()
        for run in evicted:
            run.span.set_status(Status(StatusCode.ERROR, "generation abandoned: no end event"))
            run.span.end()

    def on_sentence(self, info: GenerationInfo, sentence: SentenceAttribution) -> None:
        with self._lock:
            run = self._runs.get(info.run_id)
        if run is None:
            return
        now = time.time_ns()
        child = self._tracer.start_span(
            A.SENTENCE_SPAN_NAME,
            context=run.context,
            kind=SpanKind.INTERNAL,
            start_time=min(run.last_ns, now),
            attributes=sentence_attributes(
                info, sentence, capture_content=self.capture_content, max_content_chars=self.max_content_chars
            ),
        )
        child.set_status(Status(StatusCode.OK))
        child.end(end_time=now)
        run.last_ns = now

    def on_generation_end(self, info: GenerationInfo, answer: TracedAnswer) -> None:
        run = self._pop(info.run_id)
        if run is None:
            return
        run.span.set_attributes(
            generation_end_attributes(
                answer, capture_content=self.capture_content, max_content_chars=self.max_content_chars
            )
        )
        run.span.set_status(Status(StatusCode.OK))
        run.span.end()

    def on_generation_error(self, info: GenerationInfo, error: BaseException) -> None:
        run = self._pop(info.run_id)
        if run is None:
            return
        run.span.record_exception(error)
        run.span.set_attribute(A.ERROR_TYPE, type(error).__qualname__)
        run.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        run.span.end()

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def open_runs(self) -> int:
        """Generations started whose end has not been seen yet."""
        with self._lock:
            return len(self._runs)

    def shutdown(self) -> None:
        """End every open generation span (with an error status saying it was cut short)."""
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            run.span.set_status(Status(StatusCode.ERROR, "observer shut down before the generation ended"))
            run.span.end()

    def _pop(self, run_id: str) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _evict(self) -> list[_Run]:
        evicted = []
        while len(self._runs) > self.max_open_runs:
            evicted.append(self._runs.popitem(last=False)[1])
        return evicted
