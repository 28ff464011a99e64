"""``ChatOmniTrace``: a LangChain chat model over a local Hugging Face model that cites per sentence."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from omnitrace_core import InvalidInputError, SentenceAttribution, Tracer, TracerConfig
from omnitrace_core.models import DEFAULT_MODEL
from omnitrace_integrations.langchain.citations import (
    TEXT_BLOCK_INDEX,
    answer_metadata,
    answer_text_block,
    sentence_annotations,
    sentence_event_data,
)
from omnitrace_integrations.langchain.engine import (
    Event,
    Outcome,
    aiter_events,
    cancel_kwargs,
    plain_events,
    remote_plain_events,
    shared_tracer,
    traced_events,
)
from omnitrace_integrations.langchain.messages import ChatRequest, read_messages

logger = logging.getLogger("omnitrace.langchain")

#: Name of the custom callback event announcing a completed sentence and its citations.
CITATION_EVENT = "omnitrace_citation"

#: Per-call kwargs that ``ChatOmniTrace`` understands (others raise, naming them).
_GENERATION_KWARGS = frozenset(
    {"top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "seed"}
)


class ChatOmniTrace(BaseChatModel):
    """A drop-in chat model whose answers cite their sources, sentence by sentence.

    Runs a local Hugging Face decoder-only model through the OmniTrace tracer: while it
    decodes, each generated sentence is attributed to the sources it drew on. The answer is
    an ``AIMessage`` with one standard ``text`` block whose ``annotations`` are standard
    ``Citation``s (``start_index`` / ``end_index`` = the sentence's span in the answer).

    Sources come from ``text-plain`` / text ``file`` content blocks, ``ToolMessage`` output,
    or the ``sources=`` kwarg (``Document``s), e.g. ``model.invoke(q, sources=docs)`` or
    ``model.bind(sources=docs)``. Without sources it answers normally, without citations.

    Example:
        .. code-block:: python

            from langchain_core.documents import Document
            from omnitrace_integrations.langchain import ChatOmniTrace

            llm = ChatOmniTrace(max_tokens=64)  # the packaged SmolLM2-135M-Instruct
            docs = [Document("Valbrook Works was founded in 1905.", id="valbrook")]
            msg = llm.invoke("When was Valbrook Works founded?", sources=docs)
            for ann in msg.content[0].get("annotations", []):
                print(ann["id"], ann["start_index"], ann["end_index"], ann["extras"]["score"])

    Attributes:
        model_name: Packaged model name (``smollm2-135m``, ``qwen2.5-0.5b``), a local folder,
            or a hub id already on disk (alias ``model``). Weights load on first use, once
            per process, shared between instances.
        tracer: A ready ``omnitrace_core.Tracer`` to use instead.
        hf_model: An already loaded Hugging Face causal LM (with ``hf_tokenizer``); wrapped in
            a ``Tracer`` on first use.
        hf_tokenizer: Its tokenizer.
        tracer_config: Tracer configuration (signal, curation, generation defaults).
        max_tokens: Maximum new tokens (default: ``tracer_config.generation.max_new_tokens``).
        temperature: 0 / None = greedy (the paper's setting); > 0 samples.
        stop: Stop strings (the text ends with the matched stop string, as in transformers).
        timeout: Seconds after which decoding stops (transformers ``max_time``).
        streaming: Route ``invoke`` through the streaming path (same result).
        device: Device for loading (``cpu``, ``cuda``...); ``dtype``, ``device_map`` likewise.
        base_url: An ``omnitrace serve`` server to use instead of a local model
            (``http://host:8000``): the same citations, callbacks and message shape; the trace
            context goes along over HTTP. Needs the ``serve`` extra (httpx).
        api_key: The server's bearer token (default: ``OMNITRACE_API_KEY``).
    """

    model_config = ConfigDict(
        populate_by_name=True, protected_namespaces=(), arbitrary_types_allowed=True
    )

    model_name: str = Field(default=DEFAULT_MODEL, alias="model")
    tracer: Any = Field(default=None, exclude=True)
    hf_model: Any = Field(default=None, exclude=True)
    hf_tokenizer: Any = Field(default=None, exclude=True)
    tracer_config: TracerConfig | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = Field(default=None, gt=0.0)
    streaming: bool = False
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- identity ---------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "omnitrace"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "signal": (self.tracer_config or TracerConfig()).signal,
            **({"base_url": self.base_url} if self.base_url else {}),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="omnitrace",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, (int, float)):
            params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stops = stop or kwargs.get("stop") or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # -- loading ----------------------------------------------------------------------------
    def get_tracer(self) -> Any:
        """The tracer, loading the model on first use (once, thread-safe)."""
        if self.tracer is None:
            with self._lock:
                if self.tracer is None and self.hf_model is not None:
                    if self.hf_tokenizer is None:
                        raise InvalidInputError("hf_model needs hf_tokenizer (its tokenizer)")
                    self.tracer = Tracer(
                        self.hf_model, self.hf_tokenizer, config=self.tracer_config
                    )
                elif self.tracer is None and self.base_url is not None:
                    import os

                    from omnitrace_integrations.serving.client import RemoteTracer

                    key = (
                        self.api_key.get_secret_value()
                        if self.api_key
                        else os.environ.get("OMNITRACE_API_KEY")
                    )
                    self.tracer = RemoteTracer(self.base_url, api_key=key, timeout=self.timeout or 300.0)
                elif self.tracer is None:
                    self.tracer = shared_tracer(
                        self.model_name,
                        device=self.device,
                        dtype=self.dtype,
                        device_map=self.device_map,
                    )
        return self.tracer

    # -- request ----------------------------------------------------------------------------
    def _prepare(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancel: threading.Event,
    ) -> tuple[ChatRequest, Any]:
        """Read the messages and build a zero-argument event iterator factory."""
        kwargs = dict(kwargs)
        sources = kwargs.pop("sources", None)
        call_config = kwargs.pop("tracer_config", None)
        if kwargs.get("model") not in (None, self.model_name):
            raise InvalidInputError(
                f"per-call model override ({kwargs['model']!r}) is not supported: the model is fixed "
                f"at construction ({self.model_name!r}); create another ChatOmniTrace"
            )
        kwargs.pop("model", None)
        request = read_messages(messages, sources)
        tracer = self.get_tracer()
        gen = self._generation_kwargs(tracer, stop, kwargs)
        gen.update(cancel_kwargs(cancel))
        if request.sources:
            base = (
                call_config
                or self.tracer_config
                or getattr(tracer, "config", None)
                or TracerConfig()
            )
            cfg = base
            if request.system:
                cfg = base.model_copy(
                    update={"system_prompt": f"{base.system_prompt}\n{request.system}"}
                )

            def make() -> Iterator[Event]:
                return traced_events(tracer, request.sources, request.question, cfg, gen)

        else:
            logger.info("no sources in the input: answering without citations")

            def make() -> Iterator[Event]:
                if _is_remote(tracer):
                    return remote_plain_events(tracer, request.turns, gen)
                return plain_events(tracer, request.turns, gen)

        return request, make

    def _generation_kwargs(
        self, tracer: Any, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        gen: dict[str, Any] = {}
        max_tokens = (
            kwargs.pop("max_tokens", None) or kwargs.pop("max_new_tokens", None) or self.max_tokens
        )
        if max_tokens is not None:
            gen["max_new_tokens"] = int(max_tokens)
        temperature = kwargs.pop("temperature", self.temperature)
        if temperature:
            gen["do_sample"] = True
            gen["temperature"] = float(temperature)
        stops = list(stop or kwargs.pop("stop", None) or self.stop or [])
        kwargs.pop("stop", None)
        if stops:
            gen["stop_strings"] = stops
            gen["tokenizer"] = tracer.tokenizer
        if self.timeout is not None and not _is_remote(tracer):
            gen["max_time"] = float(self.timeout)
        for key in list(kwargs):
            if key in _GENERATION_KWARGS:
                gen[key] = kwargs.pop(key)
        kwargs.pop("stream", None)
        if kwargs:
            raise InvalidInputError(
                f"unsupported keyword argument(s) for ChatOmniTrace: {', '.join(sorted(kwargs))} "
                "(tool calling and structured output are not supported)"
            )
        if "seed" in gen and not _is_remote(tracer):  # a server seeds its own generator
            import torch

            torch.manual_seed(int(gen.pop("seed")))
        return gen

    # -- message building -------------------------------------------------------------------
    @staticmethod
    def _usage(outcome: Outcome) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=outcome.prompt_tokens,
            output_tokens=outcome.generated_tokens,
            total_tokens=outcome.prompt_tokens + outcome.generated_tokens,
        )

    @staticmethod
    def _metadata(outcome: Outcome) -> dict[str, Any]:
        if outcome.answer is not None:
            return answer_metadata(outcome.answer)
        return {"model_name": outcome.model, "finish_reason": outcome.finish_reason}

    def _message(self, outcome: Outcome) -> AIMessage:
        if outcome.answer is not None:
            block = answer_text_block(outcome.answer)
        else:
            block = {"type": "text", "text": outcome.text, "index": TEXT_BLOCK_INDEX}
        return AIMessage(
            content=[block],
            usage_metadata=self._usage(outcome),
            response_metadata=self._metadata(outcome),
        )

    # -- teacher-forced ---------------------------------------------------------------------
    def attribute_message(
        self,
        input: LanguageModelInput,
        response: str,
        *,
        sources: Any = None,
        tracer_config: TracerConfig | None = None,
    ) -> AIMessage:
        """Attribute a given ``response`` (e.g. another system's answer) teacher-forced.

        Returns the same message shape as ``invoke`` (citation annotations, usage,
        ``response_metadata["omnitrace"]``), so the helpers and :class:`GroundingCheck` apply.

        Raises:
            InvalidInputError: if there are no sources or the response is empty.
        """
        messages = self._convert_input(input).to_messages()
        request = read_messages(messages, sources)
        if not request.sources:
            raise InvalidInputError(
                "attribute_message needs sources (content blocks, tool output or sources=)"
            )
        tracer = self.get_tracer()
        cfg = (
            tracer_config or self.tracer_config or getattr(tracer, "config", None) or TracerConfig()
        )
        if request.system:
            cfg = cfg.model_copy(update={"system_prompt": f"{cfg.system_prompt}\n{request.system}"})
        answer = tracer.attribute(request.sources, request.question, response, config=cfg)
        outcome = Outcome(
            text=answer.text,
            answer=answer,
            prompt_tokens=answer.prompt_tokens,
            generated_tokens=answer.generated_tokens,
            finish_reason=answer.finish_reason or "stop",
            model=answer.model,
        )
        return self._message(outcome)

    # -- custom events ----------------------------------------------------------------------
    @staticmethod
    def _announce(
        run_manager: CallbackManagerForLLMRun | None, sentence: SentenceAttribution
    ) -> None:
        data = sentence_event_data(sentence, sentence_annotations(sentence))
        try:
            if run_manager is not None:
                CallbackManager(
                    handlers=run_manager.handlers,
                    inheritable_handlers=run_manager.inheritable_handlers,
                    parent_run_id=run_manager.parent_run_id,
                    tags=run_manager.tags,
                    metadata=run_manager.metadata,
                ).on_custom_event(CITATION_EVENT, data, run_id=run_manager.run_id)
            else:
                dispatch_custom_event(CITATION_EVENT, data)
        except RuntimeError as exc:
            if "parent run id" not in str(exc):
                logger.warning("citation event handler failed (answer unaffected): %r", exc)
        except Exception as exc:  # a raising handler never loses the answer
            logger.warning("citation event handler failed (answer unaffected): %r", exc)

    @staticmethod
    async def _aannounce(
        run_manager: AsyncCallbackManagerForLLMRun | None, sentence: SentenceAttribution
    ) -> None:
        data = sentence_event_data(sentence, sentence_annotations(sentence))
        try:
            if run_manager is not None:
                await AsyncCallbackManager(
                    handlers=run_manager.handlers,
                    inheritable_handlers=run_manager.inheritable_handlers,
                    parent_run_id=run_manager.parent_run_id,
                    tags=run_manager.tags,
                    metadata=run_manager.metadata,
                ).on_custom_event(CITATION_EVENT, data, run_id=run_manager.run_id)
            else:
                await adispatch_custom_event(CITATION_EVENT, data)
        except RuntimeError as exc:
            if "parent run id" not in str(exc):
                logger.warning("citation event handler failed (answer unaffected): %r", exc)
        except Exception as exc:
            logger.warning("citation event handler failed (answer unaffected): %r", exc)

    # -- chunks -----------------------------------------------------------------------------
    @staticmethod
    def _delta_chunk(text: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=[{"type": "text", "text": text, "index": TEXT_BLOCK_INDEX}]
            )
        )

    @staticmethod
    def _citation_chunk(sentence: SentenceAttribution) -> ChatGenerationChunk | None:
        annotations = sentence_annotations(sentence)
        if not annotations:
            return None
        block = {"type": "text", "text": "", "index": TEXT_BLOCK_INDEX, "annotations": annotations}
        return ChatGenerationChunk(message=AIMessageChunk(content=[block]))

    def _final_chunks(self, outcome: Outcome, emitted_text: bool) -> Iterator[ChatGenerationChunk]:
        if not emitted_text:  # keep one text block even for an empty answer (as invoke does)
            yield self._delta_chunk("")
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=[],
                usage_metadata=self._usage(outcome),
                response_metadata=self._metadata(outcome),
                chunk_position="last",
            )
        )

    # -- sync -------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        _, make = self._prepare(messages, stop, kwargs, cancel)
        outcome: Outcome | None = None
        events = make()
        try:
            for kind, value in events:
                if kind == "sentence":
                    self._announce(run_manager, value)
                elif kind == "final":
                    outcome = value
        finally:
            cancel.set()
            events.close()
        assert outcome is not None
        return ChatResult(generations=[ChatGeneration(message=self._message(outcome))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        cancel = threading.Event()
        _, make = self._prepare(messages, stop, kwargs, cancel)
        emitted = False
        events = make()
        try:
            for kind, value in events:
                if kind == "delta":
                    emitted = True
                    yield self._delta_chunk(value)
                elif kind == "sentence":
                    chunk = self._citation_chunk(value)
                    if chunk is not None:
                        yield chunk
                    self._announce(run_manager, value)
                elif kind == "final":
                    yield from self._final_chunks(value, emitted)
        finally:
            cancel.set()  # consumer stopped early: end decoding at the next token
            events.close()

    # -- async ------------------------------------------------------------------------------
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        await asyncio.to_thread(self.get_tracer)  # a first load never blocks the event loop
        _, make = self._prepare(messages, stop, kwargs, cancel)
        outcome: Outcome | None = None
        async for kind, value in aiter_events(make, cancel):
            if kind == "sentence":
                await self._aannounce(run_manager, value)
            elif kind == "final":
                outcome = value
        assert outcome is not None
        return ChatResult(generations=[ChatGeneration(message=self._message(outcome))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        cancel = threading.Event()
        await asyncio.to_thread(self.get_tracer)
        _, make = self._prepare(messages, stop, kwargs, cancel)
        emitted = False
        events = aiter_events(make, cancel)
        try:
            async for kind, value in events:
                if kind == "delta":
                    emitted = True
                    yield self._delta_chunk(value)
                elif kind == "sentence":
                    chunk = self._citation_chunk(value)
                    if chunk is not None:
                        yield chunk
                    await self._aannounce(run_manager, value)
                elif kind == "final":
                    for final in self._final_chunks(value, emitted):
                        yield final
        finally:
            cancel.set()
            await events.aclose()


def _is_remote(tracer: Any) -> bool:
    """Whether ``tracer`` is a server's (``RemoteTracer``) rather than a local model."""
    return type(tracer).__module__ == "omnitrace_integrations.serving.client"
