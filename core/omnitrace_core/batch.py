"""Batched traced generation: several requests decoded together, each cited as if alone.

:meth:`Tracer.generate_batch` lays out every request's prompt as :meth:`Tracer.generate` does,
left-pads the prompts into one batch and decodes them with one ``model.generate`` call under a
:class:`~omnitrace_core.capture.BatchCaptureSession`: one capture session per row, in the row's
own positions (padded keys are masked, so a row's attention rows are its rows alone, up to
float summation order). Each row's tokens and rows are then *replayed* through the tracer's
own per-token pipeline (text, mapping, sentence assembly, observers), the same code a live
decoding runs, so a row's answer is the answer :meth:`Tracer.generate` gives for it whenever the
batched model computes the same greedy tokens (``tests/core/test_batch.py``).

Stopping is per row, as alone: a row ends at its first end-of-sequence token, at its first
stop string (``stop`` / ``stop_strings``: ``finish_reason="stop"``, the stop text cut) or when a
caller's ``stopping_criteria`` says so for that row; the other rows decode on. Which step
stopped each row is recorded while decoding (:class:`_RowStops`), because after a row stops
``model.generate`` only pads it.

Falls back to one :meth:`Tracer.generate` per request, with the same answers, where batching
cannot give them: gradient signals (they attribute after decoding, teacher-forced), prompts
with extra model inputs (images, audio features: their shapes do not batch generally) and a
``grammar`` (the constrained-decoding matcher follows one sequence). Sampling
(``do_sample=True``) is batched, but a row's random draws then differ from the same request
alone, as with any batched sampling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omnitrace_core.capture import BatchCaptureSession, capturing
from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.log import get_logger
from omnitrace_core.results import FinalEvent, StreamEvent, TracedAnswer
from omnitrace_core.sources import PromptLayout
from omnitrace_core.validation import check_text, invalid

logger = get_logger()


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: the sources and the question (as for :meth:`Tracer.generate`)."""

    sources: Sequence[Any]
    question: str


def as_request(item: Any, index: int) -> BatchRequest:
    """A :class:`BatchRequest` from ``(sources, question)``, a mapping, or a BatchRequest."""
    if isinstance(item, BatchRequest):
        return item
    if isinstance(item, Mapping):
        if "sources" not in item or "question" not in item:
            raise invalid(f"requests[{index}]", item, "needs 'sources' and 'question'")
        return BatchRequest(item["sources"], item["question"])
    if isinstance(item, tuple) and len(item) == 2:
        return BatchRequest(item[0], item[1])
    raise invalid(
        f"requests[{index}]",
        item,
        "must be (sources, question), a mapping with those keys, or a BatchRequest",
    )


