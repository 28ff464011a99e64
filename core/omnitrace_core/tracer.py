"""The tracer: decode with attention capture, map tokens to sources, cite each sentence.

Three entry points share one pipeline:

- :meth:`Tracer.stream` decodes in a worker thread and yields text deltas, a sentence event
  as soon as each sentence is complete, and finally the whole result.
- :meth:`Tracer.generate` consumes :meth:`stream`, so both return identical results.
- :meth:`Tracer.attribute` attributes a given response teacher-forced in one forward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch

from omnitrace_core.assembly import SentenceAssembler
from omnitrace_core.calibration import Calibration, find_calibration, load_calibration
from omnitrace_core.capture import CaptureSession, capturing, install
from omnitrace_core.chunking import Chunker
from omnitrace_core.config import TracerConfig
from omnitrace_core.decoding import (
    AnswerRepeatGuard,
    CancelCriteria,
    Grammar,
    GrammarLogitsProcessor,
    StopMatcher,
    StringRepeatGuard,
    grammar_processor,
    validate_stops,
)
from omnitrace_core.detokenize import IncrementalDecoder
from omnitrace_core.errors import (
    ContextLengthError,
    GenerationAbandoned,
    GenerationError,
    InvalidInputError,
    UnknownNameError,
)
from omnitrace_core.log import get_logger
from omnitrace_core.mapping import TokenMapper, UnitIndex
from omnitrace_core.models import DEFAULT_MODEL, LoadedModel, load_model
from omnitrace_core.observers import GenerationInfo, ObserverHub, TraceObserver, new_run_id
from omnitrace_core.prompting import PromptBuilder, TextPromptBuilder, prepare_sources
from omnitrace_core.rerank import EmbeddingReranker
from omnitrace_core.results import (
    FinalEvent,
    SentenceAttribution,
    SentenceEvent,
    StreamEvent,
    TextDelta,
    TracedAnswer,
)
from omnitrace_core.signals import LearnedHeads, Signal, get_signal
from omnitrace_core.sources import (
    MediaSource,
    PromptLayout,
    Source,
    encode_plain,
    encode_with_plain_spans,
    validate_sources,
)
from omnitrace_core.tools import ToolSpec, render_prompt, resolve_choice, tool_call_grammar
from omnitrace_core.validation import (
    check_device,
    check_dtype,
    check_generation_kwargs,
    check_model_and_tokenizer,
    check_text,
    invalid,
)

logger = get_logger()

SourcesArg = Sequence[Source | dict[str, Any]]
_GRAD_REFERENCE_ROWS = 32


@dataclass(frozen=True)
class ForcedRows:
    """A teacher-forced response's tokens and their attention rows (CPU, fp32)."""

    response: str
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    rows: list[torch.Tensor]
    reference_rows: list[torch.Tensor]
    signal: str
    reference_at: list[int] | None = None
    """The prompt position of each reference row (``None``: unknown, all are used)."""
    next_row: torch.Tensor | None = None
    """The last response token's own row (its reading row; ``rows[k + 1]`` is token k's)."""

    has_reading_rows: bool = True
    """False for gradient signals: a row there is tied to the token it scores."""

    def reading_row(self, k: int) -> torch.Tensor | None:
        """Token ``k``'s reading row: the row of the token itself as a query, if captured."""
        if not self.has_reading_rows:
            return None
        return self.rows[k + 1] if k + 1 < len(self.rows) else self.next_row


