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
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omnitrace_core import (
    ContextLengthError,
    FinalEvent,
    SentenceEvent,
    TextDelta,
    TracedAnswer,
    Tracer,
    TracerConfig,
)
from omnitrace_core.sources import Source

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


class CancelCriteria:
    """A transformers stopping criterion that ends decoding once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def cancel_kwargs(event: threading.Event) -> dict[str, Any]:
    """Generation kwargs that stop decoding when ``event`` is set."""
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([CancelCriteria(event)])}


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
            a = event.answer
            yield (
                "final",
                Outcome(
                    text=a.text,
                    answer=a,
                    prompt_tokens=a.prompt_tokens,
                    generated_tokens=a.generated_tokens,
                    finish_reason=a.finish_reason or "stop",
                    model=a.model,
                ),
            )


def plain_events(tracer: Any, turns: list[dict[str, str]], gen: dict[str, Any]) -> Iterator[Event]:
    """Answer a conversation without sources (no attribution), streaming text deltas."""
    import torch

    tokenizer = tracer.tokenizer
    model = tracer.model
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    config = getattr(tracer, "config", None) or TracerConfig()
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.generation.max_new_tokens,
        "no_repeat_ngram_size": config.generation.no_repeat_ngram_size,
        "do_sample": config.generation.do_sample,
    }
    kwargs.update(gen)
    if not kwargs.get("do_sample"):
        for key in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(key, None)
    window = int(tracer.loaded.context_window) if hasattr(tracer, "loaded") else 1 << 30
    if len(input_ids) + int(kwargs["max_new_tokens"]) > window:
        raise ContextLengthError(
            f"prompt is {len(input_ids)} tokens and {kwargs['max_new_tokens']} new tokens are requested: "
            f"more than the model's context window of {window}. Shorten the conversation or lower max_tokens."
        )
    ids_q: queue.Queue[int | None] = queue.Queue()
    failure: list[BaseException] = []

    class _Streamer:
        seen_prompt = False

        def put(self, value: Any) -> None:
            if not self.seen_prompt:
                self.seen_prompt = True
                return
            for tok in value.reshape(-1).tolist():
                ids_q.put(int(tok))

        def end(self) -> None:
            ids_q.put(None)

    tensor = torch.tensor([input_ids], device=model.device)

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    input_ids=tensor,
                    attention_mask=torch.ones_like(tensor),
                    streamer=_Streamer(),
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    **kwargs,
                )
        except BaseException as exc:
            failure.append(exc)
        finally:
            ids_q.put(None)

    worker = threading.Thread(target=work, name="omnitrace-plain-decode", daemon=True)
    worker.start()
    special = set(tokenizer.all_special_ids)
    ids: list[int] = []
    text = ""
    steps = 0
    finish = "length"
    while (tok := ids_q.get()) is not None:
        steps += 1
        if tok in special:
            finish = "stop"
            continue
        ids.append(tok)
        new_text = tokenizer.decode(ids, skip_special_tokens=True)
        if not new_text.endswith("\ufffd") and new_text != text:
            yield ("delta", new_text[len(text) :])
            text = new_text
    worker.join()
    if failure:
        raise failure[0]
    final = tokenizer.decode(ids, skip_special_tokens=True)
    if final != text:
        yield ("delta", final[len(text) :])
    name = (
        tracer.loaded.name
        if hasattr(tracer, "loaded")
        else str(getattr(tracer, "model_name", "unknown"))
    )
    yield ("final", Outcome(final, None, len(input_ids), steps, finish, name))


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