class _Replayed:
    """A finished row of a batched decoding, shaped like the tracer's live decoding."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens

    def tokens(self) -> Iterator[int]:
        yield from self._tokens

    def finish(self) -> None:
        return None

    def cancel(self) -> None:
        return None


def _row_tokens(generated: list[int], eos: set[int], stopped_at: int | None) -> list[int]:
    """A row's tokens as a batch-1 decoding streams them: up to and including its first eos or
    the token at which a stopping criterion ended the row (after either, ``model.generate``
    pads the finished row while the others go on)."""
    end = len(generated) if stopped_at is None else min(stopped_at, len(generated))
    for k, tok in enumerate(generated[:end]):
        if tok in eos:
            return generated[: k + 1]
    return generated[:end]


def _stop_ids(model: Any, gen: dict[str, Any]) -> set[int]:
    eos = gen.get("eos_token_id")
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


class _RowStops:
    """A stopping criterion that ORs ``criteria`` and records, per row, the first step at which
    they ended it.

    Stop strings and a caller's ``stopping_criteria`` end rows one by one; ``model.generate``
    then pads a finished row, and the padding could even decode as text. The recorded step is
    where a lone decoding of the row would have stopped, so the replay reads exactly its tokens.
    """

    def __init__(self, criteria: Sequence[Any], width: int) -> None:
        self.criteria = list(criteria)
        self.width = width
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self.criteria:
            said = torch.as_tensor(criterion(input_ids, scores, **kwargs), device=input_ids.device)
            done |= said.to(torch.bool).expand_as(done)
        step = int(input_ids.shape[1]) - self.width
        for b in done.nonzero().flatten().tolist():
            self.stopped_at.setdefault(int(b), step)
        return done


def _needs_one_at_a_time(signal: Any, layouts: list[PromptLayout], gen: dict[str, Any]) -> str | None:
    """Why these requests cannot share one ``model.generate`` call, or None if they can."""
    from omnitrace_core.decoding import GrammarLogitsProcessor

    if signal.needs_gradients:
        return "gradient signal"
    if any(layout.model_inputs for layout in layouts):
        return "extra model inputs"
    if any(isinstance(p, GrammarLogitsProcessor) for p in gen.get("logits_processor") or []):
        return "grammar"
    return None


def _named(exc: Exception, index: int) -> Exception:
    """``exc`` with the request it concerns named in front (same type), when it can be rebuilt."""
    try:
        return type(exc)(f"requests[{index}]: {exc}")
    except Exception:
        return exc


def generate_batch(
    tracer: Any,
    requests: Sequence[Any],
    config: TracerConfig | None,
    batch_size: int,
    generation_kwargs: dict[str, Any],
    return_exceptions: bool = False,
) -> list[Any]:
    """The work of :meth:`Tracer.generate_batch` (see the module docstring).

    With ``return_exceptions`` a request that fails (bad sources, too long, a decoding error)
    gets its exception in its slot and every other request still gets its answer: a chunk
    whose batched decoding raises is redone one request at a time, so the failure lands on
    the request that causes it.
    """
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence):
        raise invalid("requests", requests, "must be a list of (sources, question) requests")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("batch_size", batch_size, "must be a positive integer")
    if config is not None and not isinstance(config, TracerConfig):
        raise invalid("config", config, f"must be a TracerConfig, got {type(config).__name__}")
    if not requests:
        return []
    cfg = config or tracer.config
    signal = tracer.signal_for(cfg.signal)
    gen = tracer._generation_kwargs(cfg, dict(generation_kwargs))
    results: list[Any] = [None] * len(requests)
    prepared: list[tuple[int, BatchRequest, list[Any], PromptLayout]] = []
    for i, item in enumerate(requests):
        try:
            req = as_request(item, i)
            check_text(req.question, f"requests[{i}].question")
            srcs, layout = tracer._layout(req.sources, req.question, cfg)
            tracer._check_length(len(layout.input_ids), int(gen["max_new_tokens"]))
        except Exception as exc:
            named = exc if f"requests[{i}]" in str(exc) else _named(exc, i)
            if not return_exceptions:
                raise named from exc
            results[i] = named
            continue
        prepared.append((i, req, srcs, layout))

    def alone(i: int, req: BatchRequest) -> None:
        try:
            results[i] = tracer.generate(req.sources, req.question, config=cfg, **generation_kwargs)
        except Exception as exc:
            if not return_exceptions:
                raise
            results[i] = exc

    if _needs_one_at_a_time(signal, [item[-1] for item in prepared], gen) is not None:
        for i, req, _, _ in prepared:
            alone(i, req)
        return results
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        try:
            answers = _run_chunk(tracer, chunk, cfg, signal, gen, return_exceptions)
        except Exception:
            if not return_exceptions:
                raise
            for i, req, _, _ in chunk:  # the failure lands on the request that causes it
                alone(i, req)
            continue
        for (i, _, _, _), answer in zip(chunk, answers, strict=True):
            results[i] = answer
    return results


def _run_chunk(
    tracer: Any,
    chunk: list[tuple[int, BatchRequest, list[Any], PromptLayout]],
    cfg: TracerConfig,
    signal: Any,
    gen: dict[str, Any],
    return_exceptions: bool,
) -> list[Any]:
    layouts = [layout for _, _, _, layout in chunk]
    decoded, decode_s = _decode_chunk(tracer, layouts, cfg, signal, gen)
    answers: list[Any] = []
    for (_, req, srcs, layout), (session, tokens) in zip(chunk, decoded, strict=True):
        try:
            answer = _replay(tracer, req, srcs, layout, session, tokens, cfg, signal, gen)
        except Exception as exc:
            if not return_exceptions:
                raise
            answers.append(exc)
            continue
        timings = {**answer.timings, "batch_decode_s": decode_s, "batch_size": float(len(chunk))}
        answers.append(answer.model_copy(update={"timings": timings}))
    return answers


def _decode_chunk(
    tracer: Any,
    layouts: list[PromptLayout],
    cfg: TracerConfig,
    signal: Any,
    gen: dict[str, Any],
) -> tuple[list[tuple[Any, list[int]]], float]:
    """Decode the prompts together: per row its capture session and the tokens a lone
    decoding of it streams, and the seconds the shared decoding took."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    t0 = time.perf_counter()
    tokenizer, model = tracer.tokenizer, tracer.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidInputError("batched generation needs a pad or eos token id in the tokenizer")
    lengths = [len(layout.input_ids) for layout in layouts]
    width = max(lengths)
    ids = torch.tensor(
        [[pad] * (width - n) + list(layout.input_ids) for layout, n in zip(layouts, lengths, strict=True)],
        device=model.device,
    )
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=model.device)
    batch_gen = dict(gen)
    criteria = list(batch_gen.pop("stopping_criteria", None) or [])
    stops = batch_gen.pop("stop_strings", None)
    batch_gen.pop("tokenizer", None)
    if stops:
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stops))
    row_stops = _RowStops(criteria, width)
    if criteria:
        batch_gen["stopping_criteria"] = StoppingCriteriaList([row_stops])
    sessions = [tracer.capture_session(layout, cfg, signal) for layout in layouts]
    batch = BatchCaptureSession(sessions, [width - n for n in lengths])
    with capturing(batch), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **{"pad_token_id": pad, **batch_gen})
    batch.finish()
    eos = _stop_ids(model, gen)
    decoded = []
    for b, session in enumerate(sessions):
        tokens = _row_tokens(out[b, width:].tolist(), eos, row_stops.stopped_at.get(b))
        # A lone decoding's last forward pass is the one that produced its last token: rows
        # captured after this row finished (while others went on) do not exist there.
        last = lengths[b] - 2 + len(tokens)
        for pos in [p for p in session.rows if p > last]:
            del session.rows[pos]
        decoded.append((session, tokens))
    return decoded, time.perf_counter() - t0


