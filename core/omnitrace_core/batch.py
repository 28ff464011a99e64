"""Batched traced generation: several requests decoded together, each cited as if alone.

:meth:`Tracer.generate_batch` lays out every request's prompt as :meth:`Tracer.generate` does,
left-pads the prompts into one batch and decodes them with one ``model.generate`` call under a
:class:`~omnitrace_core.capture.BatchCaptureSession`: one capture session per row, in the row's
own positions (padded keys are masked, so a row's attention rows are its rows alone, up to
float summation order). Each row's tokens and rows are then *replayed* through the tracer's
own per-token pipeline (text, mapping, sentence assembly, observers), the same code a live
decoding runs, so a row's answer is the answer :meth:`Tracer.generate` gives for it whenever the
batched model computes the same greedy tokens (``tests/core/test_batch.py``).

Falls back to one :meth:`Tracer.generate` per request for gradient signals (they attribute
after decoding, teacher-forced) and for prompts with extra model inputs (images, audio
features: their shapes do not batch generally).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omnitrace_core.capture import BatchCaptureSession, capturing
from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.results import FinalEvent, TracedAnswer
from omnitrace_core.sources import PromptLayout
from omnitrace_core.validation import check_text, invalid


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


def _row_tokens(generated: list[int], eos: set[int]) -> list[int]:
    """A row's tokens as a batch-1 decoding streams them: up to and including its first eos
    (after which ``model.generate`` pads the finished row)."""
    for k, tok in enumerate(generated):
        if tok in eos:
            return generated[: k + 1]
    return generated


def _stop_ids(model: Any, gen: dict[str, Any]) -> set[int]:
    eos = gen.get("eos_token_id")
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def generate_batch(
    tracer: Any,
    requests: Sequence[Any],
    config: TracerConfig | None,
    batch_size: int,
    generation_kwargs: dict[str, Any],
) -> list[TracedAnswer]:
    """The work of :meth:`Tracer.generate_batch` (see the module docstring)."""
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence):
        raise invalid("requests", requests, "must be a list of (sources, question) requests")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("batch_size", batch_size, "must be a positive integer")
    if config is not None and not isinstance(config, TracerConfig):
        raise invalid("config", config, f"must be a TracerConfig, got {type(config).__name__}")
    reqs = [as_request(item, i) for i, item in enumerate(requests)]
    if not reqs:
        return []
    cfg = config or tracer.config
    signal = tracer.signal_for(cfg.signal)
    gen = tracer._generation_kwargs(cfg, dict(generation_kwargs))
    prepared = []
    for i, req in enumerate(reqs):
        check_text(req.question, f"requests[{i}].question")
        srcs, layout = tracer._layout(req.sources, req.question, cfg)
        tracer._check_length(len(layout.input_ids), int(gen["max_new_tokens"]))
        prepared.append((req, srcs, layout))
    if signal.needs_gradients or any(layout.model_inputs for _, _, layout in prepared):
        return [
            tracer.generate(req.sources, req.question, config=cfg, **generation_kwargs)
            for req, _, _ in prepared
        ]
    answers: list[TracedAnswer] = []
    for start in range(0, len(prepared), batch_size):
        answers.extend(_run_chunk(tracer, prepared[start : start + batch_size], cfg, signal, gen))
    return answers


def _run_chunk(
    tracer: Any,
    chunk: list[tuple[BatchRequest, list[Any], PromptLayout]],
    cfg: TracerConfig,
    signal: Any,
    gen: dict[str, Any],
) -> list[TracedAnswer]:
    t0 = time.perf_counter()
    tokenizer, model = tracer.tokenizer, tracer.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidInputError("batched generation needs a pad or eos token id in the tokenizer")
    lengths = [len(layout.input_ids) for _, _, layout in chunk]
    width = max(lengths)
    ids = torch.tensor(
        [
            [pad] * (width - n) + list(layout.input_ids)
            for (_, _, layout), n in zip(chunk, lengths, strict=True)
        ],
        device=model.device,
    )
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=model.device)
    sessions = [tracer.capture_session(layout, cfg, signal) for _, _, layout in chunk]
    batch = BatchCaptureSession(sessions, [width - n for n in lengths])
    with capturing(batch), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **{"pad_token_id": pad, **gen})
    decode_s = time.perf_counter() - t0
    eos = _stop_ids(model, gen)
    answers = []
    for b, ((req, srcs, layout), session) in enumerate(zip(chunk, sessions, strict=True)):
        tokens = _row_tokens(out[b, width:].tolist(), eos)
        # A lone decoding's last forward pass is the one that produced its last token: rows
        # captured after this row finished (while others went on) do not exist there.
        last = lengths[b] - 2 + len(tokens)
        for pos in [p for p in session.rows if p > last]:
            del session.rows[pos]
        info = tracer._info("chat", srcs, req.question, layout, signal, gen)
        events = tracer._stream_attention(
            srcs, layout, cfg, signal, gen, False, replay=(session, _Replayed(tokens))
        )
        final: TracedAnswer | None = None
        for event in tracer._observed(info, events):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        timings = {**final.timings, "batch_decode_s": decode_s, "batch_size": float(len(chunk))}
        answers.append(final.model_copy(update={"timings": timings}))
    return answers
