"""Observer hooks: let integrations (OpenTelemetry, logging, grounding) watch generations.

Observers are isolated from the answer. Each observer gets its own delivery thread, so one
that raises or hangs never breaks, delays or loses a generation: an exception is logged once
per observer and kind (then at most once a minute), a hang only backs up that observer's own
queue. Every callback runs inside a copy of the *caller's* context (``contextvars``), so an
OpenTelemetry observer sees the span that was current when ``generate`` was called.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnitrace_core.log import get_logger
from omnitrace_core.results import SentenceAttribution, TracedAnswer

logger = get_logger()


@dataclass(frozen=True)
class GenerationInfo:
    """What is known when a generation starts.

    Attributes:
        run_id: Unique id of this generation (shared by all its events).
        operation: ``chat`` (decoded here) or ``attribute`` (teacher-forced response).
        model: Model name.
        signal: Signal name.
        source_ids: The sources' ids, in prompt order.
        question: The question (observers decide whether to record content).
        prompt_tokens: Prompt length in tokens.
        request: Generation parameters (max_new_tokens, sampling...).
        sources: id -> text of each source (content; record only when content capture is on).
        started_at: ``time.time()`` at start.
    """

    run_id: str
    operation: str
    model: str
    signal: str
    source_ids: tuple[str, ...]
    question: str
    prompt_tokens: int
    request: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


def new_run_id() -> str:
    return uuid.uuid4().hex


class TraceObserver:
    """Base observer: override the events you need (all default to no-ops)."""

    def on_generation_start(self, info: GenerationInfo) -> None:
        """A generation (or attribution) started."""

    def on_sentence(self, info: GenerationInfo, sentence: SentenceAttribution) -> None:
        """A sentence is complete and cited."""

    def on_generation_end(self, info: GenerationInfo, answer: TracedAnswer) -> None:
        """The whole result is ready."""

    def on_generation_error(self, info: GenerationInfo, error: BaseException) -> None:
        """Generation failed (the exception is re-raised to the caller after this)."""


class _Delivery:
    """One observer's queue and delivery thread."""

    def __init__(self, observer: TraceObserver) -> None:
        self.observer = observer
        self.queue: queue.Queue[tuple[contextvars.Context, Callable[[], None], str] | None] = queue.Queue()
        self.thread = threading.Thread(
            target=self._run, name=f"omnitrace-observer-{type(observer).__name__}", daemon=True
        )
        self._last_logged: dict[str, float] = {}
        self.contexts: dict[int, contextvars.Context] = {}
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                return
            ctx, call, kind = item
            try:
                ctx.run(call)
            except Exception as exc:  # isolate: log, rate-limited, and carry on
                now = time.monotonic()
                if now - self._last_logged.get(kind, -1e9) >= 60.0:
                    self._last_logged[kind] = now
                    logger.error(
                        "observer_failed",
                        observer=type(self.observer).__name__,
                        kind=kind,
                        error=repr(exc),
                        note="answer unaffected; this kind is logged at most once a minute",
                    )
            finally:
                self.queue.task_done()


class ObserverHub:
    """Fans events out to observers without ever blocking or failing the caller."""

    def __init__(self) -> None:
        self._deliveries: list[_Delivery] = []
        self._lock = threading.Lock()

    def add(self, observer: TraceObserver) -> None:
        with self._lock:
            if all(d.observer is not observer for d in self._deliveries):
                self._deliveries.append(_Delivery(observer))

    def remove(self, observer: TraceObserver) -> None:
        with self._lock:
            for d in self._deliveries:
                if d.observer is observer:
                    d.queue.put(None)
            self._deliveries = [d for d in self._deliveries if d.observer is not observer]

    @property
    def observers(self) -> list[TraceObserver]:
        return [d.observer for d in self._deliveries]

    def emit(self, ctx: contextvars.Context, kind: str, *args: Any) -> None:
        """Queue ``kind`` for every observer, each in its own copy of ``ctx`` (one per run).

        A context can be entered by one thread at a time, so each observer's delivery thread
        gets a private copy, reused for all events of the same generation.
        """
        last = kind in ("on_generation_end", "on_generation_error")
        for d in list(self._deliveries):
            method = getattr(d.observer, kind, None)
            if method is None:
                continue
            with self._lock:
                own = d.contexts.pop(id(ctx), None) if last else d.contexts.setdefault(id(ctx), ctx.copy())
            d.queue.put((own or ctx.copy(), _bind(method, args), kind))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was delivered (or ``timeout``); True if all were."""
        deadline = time.monotonic() + timeout
        for d in list(self._deliveries):
            while d.queue.unfinished_tasks:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)
        return True


def _bind(method: Callable[..., None], args: tuple[Any, ...]) -> Callable[[], None]:
    return lambda: method(*args)
