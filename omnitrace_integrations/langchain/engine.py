"""Running the tracer for LangChain: shared loading, generation kwargs, untraced chat, async bridge.

Nothing here imports LangChain: the chat model turns these events into messages.

- :func:`shared_tracer` loads a model once per process and key (thread-safe), so many
  ``ChatOmniTrace`` instances over one model share its weights.
- :func:`traced_events` runs :meth:`Tracer.stream` (sources given) and
  :func:`plain_events` answers without sources (no citations), both yielding
  ``("delta", str)``, ``("sentence", SentenceAttribution)`` and finally ``("final", Outcome)``.
- :func:`aiter_events` runs either in a worker thread and hands events to the event loop, so
  async callers never block it; cancelling stops decoding at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omnitrace_core import (
    FinalEvent,
    SentenceEvent,
    TextDelta,
    TracedAnswer,
    Tracer,
    TracerConfig,
)
from omnitrace_core.sources import Source
from omnitrace_core.tools import ToolSpec

logger = logging.getLogger("omnitrace.langchain")

Event = tuple[str, Any]

_TRACERS: dict[tuple[Any, ...], Tracer] = {}
_TRACERS_LOCK = threading.Lock()


def shared_tracer(
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
) -> Tracer:
    """Load ``name_or_path`` once per process (per device / dtype), thread-safe."""
    key = (name_or_path, device, dtype, device_map)
    tracer = _TRACERS.get(key)
    if tracer is not None:
        return tracer
    with _TRACERS_LOCK:
        tracer = _TRACERS.get(key)
        if tracer is None:
            tracer = Tracer.from_pretrained(
                name_or_path, device=device, dtype=dtype, device_map=device_map
            )
            _TRACERS[key] = tracer
    return tracer


@dataclass(frozen=True)
class Outcome:
    """The end of one generation.

    Attributes:
        text: The answer text.
        answer: The core result when sources were given (None for an untraced answer).
        prompt_tokens: Prompt length in tokens.
        generated_tokens: Generated tokens.
        finish_reason: ``stop`` or ``length``.
        model: Model name.
    """

    text: str
    answer: TracedAnswer | None
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    model: str

    @classmethod
    def from_answer(cls, answer: TracedAnswer, *, traced: bool = True) -> Outcome:
        """The outcome of a core result; ``traced=False`` (an answer without sources) keeps
        its text and usage but not the result itself, so the message carries no citations."""
        return cls(
            text=answer.text,
            answer=answer if traced else None,
            prompt_tokens=answer.prompt_tokens,
            generated_tokens=answer.generated_tokens,
            finish_reason=answer.finish_reason or "stop",
            model=answer.model,
        )


def traced_events(
    tracer: Any,
    sources: list[Source],
    question: str,
    config: TracerConfig | None,
    gen: dict[str, Any],
) -> Iterator[Event]:
    """Run ``tracer.stream`` and translate its events."""
    for event in tracer.stream(sources, question, config=config, **gen):
        if isinstance(event, TextDelta):
            yield ("delta", event.text)
        elif isinstance(event, SentenceEvent):
            yield ("sentence", event.sentence)
        elif isinstance(event, FinalEvent):
            yield ("final", Outcome.from_answer(event.answer))


def plain_events(
    tracer: Any,
    turns: list[dict[str, Any]],
    gen: dict[str, Any],
    tools: list[ToolSpec] | None = None,
    parallel_tool_calls: bool = True,
    tool_choice: str | None = None,
) -> Iterator[Event]:
    """Answer a conversation without sources (no attribution) through :meth:`Tracer.chat`,
    streaming text deltas; observers see it (a span per call). ``tools``: shown to the model
    (chat template or fallback text); ``tool_choice`` decodes the reply under the tool-call
    grammar (the tracer builds it, so a server does the same for a ``RemoteTracer``)."""
    answer: TracedAnswer | None = None
    events = tracer.chat(
        turns,
        tools=tools or (),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        **gen,
    )
    for event in events:
        if isinstance(event, TextDelta):
            yield ("delta", event.text)
        elif isinstance(event, FinalEvent):
            answer = event.answer
    assert answer is not None
    yield ("final", Outcome.from_answer(answer, traced=False))


def remote_plain_events(tracer: Any, turns: list[dict[str, str]], gen: dict[str, Any]) -> Iterator[Event]:
    """Answer a conversation without sources on an ``omnitrace serve`` server (``RemoteTracer``)."""
    from omnitrace_integrations.serving.plain import PlainFinal

    for event in tracer.chat_stream(turns, **gen):
        if isinstance(event, TextDelta):
            yield ("delta", event.text)
        elif isinstance(event, PlainFinal):
            yield (
                "final",
                Outcome(
                    event.text,
                    None,
                    event.prompt_tokens,
                    event.generated_tokens,
                    event.finish_reason,
                    event.model,
                ),
            )


async def aiter_events(
    make: Callable[[], Iterator[Event]], cancel: threading.Event
) -> AsyncGenerator[Event, None]:
    """Iterate ``make()`` in a worker thread, handing events to the running loop.

    The event loop is never blocked. If the consumer stops early (``break``, cancellation),
    ``cancel`` is set so decoding ends at the next token, and the worker thread is joined
    (off the loop) before returning, so no thread is leaked.
    """
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    done = object()

    def push(item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(out.put_nowait, item)

    def work() -> None:
        iterator = make()
        try:
            for event in iterator:
                if cancel.is_set():
                    break
                push(("event", event))
        except BaseException as exc:
            push(("error", exc))
        finally:
            with contextlib.suppress(Exception):
                iterator.close()  # type: ignore[attr-defined]
            push(("done", done))

    thread = threading.Thread(target=work, name="omnitrace-async-bridge", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await out.get()
            if kind == "done":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()
        if thread.is_alive():
            await asyncio.shield(asyncio.to_thread(thread.join))
