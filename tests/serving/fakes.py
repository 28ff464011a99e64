"""Tracer stand-ins for the server tests: the tiny model's tokenizer and config, controlled timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from omnitrace_core import TextDelta


class GatedTracer:
    """A real (tiny) tracer whose ``stream`` and ``generate_batch`` wait for ``gate`` before
    decoding.

    ``started`` is set when a generation begins, so a test knows the slot is taken.
    ``generate_batch`` also waits for ``batch_gate`` (open unless a test closes it) after setting
    ``batch_started``, and records each batch's size in ``batch_sizes`` and its call time and
    keyword arguments in ``batch_calls``.
    """

    def __init__(self, tracer: Any) -> None:
        self.inner = tracer
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batch_gate = threading.Event()
        self.batch_gate.set()
        self.batch_started = threading.Event()
        self.batch_sizes: list[int] = []
        self.batch_calls: list[tuple[float, dict[str, Any]]] = []
        self.streams = 0
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._lock:
            self.running += 1
            self.streams += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.started.set()
            if not self.gate.wait(30):
                raise TimeoutError("the test never opened the gate")
            yield from self.inner.stream(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def generate_batch(self, requests: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.running += 1
            self.batch_sizes.append(len(requests))
            self.batch_calls.append((time.monotonic(), kwargs))
            self.max_running = max(self.max_running, self.running)
        try:
            self.started.set()
            self.batch_started.set()
            if not (self.gate.wait(30) and self.batch_gate.wait(30)):
                raise TimeoutError("the test never opened the gate")
            return self.inner.generate_batch(requests, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


class EndlessTracer:
    """Streams a text delta every ``interval`` seconds until it is closed (a client disconnect);
    ``chat`` (a request without sources) streams the same way."""

    def __init__(self, tracer: Any, interval: float = 0.02) -> None:
        self.inner = tracer
        self.interval = interval
        self.deltas = 0
        self.closed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            while True:
                self.deltas += 1
                yield TextDelta(text="word ", token_index=self.deltas - 1)
                time.sleep(self.interval)
        finally:
            self.closed.set()

    def chat(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self.stream(*args, **kwargs)


def tiny_tracer_factory() -> Any:
    """The tiny random Llama as a tracer, built in the process that calls it (a Ray replica)."""
    from omnitrace_core import Tracer
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return Tracer(build_tiny_model(len(tokenizer)), tokenizer, model_name="tiny-llama")


class FailingTracer:
    """Fails inside the generation: at once, or after ``after`` text deltas (mid-stream)."""

    def __init__(self, tracer: Any, after: int = 0) -> None:
        self.inner = tracer
        self.after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for k in range(self.after):
            yield TextDelta(text="partial ", token_index=k)
        raise RuntimeError("the decoder blew up")


class StuckBatchTracer:
    """``generate_batch`` decodes nothing and returns only when its stopping criteria say stop
    (the server's cancel event): shows whether a batch whose clients all left is stopped."""

    def __init__(self, tracer: Any) -> None:
        self.inner = tracer
        self.batch_started = threading.Event()
        self.stopped = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate_batch(self, requests: Any, **kwargs: Any) -> Any:
        import torch

        self.batch_started.set()
        ids = torch.zeros((len(requests), 1), dtype=torch.long)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(bool(c(ids, None).all()) for c in kwargs["stopping_criteria"]):
                self.stopped.set()
                break
            time.sleep(0.02)
        raise RuntimeError("stopped before any answer")