class _TokenQueue:
    """A transformers streamer that hands generated token ids to the consuming thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        for tok in value.reshape(-1).tolist():
            self.queue.put(int(tok))

    def end(self) -> None:
        self.queue.put(None)


class _TextSoFar:
    """Generated ids -> answer text, one token at a time; skips special tokens, holds back
    an incomplete UTF-8 character, and tells whether decoding stopped on end-of-sequence."""

    def __init__(self, tokenizer: Any, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.eos = eos_ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.ids: list[int] = []
        self.text = ""
        self.finish = "length"
        self._decoder = IncrementalDecoder(tokenizer)  # O(1) amortised per token

    def add(self, tok: int) -> tuple[int, int] | None:
        """Append a token; return the new text's ``(start, end)`` span, or None for a special token."""
        if tok in self.special:
            if tok in self.eos:
                self.finish = "stop"
            return None
        self.ids.append(tok)
        new_text = self._decoder.push(tok)
        if new_text is None:  # incomplete UTF-8: wait for the next token
            new_text = self.text
        span = (len(self.text), len(new_text))
        self.text = new_text
        return span

    def final(self) -> str:
        """The whole answer (including a trailing character held back until now)."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


class _KeptText:
    """The part of the decoded text the caller gets: everything before the first stop string.

    Text that could still grow into a stop string is held back (never streamed, never
    attributed) until it cannot; once a stop string appears, it and everything after it is
    dropped. Without stop strings every character is released at once.
    """

    def __init__(self, stops: list[str]) -> None:
        self.matcher = StopMatcher(stops) if stops else None
        self.text = ""  # released so far
        self.stopped = False
        self._full = ""

    def advance(self, full: str, final: bool = False) -> str:
        """Take the decoded text so far; return the newly released part."""
        self._full = full
        if self.stopped:
            return ""
        limit = len(full)
        if self.matcher is not None:
            at = self.matcher.find(full)
            if at is not None:
                self.stopped, limit = True, at
            elif not final:
                limit = self.matcher.safe_end(full)
        limit = max(limit, len(self.text))
        delta = full[len(self.text) : limit]
        self.text = full[:limit]
        return delta

    def release(self, held: list[tuple[int, str, int, int]]) -> list[tuple[int, str, int, int]]:
        """Move the tokens whose text is released out of ``held`` (a token cut by the stop
        string keeps its part before it; tokens after the stop are dropped)."""
        limit = len(self.text)
        out: list[tuple[int, str, int, int]] = []
        while held:
            pos, token, a, b = held[0]
            if b <= limit:
                out.append(held.pop(0))
            elif self.stopped:
                if a < limit:
                    out.append((pos, token, a, limit))
                held.clear()
            else:
                break
        return out


class _Decoding:
    """One ``model.generate`` call whose tokens arrive through a queue.

    Threaded for :meth:`Tracer.stream` (the caller consumes while the model decodes); otherwise
    it decodes at once in the caller's thread and :meth:`tokens` drains the finished queue
    (a worker thread costs a second malloc arena: +150 MB peak at 2k tokens).
    """

    def __init__(
        self,
        model: Any,
        input_ids: torch.Tensor,
        gen: dict[str, Any],
        session: CaptureSession | None,
        threaded: bool,
    ) -> None:
        self.streamer = _TokenQueue()
        self.failure: list[BaseException] = []
        self.cancelled = threading.Event()
        gen = {**gen, "stopping_criteria": _with_cancel(gen.get("stopping_criteria"), self.cancelled)}
        self._model, self._input_ids, self._gen, self._session = model, input_ids, gen, session
        self._worker: threading.Thread | None = None
        if threaded:
            self._worker = threading.Thread(target=self._run, name="omnitrace-decode", daemon=True)
            self._worker.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                if self._session is not None:
                    stack.enter_context(capturing(self._session))
                stack.enter_context(torch.no_grad())
                self._model.generate(
                    input_ids=self._input_ids,
                    attention_mask=torch.ones_like(self._input_ids),
                    streamer=self.streamer,
                    **self._gen,
                )
        except BaseException as exc:
            self.failure.append(exc)
        finally:
            self.streamer.end()

    def tokens(self) -> Iterator[int]:
        """Generated token ids, in order, as they arrive."""
        while (tok := self.streamer.queue.get()) is not None:
            yield tok

    def finish(self) -> None:
        """Wait for decoding to end; re-raise its failure, if any."""
        if self._worker is not None:
            self._worker.join()
        if self.failure:
            raise self.failure[0]

    def cancel(self) -> None:
        """Stop decoding at the next token (the consumer went away); never waits."""
        self.cancelled.set()


def _with_cancel(criteria: Any, event: threading.Event) -> Any:
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([*(criteria or []), CancelCriteria(event)])


def _finish_decoding(decoding: Any, tokens: int, text: str) -> None:
    """Wait for the decode to end; if ``model.generate`` raised part-way, end the stream with a
    named :class:`GenerationError` that keeps the text decoded so far (``.partial_text``)."""
    try:
        decoding.finish()
    except Exception as exc:
        error = GenerationError(
            f"decoding failed after {tokens} generated tokens ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); the text decoded so far is kept in .partial_text"
        )
        error.partial_text = text
        raise error from exc


class Tracer:
    """Generation-time source attribution over a local Hugging Face decoder-only model.

    Args:
        model: A loaded causal LM whose attention goes through transformers' AttentionInterface.
        tokenizer: Its (fast) tokenizer.
        config: Tracer configuration; per-call overrides are accepted by every method.
        model_name: Name reported in results.
        observers: Receive generation events (see :mod:`omnitrace_core.observers`).
        prompt_builder: Lays the sources out for this model; default: the chat-template text
            layout. Omni / vision-language models get one from :mod:`omnitrace_core.media.omni`.
        calibration: Learned head weights and per-model defaults for this model
            (:mod:`omnitrace_core.calibration`): enables the ``learned`` signal, and when no
            ``config`` is given its recommended config is the default.

    Raises:
        CaptureError: if the model's attention cannot be captured.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: TracerConfig | None = None,
        model_name: str | None = None,
        observers: Sequence[TraceObserver] = (),
        prompt_builder: PromptBuilder | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        check_model_and_tokenizer(model, tokenizer)
        _check_config(config)
        if model_name is not None and (not isinstance(model_name, str) or not model_name.strip()):
            raise invalid("model_name", model_name, "must be a non-empty string")
        if calibration is not None and not isinstance(calibration, Calibration):
            raise invalid(
                "calibration",
                calibration,
                f"must be a Calibration (omnitrace_core.calibration.load_calibration(path)), "
                f"got {type(calibration).__name__}",
            )
        if isinstance(observers, (str, bytes)) or not isinstance(observers, Sequence):
            raise invalid("observers", observers, "must be a list of TraceObserver objects")
        self.loaded = LoadedModel(model=model, tokenizer=tokenizer, name=model_name or _model_name(model))
        self.prompt_builder: PromptBuilder = prompt_builder or TextPromptBuilder(tokenizer)
        self.calibration = calibration
        self._learned: LearnedHeads | None = None
        if calibration is not None:
            calibration.check_model(model, self.loaded.name)
            self._learned = LearnedHeads(calibration.head_weights)
        self.config = config or (calibration.tracer_config() if calibration else TracerConfig())
        self.signal_for(self.config.signal)  # fail fast on an unknown name
        install(model)
        model.eval()
        self.chunker = Chunker()
        self.observers = ObserverHub()
        for observer in observers:
            self.observers.add(observer)

    def add_observer(self, observer: TraceObserver) -> None:
        """Receive generation events (see :mod:`omnitrace_core.observers`)."""
        self.observers.add(observer)

    def remove_observer(self, observer: TraceObserver) -> None:
        self.observers.remove(observer)

    def flush_observers(self, timeout: float = 5.0) -> bool:
        """Wait for observers to receive every event so far; False on timeout."""
        return self.observers.flush(timeout)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_default(cls, config: TracerConfig | None = None, **load_kwargs: Any) -> Tracer:
        """The packaged SmolLM2-135M-Instruct: offline, CPU, fp32."""
        return cls.from_pretrained(DEFAULT_MODEL, config=config, **load_kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        config: TracerConfig | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict[str, Any] | None = None,
        calibration: Calibration | str | os.PathLike[str] | Literal["auto"] | None = "auto",
        **load_kwargs: Any,
    ) -> Tracer:
        """Load a packaged model by name (``smollm2-135m``, ``qwen2.5-0.5b``) or a local folder.

        ``device`` / ``dtype`` / ``device_map`` pass through to transformers; capture
        arithmetic stays fp32 whatever the model dtype. ``calibration``: ``"auto"`` (default)
        uses the calibration shipped for a packaged model or the folder's
        ``omnitrace-calibration.json``; a path or :class:`Calibration` uses that one; ``None``
        uses none (the ``attmean`` defaults).
        """
        if isinstance(name_or_path, bytes) or not isinstance(name_or_path, (str, os.PathLike)):
            raise invalid(
                "name_or_path",
                name_or_path,
                f"must be a packaged model name or a folder path, got {type(name_or_path).__name__}",
            )
        if not str(name_or_path).strip():
            raise invalid("name_or_path", name_or_path, "is empty")
        _check_config(config)
        if dtype is not None:
            load_kwargs["dtype"] = check_dtype(dtype)
        if device is not None:
            check_device(device)
        if device_map is not None and not isinstance(device_map, (str, dict)):
            raise invalid("device_map", device_map, "must be a string ('auto', 'cpu') or a dict")
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        if isinstance(calibration, str) and calibration == "auto":
            cal = find_calibration(str(name_or_path))
        elif isinstance(calibration, (str, os.PathLike)):
            cal = load_calibration(calibration)
        else:
            cal = calibration
        loaded = load_model(name_or_path, **load_kwargs)
        if device is not None and device_map is None:
            loaded.model.to(device)
        return cls(
            loaded.model,
            loaded.tokenizer,
            config=config,
            model_name=loaded.name,
            prompt_builder=loaded.prompt_builder,
            calibration=cal,
        )

    def signal_for(self, name: str | Signal) -> Signal:
        """The signal instance for a name; ``learned`` is this tracer's calibrated heads.

        Raises:
            UnknownNameError: an unknown name, or ``learned`` without a calibration (named).
        """
        if isinstance(name, str) and name.lower() == LearnedHeads.name:
            if self._learned is None:
                raise UnknownNameError(
                    f"signal 'learned' needs head weights calibrated for model {self.loaded.name!r} and "
                    "none is loaded: run `omnitrace calibrate --model ...` and pass calibration=PATH, "
                    "or use 'attmean'"
                )
            return self._learned
        return get_signal(name)

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    # -- public API ----------------------------------------------------------------------------
    def generate(
        self,
        sources: SourcesArg,
        question: str,
        *,
        config: TracerConfig | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        **generation_kwargs: Any,
    ) -> TracedAnswer:
        """Answer ``question`` from ``sources`` and cite every sentence.

        Greedy by default (``max_new_tokens=256``, ``no_repeat_ngram_size=3``); other keyword
        arguments go to ``model.generate``. ``stop``: decoding ends at the first stop string,
        which is cut from the answer with everything after it (``finish_reason="stop"``);
        citations cover the kept text only. ``grammar``: the answer must match it
        (:mod:`omnitrace_core.decoding`; ``no_repeat_ngram_size`` then applies inside JSON
        strings only: :class:`~omnitrace_core.decoding.StringRepeatGuard`).
        """
        generation_kwargs = {**generation_kwargs, "stop": stop, "grammar": grammar}
        final: TracedAnswer | None = None
        # Decode in the caller's thread: a worker thread would get its own malloc arena, which
        # measurably raised peak memory (benchmarks/overhead.py). Events are then processed
        # exactly as in stream(), so both return identical results.
        for event in self._run_events(sources, question, config, generation_kwargs, threaded=False):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        return final

    def stream(
        self,
        sources: SourcesArg,
        question: str,
        *,
        config: TracerConfig | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        **generation_kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Yield :class:`TextDelta` per token, :class:`SentenceEvent` per completed sentence, then
        one :class:`FinalEvent` carrying the whole result (``stop`` / ``grammar``: as in
        :meth:`generate`; text that may still become a stop string is held back until it cannot)."""
        generation_kwargs = {**generation_kwargs, "stop": stop, "grammar": grammar}
        return self._run_events(sources, question, config, generation_kwargs, threaded=True)

    def _run_events(
        self,
        sources: SourcesArg,
        question: str,
        config: TracerConfig | None,
        generation_kwargs: dict[str, Any],
        threaded: bool,
    ) -> Iterator[StreamEvent]:
        try:
            cfg = _check_config(config) or self.config
            check_text(question, "question")
            signal = self.signal_for(cfg.signal)
            srcs, layout = self._layout(sources, question, cfg)
            gen = self._generation_kwargs(cfg, generation_kwargs)
            self._check_length(len(layout.input_ids), int(gen["max_new_tokens"]))
        except (InvalidInputError, UnknownNameError) as exc:
            logger.warning("input_rejected", operation="chat", error_type=type(exc).__name__, reason=str(exc))
            raise
        info = self._info("chat", srcs, question, layout, signal, gen)
        inner = (
            self._stream_gradient_signal(srcs, question, layout, cfg, gen, threaded)
            if signal.needs_gradients
            else self._stream_attention(srcs, layout, cfg, signal, gen, threaded)
        )
        yield from self._observed(info, inner)

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        config: TracerConfig | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        threaded: bool = True,
        **generation_kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Answer a conversation that has no sources: no attribution, the same decoding.

        ``messages`` are chat-template turns (:func:`omnitrace_core.tools.render_prompt`);
        ``tools`` are shown through the model's chat template when it takes them, else with
        the documented fallback text. ``tool_choice`` (``auto`` / ``required`` / a tool's name /
        an OpenAI function dict; :func:`~omnitrace_core.tools.resolve_choice`) decodes the reply
        under the tool-call grammar, so a call always parses (``none`` or None: no grammar);
        every adapter and the server get tool calls this way. ``stop`` and ``grammar`` act as
        in :meth:`generate` (``grammar`` and a tool choice exclude each other).
        Yields :class:`TextDelta` events, then a :class:`FinalEvent` whose answer has the text
        and usage but no sentences or sources. Observers see it like any generation (so every
        call gets a span, with or without sources).
        """
        cfg = config or self.config
        question = next(
            (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        try:
            if not messages:
                raise InvalidInputError("no messages: nothing to answer")
            if tool_choice is not None and (choice := resolve_choice(tools, tool_choice)) != "none":
                if grammar is not None:
                    raise InvalidInputError("give grammar or tool_choice, not both")
                grammar = tool_call_grammar(tools, choice, parallel_tool_calls)
            prompt = render_prompt(self.tokenizer, messages, tools, parallel_tool_calls)
            input_ids = _encode_conversation(self.tokenizer, prompt, messages)
            gen = self._generation_kwargs(cfg, {**generation_kwargs, "stop": stop, "grammar": grammar})
            self._check_length(len(input_ids), int(gen["max_new_tokens"]))
        except (InvalidInputError, UnknownNameError) as exc:
            logger.warning("input_rejected", operation="chat", error_type=type(exc).__name__, reason=str(exc))
            raise
        layout = PromptLayout(input_ids=input_ids, units=[], reference_positions=[], text=prompt)
        info = GenerationInfo(
            run_id=new_run_id(),
            operation="chat",
            model=self.loaded.name,
            signal="none",
            source_ids=(),
            question=question,
            prompt_tokens=len(input_ids),
            request=_request_record(gen),
            sources={},
        )
        return self._observed(info, self._stream_plain(layout, cfg, gen, threaded))

    def _stream_plain(
        self, layout: PromptLayout, cfg: TracerConfig, gen: dict[str, Any], threaded: bool
    ) -> Iterator[StreamEvent]:
        t0 = time.perf_counter()
        decoding = self._start_decoding(layout, gen, None, threaded)
        out = _TextSoFar(self.tokenizer, _eos_ids(self.model))
        kept = _KeptText(validate_stops(gen.get("stop_strings")))
        steps = 0
        try:
            for tok in decoding.tokens():
                steps += 1
                if kept.stopped:
                    continue
                out.add(tok)
                if delta := kept.advance(out.text):
                    yield TextDelta(text=delta, token_index=len(out.ids) - 1)
        except GeneratorExit:
            decoding.cancel()  # the consumer closed the stream: stop the decode thread too
            raise
        _finish_decoding(decoding, len(out.ids), kept.text)
        if delta := kept.advance(out.final(), final=True):
            yield TextDelta(text=delta, token_index=len(out.ids) - 1)
        answer = TracedAnswer(
            text=kept.text,
            sentences=[],
            tokens=[],
            sources=[],
            model=self.loaded.name,
            signal="none",
            mode="generate",
            prompt_tokens=len(layout.input_ids),
            generated_tokens=steps,
            finish_reason="stop" if kept.stopped else out.finish,
            config=cfg.model_dump(mode="json"),
            timings={"total_s": time.perf_counter() - t0},
        )
        yield FinalEvent(answer=answer)

    def attribute(
        self,
        sources: SourcesArg,
        question: str,
        response: str,
        *,
        config: TracerConfig | None = None,
    ) -> TracedAnswer:
        """Attribute a given ``response`` (teacher-forced, one forward pass)."""
        try:
            cfg = _check_config(config) or self.config
            check_text(question, "question")
            if isinstance(response, str) and not response.strip():
                raise InvalidInputError("response is empty: nothing to attribute")
            check_text(response, "response")
            srcs, layout = self._layout(sources, question, cfg)
        except (InvalidInputError, UnknownNameError) as exc:
            logger.warning(
                "input_rejected", operation="attribute", error_type=type(exc).__name__, reason=str(exc)
            )
            raise
        info = self._info("attribute", srcs, question, layout, self.signal_for(cfg.signal), {})

        def run() -> Iterator[StreamEvent]:
            answer = self._attribute_layout(srcs, layout, response, cfg, mode="attribute", finish_reason=None)
            for sentence in answer.sentences:
                yield SentenceEvent(sentence=sentence)
            yield FinalEvent(answer=answer)

        final: TracedAnswer | None = None
        for event in self._observed(info, run()):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        return final

    def layout(self, sources: SourcesArg, question: str, config: TracerConfig | None = None) -> PromptLayout:
        """The prompt this tracer would build for ``sources`` and ``question`` (no model call)."""
        check_text(question, "question")
        return self._layout(sources, question, _check_config(config) or self.config)[1]

    def _layout(
        self, sources: SourcesArg, question: str, cfg: TracerConfig
    ) -> tuple[list[Source], PromptLayout]:
        srcs = prepare_sources(validate_sources(sources), self.prompt_builder, cfg, self.loaded.name)
        return srcs, self.prompt_builder.build(srcs, question, cfg)

    # -- observers -------------------------------------------------------------------------
    def _info(
        self,
        operation: str,
        srcs: list[Source],
        question: str,
        layout: PromptLayout,
        signal: Signal,
        gen: dict[str, Any],
    ) -> GenerationInfo:
        return GenerationInfo(
            run_id=new_run_id(),
            operation=operation,
            model=self.loaded.name,
            signal=signal.name,
            source_ids=tuple(s.id for s in srcs),
            question=question,
            prompt_tokens=len(layout.input_ids),
            request=_request_record(gen),
            sources={s.id: _source_text(s) for s in srcs},
        )

    def _observed(self, info: GenerationInfo, events: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
        """Forward events to observers (never blocking on them) while yielding them on."""
        ctx = contextvars.copy_context()
        hub = self.observers
        hub.emit(ctx, "on_generation_start", info)
        try:
            for event in events:
                if isinstance(event, SentenceEvent):
                    hub.emit(ctx, "on_sentence", info, event.sentence)
                elif isinstance(event, FinalEvent):
                    hub.emit(ctx, "on_generation_end", info, event.answer)
                yield event
        except GeneratorExit:
            # The consumer stopped reading: tell observers so they close their spans (and the
            # hub drops this run's context copies).
            hub.emit(ctx, "on_generation_error", info, GenerationAbandoned("stream closed by its consumer"))
            raise
        except BaseException as exc:
            hub.emit(ctx, "on_generation_error", info, exc)
            raise

    # -- internals -----------------------------------------------------------------------------
    def _generation_kwargs(self, cfg: TracerConfig, overrides: dict[str, Any]) -> dict[str, Any]:
        """``model.generate`` kwargs: the config's defaults, the caller's overrides, and the
        decoding controls ``stop`` (stop strings) and ``grammar`` (a :class:`Grammar`)."""
        overrides = dict(overrides)
        if overrides.get("stop") is not None:
            stops = validate_stops(overrides.pop("stop"), "stop")
        else:
            stops = validate_stops(overrides.pop("stop_strings", None), "stop_strings")
        overrides.pop("stop", None)
        overrides.pop("stop_strings", None)
        grammar = overrides.pop("grammar", None)
        if grammar is not None and not isinstance(grammar, Grammar):
            raise InvalidInputError(
                f"grammar must be an omnitrace_core.Grammar, got {type(grammar).__name__}"
            )
        gen: dict[str, Any] = {
            "max_new_tokens": cfg.generation.max_new_tokens,
            "no_repeat_ngram_size": cfg.generation.no_repeat_ngram_size,
            "do_sample": cfg.generation.do_sample,
        }
        gen.update(overrides)
        check_generation_kwargs(gen)
        if stops:
            gen["stop_strings"] = stops
            gen["tokenizer"] = self.tokenizer
        if grammar is not None:
            # The plain n-gram guard would forbid tokens the grammar requires (JSON repeats
            # '","'), so under a grammar it runs only inside JSON string contents, after the
            # grammar's mask (StringRepeatGuard); a regex grammar has no JSON strings: no guard.
            size = int(gen.get("no_repeat_ngram_size") or 0)
            gen["no_repeat_ngram_size"] = 0
            gen.pop("repetition_penalty", None)
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(list(gen.get("logits_processor") or []))
            processors.append(grammar_processor(self.tokenizer, self.model, grammar))
            if size >= 2 and grammar.kind in ("json_schema", "lark"):
                processors.append(StringRepeatGuard(self.tokenizer, size))
            gen["logits_processor"] = processors
        elif int(gen.get("no_repeat_ngram_size") or 0) >= 1:
            # transformers' guard counts the prompt, so no answer could copy ``size`` tokens in
            # a row from a source; this one counts the answer only (AnswerRepeatGuard).
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(list(gen.get("logits_processor") or []))
            processors.append(AnswerRepeatGuard(int(gen["no_repeat_ngram_size"])))
            gen["no_repeat_ngram_size"] = 0
            gen["logits_processor"] = processors
        if not gen.get("do_sample"):
            for key in ("temperature", "top_p", "top_k"):
                gen.setdefault(key, None)
        if gen.get("num_beams", 1) != 1 or gen.get("num_return_sequences", 1) != 1:
            raise InvalidInputError("beam search / several return sequences are not supported while tracing")
        return gen

    def _check_length(self, prompt_tokens: int, new_tokens: int) -> None:
        window = self.loaded.context_window
        if prompt_tokens + new_tokens > window:
            raise ContextLengthError(
                f"prompt is {prompt_tokens} tokens and {new_tokens} new tokens are requested: "
                f"{prompt_tokens + new_tokens} > the model's context window of {window}. "
                "Shorten or drop sources, or lower max_new_tokens."
            )

    def _start_decoding(
        self, layout: PromptLayout, gen: dict[str, Any], session: CaptureSession | None, threaded: bool
    ) -> _Decoding:
        """Start ``model.generate`` feeding a token queue (in a worker thread if ``threaded``)."""
        input_ids = torch.tensor([layout.input_ids], device=self.model.device)
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return _Decoding(
            self.model, input_ids, {"pad_token_id": pad, **layout.model_inputs, **gen}, session, threaded
        )

    def capture_session(self, layout: PromptLayout, cfg: TracerConfig, signal: Signal) -> CaptureSession:
        """The capture session of one decoding over ``layout`` (reference rows, last prompt row)."""
        prompt_len = len(layout.input_ids)
        return CaptureSession(
            signal,
            self.loaded.num_layers,
            prefill_positions=[*layout.reference_positions, prompt_len - 1],
            mode=cfg.capture,
        )

    @overload
    def generate_batch(
        self,
        requests: Sequence[Any],
        *,
        config: TracerConfig | None = None,
        batch_size: int = 8,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        return_exceptions: Literal[False] = False,
        **generation_kwargs: Any,
    ) -> list[TracedAnswer]: ...

    @overload
    def generate_batch(
        self,
        requests: Sequence[Any],
        *,
        config: TracerConfig | None = None,
        batch_size: int = 8,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        return_exceptions: Literal[True],
        **generation_kwargs: Any,
    ) -> list[TracedAnswer | Exception]: ...

    def generate_batch(
        self,
        requests: Sequence[Any],
        *,
        config: TracerConfig | None = None,
        batch_size: int = 8,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        return_exceptions: bool = False,
        **generation_kwargs: Any,
    ) -> list[TracedAnswer] | list[TracedAnswer | Exception]:
        """Answer several requests, decoding up to ``batch_size`` of them together.

        Each request is ``(sources, question)``, a mapping with ``sources`` and ``question``, or
        a :class:`~omnitrace_core.batch.BatchRequest`. Prompts are left-padded into one batch;
        every row keeps its own source layout and gets the citations it gets alone with
        :meth:`generate` (see :mod:`omnitrace_core.batch`). Answers come back in request order.

        ``config``, ``stop`` and the generation kwargs apply to every request, and act per row
        as in :meth:`generate`: a row ends at its own stop string (``finish_reason="stop"``,
        the stop text cut) while the others decode on. Options that cannot share a decoding
        are not refused: with a ``grammar``, a gradient signal or media model inputs every
        request is answered by its own :meth:`generate` call (same answers, no speed-up), so a
        caller never has to know which options batch.

        Args:
            return_exceptions: False (default): the first failing request raises, its index
                named (``requests[2]: ...``). True: its exception takes its slot and every
                other request still gets its answer (a failed batched decoding is redone one
                request at a time, so only the culprit fails).

        Raises:
            InvalidInputError: ``requests`` is not a list, ``batch_size`` < 1, a bad generation
                option, or (unless ``return_exceptions``) a bad request, named by its index.
        """
        from omnitrace_core.batch import generate_batch

        kwargs = {**generation_kwargs, "stop": stop, "grammar": grammar}
        return generate_batch(self, requests, config, batch_size, kwargs, return_exceptions)

    def _new_assembler(
        self, srcs: list[Source], layout: PromptLayout, cfg: TracerConfig
    ) -> SentenceAssembler:
        reranker = EmbeddingReranker(cfg.rerank) if cfg.rerank is not None else None
        return SentenceAssembler(srcs, layout.units, self.chunker, cfg.curation, reranker)

    def _stream_attention(
        self,
        srcs: list[Source],
        layout: PromptLayout,
        cfg: TracerConfig,
        signal: Signal,
        gen: dict[str, Any],
        threaded: bool,
        replay: tuple[CaptureSession, Any] | None = None,
    ) -> Iterator[StreamEvent]:
        """``replay``: a finished decoding's session and tokens (a row of
        :meth:`generate_batch`), processed exactly as a live decoding."""
        t0 = time.perf_counter()
        prompt_len = len(layout.input_ids)
        if replay is None:
            session = self.capture_session(layout, cfg, signal)
            decoding = self._start_decoding(layout, gen, session, threaded)
        else:
            session, decoding = replay
        index = _unit_index(layout, cfg)
        assembler = self._new_assembler(srcs, layout, cfg)
        mapper: TokenMapper | None = None
        out = _TextSoFar(self.tokenizer, _eos_ids(self.model))
        kept = _KeptText(validate_stops(gen.get("stop_strings")))
        step = 0
        first_token_at = None
        # A token is mapped once its reading row (its own row as a query, captured by the
        # forward pass that predicts the next token) exists: one decoding step later. Tokens
        # whose text could still turn into a stop string wait in ``held`` (never mapped if it
        # does); released tokens wait in ``ready`` for their reading row.
        held: list[tuple[int, str, int, int]] = []  # position, token, span in the text
        ready: list[tuple[int, str, int, int]] = []

        def flush(wait_for_rows: bool) -> list[SentenceAttribution]:
            assert mapper is not None
            done: list[SentenceAttribution] = []
            while ready and (not wait_for_rows or ready[0][0] + 1 in session.rows):
                pos, token, a, b = ready.pop(0)
                mapping = mapper.map(session.row(pos), session.rows.get(pos + 1))
                session.release(pos)  # its row is read only here (the next token reads pos + 1)
                done.extend(assembler.add(kept.text[:b], token, a, b, mapping))
            return done

        try:
            for tok in decoding.tokens():
                position = prompt_len - 1 + step
                step += 1
                if mapper is None:
                    first_token_at = time.perf_counter()
                    refs = [session.row(p) for p in _reference_positions(layout, cfg) if p in session.rows]
                    mapper = TokenMapper.from_reference_rows(index, cfg.mapping, refs)
                if kept.stopped:  # past a stop string: nothing more is kept
                    continue
                done = flush(wait_for_rows=True)
                span = out.add(tok)
                if span is not None:
                    held.append((position, self.tokenizer.decode([tok]), *span))
                delta = kept.advance(out.text)
                ready.extend(kept.release(held))
                if delta:
                    yield TextDelta(text=delta, token_index=len(out.ids) - 1)
                for sentence in done:
                    yield SentenceEvent(sentence=sentence)
        except GeneratorExit:
            decoding.cancel()  # the consumer closed the stream: stop the decode thread too
            raise
        _finish_decoding(decoding, len(out.ids), kept.text)
        delta = kept.advance(out.final(), final=True)
        ready.extend(kept.release(held))
        if delta:  # the held-back tail, or a trailing incomplete character
            yield TextDelta(text=delta, token_index=len(out.ids) - 1)
        for sentence in flush(wait_for_rows=False):
            yield SentenceEvent(sentence=sentence)
        final_text = kept.text
        for sentence in assembler.finish(final_text):
            yield SentenceEvent(sentence=sentence)
        timings = {"total_s": time.perf_counter() - t0}
        if first_token_at is not None:
            timings["first_token_s"] = first_token_at - t0
        answer = self._answer(
            assembler,
            cfg,
            text=final_text,
            signal=signal.name,
            mode="generate",
            prompt_tokens=prompt_len,
            generated_tokens=step,
            finish_reason="stop" if kept.stopped else out.finish,
            timings=timings,
        )
        yield FinalEvent(answer=answer)

    def _stream_gradient_signal(
        self,
        srcs: list[Source],
        question: str,
        layout: PromptLayout,
        cfg: TracerConfig,
        gen: dict[str, Any],
        threaded: bool,
    ) -> Iterator[StreamEvent]:
        """Gradient signals: decode plainly (streaming text), then attribute teacher-forced."""
        decoding = self._start_decoding(layout, gen, None, threaded)
        out = _TextSoFar(self.tokenizer, _eos_ids(self.model))
        kept = _KeptText(validate_stops(gen.get("stop_strings")))
        try:
            for tok in decoding.tokens():
                if kept.stopped:
                    continue
                out.add(tok)
                if delta := kept.advance(out.text):
                    yield TextDelta(text=delta, token_index=len(out.ids) - 1)
        except GeneratorExit:
            decoding.cancel()
            raise
        _finish_decoding(decoding, len(out.ids), kept.text)
        if delta := kept.advance(out.final(), final=True):
            yield TextDelta(text=delta, token_index=len(out.ids) - 1)
        final_text = kept.text
        finish = "stop" if kept.stopped else out.finish
        if not final_text.strip():
            answer = self._empty_answer(srcs, layout, cfg, finish)
        else:
            answer = self._attribute_layout(
                srcs, layout, final_text, cfg, mode="generate", finish_reason=finish
            )
        for sentence in answer.sentences:
            yield SentenceEvent(sentence=sentence)
        yield FinalEvent(answer=answer)

    def _empty_answer(
        self, srcs: list[Source], layout: PromptLayout, cfg: TracerConfig, finish: str
    ) -> TracedAnswer:
        assembler = self._new_assembler(srcs, layout, cfg)
        return self._answer(
            assembler,
            cfg,
            text="",
            signal=self.signal_for(cfg.signal).name,
            mode="generate",
            prompt_tokens=len(layout.input_ids),
            generated_tokens=0,
            finish_reason=finish,
        )

    def _attribute_layout(
        self,
        srcs: list[Source],
        layout: PromptLayout,
        response: str,
        cfg: TracerConfig,
        mode: str,
        finish_reason: str | None,
    ) -> TracedAnswer:
        t0 = time.perf_counter()
        signal = self.signal_for(cfg.signal)
        forced = self.forced_rows(layout, response, signal)
        answer = self.assemble_forced(srcs, layout, forced, cfg, mode=mode, finish_reason=finish_reason)
        return answer.model_copy(update={"timings": {"attribution_s": time.perf_counter() - t0}})

    def forced_rows(self, layout: PromptLayout, response: str, signal: Signal) -> ForcedRows:
        """Run the teacher-forced pass: the response's tokens and one attention row per token.

        Separated from :meth:`assemble_forced` so evaluations can reuse the rows under many
        mapping / curation settings without re-running the model.
        """
        resp_ids, offsets = encode_plain(self.tokenizer, response)  # a control token in it stays text
        prompt_len = len(layout.input_ids)
        self._check_length(prompt_len, len(resp_ids))
        positions = list(range(prompt_len - 1, prompt_len - 1 + len(resp_ids)))
        ids = torch.tensor([layout.input_ids + resp_ids], device=self.model.device)
        if signal.needs_gradients:
            ref_positions = layout.reference_positions[-_GRAD_REFERENCE_ROWS:]
            rows = self._gradient_rows(
                signal, ids, [*ref_positions, *positions], _forced_inputs(layout.model_inputs, ids.shape[1])
            )
        else:
            ref_positions = layout.reference_positions
            # One row more than the tokens: the last token's own (reading) row.
            session = CaptureSession(
                signal,
                self.loaded.num_layers,
                prefill_positions=[*ref_positions, *positions, prompt_len - 1 + len(resp_ids)],
            )
            with capturing(session), torch.no_grad():
                self.model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    use_cache=False,
                    **_forced_inputs(layout.model_inputs, ids.shape[1]),
                )
            rows = session.rows
        return ForcedRows(
            response=response,
            token_ids=resp_ids,
            offsets=offsets,
            rows=[rows[p].cpu() for p in positions],
            reference_rows=[rows[p].cpu() for p in ref_positions if p in rows],
            signal=signal.name,
            reference_at=[p for p in ref_positions if p in rows],
            has_reading_rows=not signal.needs_gradients,
            next_row=(last.cpu() if (last := rows.get(prompt_len - 1 + len(resp_ids))) is not None else None),
        )

    def assemble_forced(
        self,
        srcs: list[Source],
        layout: PromptLayout,
        forced: ForcedRows,
        cfg: TracerConfig,
        mode: str = "attribute",
        finish_reason: str | None = None,
    ) -> TracedAnswer:
        """Map, chunk and curate precomputed forced rows into a result."""
        index = _unit_index(layout, cfg)
        ref_rows = forced.reference_rows
        if forced.reference_at is not None:
            wanted = set(_reference_positions(layout, cfg))
            ref_rows = [r for r, p in zip(ref_rows, forced.reference_at, strict=True) if p in wanted]
            if not ref_rows:  # e.g. a gradient signal's reference rows miss the header
                ref_rows = forced.reference_rows
        mapper = TokenMapper.from_reference_rows(index, cfg.mapping, ref_rows)
        assembler = self._new_assembler(srcs, layout, cfg)
        response, offsets = forced.response, forced.offsets
        for k, (tok, (a, b)) in enumerate(zip(forced.token_ids, offsets, strict=True)):
            mapping = mapper.map(forced.rows[k], forced.reading_row(k))
            # Offsets of byte-level tokens may overlap or be empty; keep them monotonic.
            start = max(a, offsets[k - 1][1] if k else 0)
            end = max(b, start)
            assembler.add(response[:end], self.tokenizer.decode([tok]), start, end, mapping)
        assembler.finish(response)
        return self._answer(
            assembler,
            cfg,
            text=response,
            signal=forced.signal,
            mode=mode,
            prompt_tokens=len(layout.input_ids),
            generated_tokens=len(forced.token_ids),
            finish_reason=finish_reason,
        )

    def _answer(
        self,
        assembler: SentenceAssembler,
        cfg: TracerConfig,
        *,
        text: str,
        signal: str,
        mode: str,
        prompt_tokens: int,
        generated_tokens: int,
        finish_reason: str | None,
        timings: dict[str, float] | None = None,
    ) -> TracedAnswer:
        """The one place a :class:`TracedAnswer` is built from an assembler (every decode path)."""
        return TracedAnswer(
            text=text,
            sentences=assembler.sentences,
            tokens=assembler.token_records(),
            sources=assembler.source_infos(),
            model=self.loaded.name,
            signal=signal,
            mode=mode,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated_tokens,
            finish_reason=finish_reason,
            config=cfg.model_dump(mode="json"),
            errors=assembler.errors,
            timings=timings or {},
        )

    def _gradient_rows(
        self, signal: Signal, ids: torch.Tensor, positions: list[int], model_inputs: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """Rows of ``reduce(attention * d logp / d attention)`` for each query position."""
        session = CaptureSession(signal, self.loaded.num_layers, grad_mode=True)
        with capturing(session), torch.enable_grad():
            logits = self.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **model_inputs
            ).logits
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            layers = sorted(session.grad_probs)
            probs = [session.grad_probs[layer] for layer in layers]
            rows: dict[int, torch.Tensor] = {}
            targets = ids[0]
            for pos in positions:
                if pos + 1 >= targets.shape[0]:
                    continue
                grads = torch.autograd.grad(logp[pos, targets[pos + 1]], probs, retain_graph=True)
                acc = None
                for layer, p, g in zip(layers, probs, grads, strict=True):
                    attn_x_grad = (p[0, :, pos, : pos + 1] * g[0, :, pos, : pos + 1]).float()
                    red = signal.reduce(attn_x_grad.unsqueeze(1), layer)
                    acc = red[0] if acc is None else acc + red[0]
                assert acc is not None
                rows[pos] = (acc / len(layers)).detach()
        return rows


def _check_config(config: Any) -> TracerConfig | None:
    """``None`` or a :class:`TracerConfig`; anything else is refused by name."""
    if config is None or isinstance(config, TracerConfig):
        return config
    hint = " (build one: TracerConfig(**that_dict))" if isinstance(config, dict) else ""
    if isinstance(config, str):
        hint = f" (a signal name goes in TracerConfig(signal={config!r}))"
    if isinstance(config, type):
        hint = " (the class itself: pass an instance, TracerConfig(...))"
    raise invalid("config", config, f"must be a TracerConfig, got {type(config).__name__}{hint}")


def _request_record(gen: dict[str, Any]) -> dict[str, Any]:
    """What observers see of the generation parameters: plain values, the stop strings and
    the kind of grammar (never the tokenizer or processor objects)."""
    out: dict[str, Any] = {k: v for k, v in gen.items() if isinstance(v, (int, float, str, bool))}
    if gen.get("stop_strings"):
        out["stop_sequences"] = list(gen["stop_strings"])
    for proc in gen.get("logits_processor") or []:
        if isinstance(proc, GrammarLogitsProcessor):
            out["grammar"] = proc.grammar.kind
    return out


def _encode_conversation(tokenizer: Any, prompt: str, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The rendered conversation's ids, each message's text encoded as plain text: a control
    token typed inside a message (``<|im_start|>``) stays characters and cannot open a turn."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for m in messages:
        content = str(m.get("content") or "")
        if not content:
            continue
        at = prompt.find(content, cursor)
        if at < 0:  # the template rewrote the text (e.g. tool results as a user turn): search all
            at = prompt.find(content)
        if at >= 0:
            spans.append((at, at + len(content)))
            cursor = at + len(content)
    ids, _ = encode_with_plain_spans(tokenizer, prompt, spans)
    return ids


def _reference_positions(layout: PromptLayout, cfg: TracerConfig) -> list[int]:
    """The prompt positions whose rows give the position-bias reference."""
    if cfg.mapping.prompt_reference == "header" and layout.header_positions:
        return layout.header_positions
    return layout.reference_positions


def _unit_index(layout: PromptLayout, cfg: TracerConfig) -> UnitIndex:
    """The layout's units, with the question as a competitor when the config asks for it."""
    asked = layout.question_positions if cfg.mapping.question_competes else []
    return UnitIndex(layout.units, cfg.mapping.exclude_first_positions, asked)


def _forced_inputs(model_inputs: dict[str, Any], total: int) -> dict[str, Any]:
    """Model inputs for a teacher-forced pass over ``total`` tokens: per-token inputs of the
    prompt (``mm_token_type_ids``: which tokens are image / video) extended as text (0)."""
    out = dict(model_inputs)
    for key in ("mm_token_type_ids", "token_type_ids"):
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.shape[-1] < total:
            pad = value.new_zeros((*value.shape[:-1], total - value.shape[-1]))
            out[key] = torch.cat([value, pad], dim=-1)
    return out


def _source_text(src: Source) -> str:
    """What observers may record of a source: its text, or a note naming a media file."""
    if isinstance(src, MediaSource):
        where = src.path or f"{len(src.data or b'')} bytes"
        return f"<{src.modality}: {where}>"
    return src.text


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {int(eos)}


def _model_name(model: Any) -> str:
    return str(getattr(model.config, "name_or_path", "") or type(model).__name__)