def _replay_events(
    tracer: Any,
    req: BatchRequest,
    srcs: list[Any],
    layout: PromptLayout,
    session: Any,
    tokens: list[int],
    cfg: TracerConfig,
    signal: Any,
    gen: dict[str, Any],
) -> Iterator[StreamEvent]:
    """One row's events from its tokens and captured rows, through the live pipeline (and the
    tracer's observers, in the calling thread's context)."""
    info = tracer._info("chat", srcs, req.question, layout, signal, gen)
    events = tracer._stream_attention(
        srcs, layout, cfg, signal, gen, False, replay=(session, _Replayed(tokens))
    )
    return tracer._observed(info, events)


def _replay(
    tracer: Any,
    req: BatchRequest,
    srcs: list[Any],
    layout: PromptLayout,
    session: Any,
    tokens: list[int],
    cfg: TracerConfig,
    signal: Any,
    gen: dict[str, Any],
) -> TracedAnswer:
    """One row's answer (see :func:`_replay_events`)."""
    final: TracedAnswer | None = None
    for event in _replay_events(tracer, req, srcs, layout, session, tokens, cfg, signal, gen):
        if isinstance(event, FinalEvent):
            final = event.answer
    assert final is not None
    return final


@dataclass
class _Seat:
    """One participant of a :class:`BatchGate`: its prepared row, then its decoded row."""

    request: BatchRequest
    srcs: list[Any]
    layout: PromptLayout
    cfg: TracerConfig
    signal: Any
    gen: dict[str, Any]
    key: tuple[Any, ...]
    decoded: tuple[Any, list[int]] | None = None
    batch_size: int = 1
    decode_s: float = 0.0


def _gen_key(gen: dict[str, Any]) -> tuple[Any, ...]:
    """Generation options as a comparable key (objects compare by identity through ``repr``)."""
    return tuple(sorted((k, repr(v)) for k, v in gen.items() if k != "tokenizer"))


