"""One generation at a time per worker, a bounded wait queue, batching, and a thread-to-loop pump.

- :class:`Scheduler`: a request takes the single model slot or waits in a queue of at most
  ``queue_size``; one more is refused at once (:class:`QueueFull` -> 429 + ``Retry-After``), and
  waiting past the request's deadline raises :class:`QueueTimeout` (408). Never a hang.
- Batching: a request that :meth:`Tracer.generate_batch` can take waits with a
  :class:`BatchJob`. When the slot reaches such a request, :meth:`Scheduler.gather` also takes
  the waiting jobs with the same :attr:`BatchJob.key` (same config and generation options) out of
  the queue, and :meth:`Scheduler.launch` decodes them together in one worker thread that holds
  the slot; each job's answer arrives on its own future.
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
from collections.abc import AsyncGenerator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from omnitrace_integrations.serving.metrics import ServerMetrics


class QueueFull(Exception):
    """The wait queue is full."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited for the model."""


@dataclass(eq=False)
class BatchJob:
    """One request that may be decoded in a batch with others.

    Attributes:
        key: Requests batch together only when their keys are equal: the key holds everything
            ``generate_batch`` takes once for the whole batch (config, generation options).
        payload: What the batch function needs from this request (e.g. ``(sources, question)``).
        deadline: ``time.monotonic()`` by which the request must be answered.
        answer: Resolved with the request's result (or its exception) on the event loop.
        gone: The client went away: the job's answer is dropped when it arrives.
        batch: The batch the job runs in, once it was launched.
    """

    key: Hashable
    payload: Any
    deadline: float
    answer: asyncio.Future[Any]
    gone: bool = False
    batch: Batch | None = None


@dataclass(eq=False)
class Batch:
    """Jobs decoded together. ``cancel`` stops the decoding; it is set only once every job is
    gone, because stopping it early would cut the answers of the jobs still waiting."""

    jobs: list[BatchJob]
    cancel: threading.Event = field(default_factory=threading.Event)

    def leave(self, job: BatchJob) -> None:
        """``job``'s client went away: drop its answer; stop decoding if nobody is left."""
        job.gone = True
        if not job.answer.done():
            job.answer.cancel()
        if all(j.gone for j in self.jobs):
            self.cancel.set()


#: What a waiter's future resolves with when its job was taken into another request's batch
#: (``None``: the waiter now holds the slot itself).
JOINED = "joined"


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
        self._waiters: collections.deque[tuple[asyncio.Future[str | None], BatchJob | None]] = (
            collections.deque()
        )

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _gauge(self) -> None:
        self.metrics.queue_depth.set(len(self._waiters))
        self.metrics.in_progress.set(1 if self.busy else 0)

    async def acquire(self, deadline: float, job: BatchJob | None = None) -> bool:
        """Take the slot, waiting in the queue until ``deadline`` (``time.monotonic()``).

        Args:
            deadline: When to give up waiting.
            job: Given for a request that may be batched: another request holding the slot may
                then take it into its batch (:meth:`gather`) instead of handing the slot over.

        Returns:
            True when the caller holds the slot; False when ``job`` was taken into a batch (its
            answer will arrive on ``job.answer``; the caller must not release anything).

        Raises:
            QueueFull: the slot is busy and ``queue_size`` requests already wait.
            QueueTimeout: the deadline passed while waiting.
        """
        if not self.busy and not self._waiters:
            self.busy = True
            self._gauge()
            return True
        if len(self._waiters) >= self.queue_size:
            raise QueueFull
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        entry = (fut, job)
        self._waiters.append(entry)
        self._gauge()
        try:
            joined = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
        except BaseException as exc:  # the deadline, or the request was cancelled
            if fut.done() and not fut.cancelled():
                if fut.result() == JOINED:  # taken into a batch just now: drop its answer there
                    assert job is not None and job.batch is not None
                    job.batch.leave(job)
                else:
                    self._hand_over()  # the slot was handed to us just now: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            self._gauge()
            if isinstance(exc, TimeoutError):
                raise QueueTimeout from exc
            raise
        self._gauge()
        return joined != JOINED

    async def gather(self, head: BatchJob, max_size: int, wait_s: float) -> list[BatchJob]:
        """The batch led by ``head`` (whose request holds the slot): ``head`` and up to
        ``max_size - 1`` waiting jobs with its key, oldest first, taken out of the queue.

        When fewer than that wait, waits ``wait_s`` first (holding the slot) so that requests
        sent together (e.g. by concurrent clients) share one decoding. Waiters that cannot join
        (another key, not batchable) keep their place; the jobs taken ahead of them run in the
        same decoding as ``head``, so they wait about one generation longer at most.
        """
        if max_size > 1 and wait_s > 0 and self._matching(head) < max_size - 1:
            try:
                await asyncio.sleep(wait_s)
            except BaseException:
                self._hand_over()  # cancelled while holding the slot: pass it on
                raise
        taken: list[tuple[asyncio.Future[str | None], BatchJob]] = []
        for entry in list(self._waiters):
            if len(taken) >= max_size - 1:
                break
            fut, job = entry
            if job is None or job.key != head.key or fut.done():
                continue
            self._waiters.remove(entry)
            taken.append((fut, job))
        batch = Batch([head, *(job for _, job in taken)])
        for job in batch.jobs:
            job.batch = batch
        for fut, _ in taken:
            fut.set_result(JOINED)
        self._gauge()
        return batch.jobs

    def _matching(self, head: BatchJob) -> int:
        return sum(
            1 for fut, job in self._waiters if job is not None and job.key == head.key and not fut.done()
        )

    def _hand_over(self) -> None:
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot stays busy: it now belongs to that waiter
                self._gauge()
                return
        self.busy = False
        self._gauge()

    async def release(self) -> None:
        """Free the slot (or hand it to the next waiter)."""
        self._hand_over()

    def launch(
        self,
        batch: Batch,
        work: Callable[[Batch], Sequence[Any]],
        context: contextvars.Context | None = None,
    ) -> None:
        """Run ``work(batch)`` in a worker thread that holds the slot (taken by the batch's head).

        ``work`` returns one result per job, in order; a result that is an exception fails that
        job alone, an exception raised by ``work`` fails every job. Each job's ``answer`` future
        is resolved on the loop (a job that is gone is skipped), and the thread releases the slot
        once ``work`` has really returned, as :func:`pump` does.
        """
        loop = asyncio.get_running_loop()
        self.metrics.batch_size.observe(len(batch.jobs))

        def deliver(results: list[Any] | None, error: BaseException | None) -> None:
            for k, job in enumerate(batch.jobs):
                if job.answer.done():
                    continue
                result = error if results is None else results[k]
                if isinstance(result, BaseException):
                    job.answer.set_exception(result)
                else:
                    job.answer.set_result(result)

        def run() -> None:
            results: list[Any] | None = None
            error: BaseException | None = None
            try:
                results = list(work(batch))
                if len(results) != len(batch.jobs):
                    raise RuntimeError(
                        f"the batch returned {len(results)} results for {len(batch.jobs)} jobs"
                    )
            except BaseException as exc:
                results, error = None, exc
            finally:
                with contextlib.suppress(RuntimeError):  # loop closed
                    loop.call_soon_threadsafe(deliver, results, error)
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(self.release(), loop)

        ctx = context or contextvars.copy_context()
        threading.Thread(target=ctx.run, args=(run,), name="omnitrace-serve-batch", daemon=True).start()


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
