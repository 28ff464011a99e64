"""One generation at a time per worker, a bounded wait queue, and a thread-to-loop event pump.

- :class:`Scheduler`: a request takes the single model slot or waits in a queue of at most
  ``queue_size``; one more is refused at once (:class:`QueueFull` -> 429 + ``Retry-After``), and
  waiting past the request's deadline raises :class:`QueueTimeout` (408). Never a hang.
- :func:`pump`: runs a blocking event iterator (``Tracer.stream``) in a worker thread and hands
  its events to the event loop. The slot is released by the worker thread itself when the
  iterator has really finished, so a cancelled request (client gone) never lets a second
  generation start while the first still decodes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from omnitrace_integrations.serving.metrics import ServerMetrics


class QueueFull(Exception):
    """The wait queue is full."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited for the model."""




class Scheduler:
    """The model slot (one generation at a time) and its bounded FIFO wait queue.

    Runs on the event loop (no locks). A released slot is handed straight to the longest waiter,
    so a newcomer never jumps the queue; a waiter that gives up (deadline, client gone) leaves
    the queue, and if the slot was handed to it in that instant it passes the slot on.
    """

    def __init__(self, queue_size: int, metrics: ServerMetrics) -> None:
        self.queue_size = queue_size
        self.metrics = metrics
        self.busy = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _gauge(self) -> None:
        self.metrics.queue_depth.set(len(self._waiters))
        self.metrics.in_progress.set(1 if self.busy else 0)

    async def acquire(self, deadline: float) -> None:
        """Take the slot, waiting in the queue until ``deadline`` (``time.monotonic()``).

        Raises:
            QueueFull: the slot is busy and ``queue_size`` requests already wait.
            QueueTimeout: the deadline passed while waiting.
        """
        if not self.busy and not self._waiters:
            self.busy = True
            self._gauge()
            return
        if len(self._waiters) >= self.queue_size:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._gauge()
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
        except BaseException as exc:  # the deadline, or the request was cancelled
            if fut.done() and not fut.cancelled():
                self._hand_over()  # it was handed to us just now: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            self._gauge()
            if isinstance(exc, TimeoutError):
                raise QueueTimeout from exc
            raise
        self._gauge()

    def _hand_over(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot stays busy: it now belongs to that waiter
                self._gauge()
                return
        self.busy = False
        self._gauge()

    async def release(self) -> None:
        """Free the slot (or hand it to the next waiter)."""
        self._hand_over()


async def pump(
    make: Callable[[], Iterator[Any]],
    cancel: threading.Event,
    on_done: Callable[[], Any],
    context: contextvars.Context | None = None,
) -> AsyncGenerator[Any, None]:
    """Iterate ``make()`` in a worker thread; yield its events on the loop.

    ``on_done`` (a coroutine function) is scheduled on the loop once the worker has finished,
    whatever happened to the consumer. Stopping early (``aclose``, cancellation) sets
    ``cancel`` so decoding ends at the next token. ``context`` (e.g. one carrying the caller's
    OpenTelemetry trace context) is the worker's context.
    """
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def push(item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(out.put_nowait, item)

    def work() -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = make()
            for event in iterator:
                push(("event", event))
                if cancel.is_set():
                    break
        except BaseException as exc:
            push(("error", exc))
        finally:
            if iterator is not None:
                with contextlib.suppress(Exception):
                    iterator.close()  # type: ignore[attr-defined]
            push(("done", None))
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(on_done(), loop)

    ctx = context or contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(work,), name="omnitrace-serve-generation", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await out.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()