class BatchGate:
    """Lets ``expected`` concurrent callers, each in its own thread, share one decoding.

    An adapter's batch call (LangChain ``batch`` / ``abatch``) runs every input in its own
    thread with its own callbacks and context, as its per-input path does. Each calls
    :meth:`stream` (or :meth:`leave` if it will not decode here: a tool turn, a cache hit, an
    error before decoding). Once every expected caller has arrived the rows are decoded
    together (rows with the same generation options, signal and capture mode share a
    ``model.generate`` call), and each caller then replays *its own* row in its own thread:
    its text, sentences and observer events (spans) are produced in its context, exactly as
    :meth:`Tracer.stream` would produce them for it alone.

    A row that cannot be batched (gradient signal, media model inputs, a grammar) or whose
    shared decoding fails decodes alone with :meth:`Tracer.stream`, so a failure reaches the
    caller that causes it and no other caller loses its answer.
    """

    def __init__(self, tracer: Any, expected: int) -> None:
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
            raise invalid("expected", expected, "must be a positive integer")
        self.tracer = tracer
        self.expected = expected
        self._arrived = 0
        self._seats: list[_Seat] = []
        self._done = False
        self._cond = threading.Condition()

    def leave(self) -> None:
        """Count a caller that will not decode through this gate (the others stop waiting for it)."""
        self._arrive(None)

    def stream(
        self,
        sources: Any,
        question: str,
        *,
        config: TracerConfig | None = None,
        **generation_kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """This caller's events, as :meth:`Tracer.stream` yields them for the request alone.

        Raises:
            InvalidInputError: bad sources or question (as :meth:`Tracer.stream`); the caller
                counts as arrived, so the others do not wait for it.
        """
        tracer = self.tracer
        try:
            cfg = config or tracer.config
            if not isinstance(cfg, TracerConfig):
                raise invalid("config", cfg, f"must be a TracerConfig, got {type(cfg).__name__}")
            check_text(question, "question")
            signal = tracer.signal_for(cfg.signal)
            gen = tracer._generation_kwargs(cfg, dict(generation_kwargs))
            srcs, layout = tracer._layout(sources, question, cfg)
            tracer._check_length(len(layout.input_ids), int(gen["max_new_tokens"]))
            alone = _needs_one_at_a_time(signal, [layout], gen) is not None
            seat = _Seat(
                BatchRequest(sources, question), srcs, layout, cfg, signal, gen,
                key=(signal.name, cfg.capture, _gen_key(gen)),
            )
        except BaseException:
            self.leave()  # counted, so the others never wait for this caller
            raise
        if alone:
            self.leave()
            return tracer.stream(sources, question, config=cfg, **generation_kwargs)
        self._arrive(seat)
        with self._cond:
            self._cond.wait_for(lambda: self._done)
        if seat.decoded is None:  # its shared decoding failed: alone, where its own error shows
            return tracer.stream(sources, question, config=cfg, **generation_kwargs)
        return self._replayed(seat)

    def _replayed(self, seat: _Seat) -> Iterator[StreamEvent]:
        assert seat.decoded is not None
        session, tokens = seat.decoded
        s = seat
        for event in _replay_events(
            self.tracer, s.request, s.srcs, s.layout, session, tokens, s.cfg, s.signal, s.gen
        ):
            if isinstance(event, FinalEvent):
                timings = {
                    **event.answer.timings,
                    "batch_decode_s": seat.decode_s,
                    "batch_size": float(seat.batch_size),
                }
                event = FinalEvent(answer=event.answer.model_copy(update={"timings": timings}))
            yield event

    def _arrive(self, seat: _Seat | None) -> None:
        with self._cond:
            if seat is not None:
                self._seats.append(seat)
            self._arrived += 1
            last = self._arrived >= self.expected
        if not last:
            return
        try:
            self._decode_all()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _decode_all(self) -> None:
        groups: dict[tuple[Any, ...], list[_Seat]] = {}
        for seat in self._seats:
            groups.setdefault(seat.key, []).append(seat)
        for seats in groups.values():
            first = seats[0]
            try:
                decoded, decode_s = _decode_chunk(
                    self.tracer, [s.layout for s in seats], first.cfg, first.signal, first.gen
                )
            except Exception as exc:  # each of these decodes alone and meets its own error
                logger.warning("batch_decode_failed", rows=len(seats), error=f"{type(exc).__name__}: {exc}")
                continue
            for seat, row in zip(seats, decoded, strict=True):
                seat.decoded, seat.decode_s, seat.batch_size = row, decode_s, len(seats)
