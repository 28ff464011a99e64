"""``ChatOmniTrace``: a LangChain chat model over a local Hugging Face model that cites per sentence."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableMap,
    RunnablePassthrough,
    ensure_config,
)
from langchain_core.runnables.config import ContextThreadPoolExecutor, get_config_list
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from langchain_core.utils.uuid import uuid7
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from omnitrace_core import Grammar, InvalidInputError, SentenceAttribution, Tracer, TracerConfig
from omnitrace_core.batch import BatchGate
from omnitrace_core.decoding import cancel_kwargs, close_objects, json_instruction
from omnitrace_core.media.paths import LocalMediaPolicy
from omnitrace_core.models import DEFAULT_MODEL, LoadedModel, config_context_window, stored_config
from omnitrace_core.tools import render_prompt, resolve_choice
from omnitrace_core.validation import check_number, check_positive_int, check_stop_strings, invalid
from omnitrace_integrations.langchain.citations import (
    TEXT_BLOCK_INDEX,
    answer_metadata,
    answer_text_block,
    sentence_annotations,
    sentence_event_data,
    with_field_citations,
)
from omnitrace_integrations.langchain.engine import (
    Event,
    Outcome,
    aiter_events,
    plain_events,
    remote_plain_events,
    shared_tracer,
    traced_events,
)
from omnitrace_integrations.langchain.messages import ChatRequest, read_messages
from omnitrace_integrations.langchain.tools import (
    choice_name,
    conversation_turns,
    tool_call_chunks,
    tool_call_message_fields,
    tool_specs,
)

logger = logging.getLogger("omnitrace.langchain")


def _json_schema(schema: dict[str, Any] | type) -> dict[str, Any]:
    """A JSON schema for a pydantic class, TypedDict, JSON schema or OpenAI tool dict."""
    if isinstance(schema, dict) and schema.get("type") == "function" and "function" in schema:
        return dict(schema["function"].get("parameters") or {"type": "object"})
    if isinstance(schema, dict) and "parameters" in schema and "name" in schema:
        return dict(schema["parameters"])
    out = convert_to_json_schema(schema)
    return {k: v for k, v in out.items() if k not in ("title", "description")} | (
        {"title": out["title"]} if "title" in out else {}
    )


def _require_complete(message: AIMessage) -> AIMessage:
    """Structured output is parsed only from a complete reply: a reply the token limit cut is
    refused (a partial JSON object would otherwise parse into a wrong, partial result)."""
    if message.response_metadata.get("finish_reason") == "length":
        raise OutputParserException(
            "the structured reply was cut by the token limit before it was complete: raise max_tokens",
            llm_output=message.text,
        )
    return message


def _with_system(turns: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``turns`` with ``text`` added to the system turn (one is made if there is none)."""
    if turns and turns[0]["role"] == "system":
        return [{**turns[0], "content": f"{turns[0]['content']}\n{text}"}, *turns[1:]]
    return [{"role": "system", "content": text}, *turns]


#: Name of the custom callback event announcing a completed sentence and its citations.
CITATION_EVENT = "omnitrace_citation"

#: The config (with its fixed ``run_id``) of the ``stream`` / ``astream`` call in progress.
_RUN_CONFIG: ContextVar[RunnableConfig | None] = ContextVar("omnitrace_run_config", default=None)


class _BatchTicket:
    """One input's seat at a :class:`~omnitrace_core.batch.BatchGate` during ``batch`` /
    ``abatch``: it either decodes through the gate or leaves it, exactly once, so the other
    inputs never wait for an input that will not come (a tool turn, a cache hit, an error)."""

    def __init__(self, gate: BatchGate, leave_early: bool = True) -> None:
        self.gate = gate
        self.leave_early = leave_early  # False in abatch: leaving may decode, not on the loop
        self.counted = False
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Claim the seat; False if it was already counted."""
        with self._lock:
            if self.counted:
                return False
            self.counted = True
            return True

    def leave(self) -> None:
        if self.take():
            self.gate.leave()


_BATCH_TICKET: ContextVar[_BatchTicket | None] = ContextVar("omnitrace_batch_ticket", default=None)

#: Per-call kwargs that ``ChatOmniTrace`` understands (others raise, naming them).
_GENERATION_KWARGS = frozenset({"top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "seed"})


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
        media_root: A folder from which media content blocks may name local files (``path`` or
            ``file://`` URL); paths must resolve inside it (symlinks and ``..`` followed). Without
            it (and without ``allowed_media_paths``) local paths in messages are refused: a user
            message could otherwise make the model read any file on this machine.
        allowed_media_paths: Explicit local files media blocks may name, wherever they are.
        base_url: An ``omnitrace serve`` server to use instead of a local model
            (``http://host:8000``): the same citations, callbacks and message shape; the trace
            context goes along over HTTP. Needs the ``serve`` extra (httpx).
        api_key: The server's bearer token (default: ``OMNITRACE_API_KEY``).
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), arbitrary_types_allowed=True)

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
    media_root: str | None = None
    allowed_media_paths: list[str] | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _media_policy: LocalMediaPolicy | None = PrivateAttr(default=None)

    def media_policy(self) -> LocalMediaPolicy:
        """Which local files media blocks may name (built from ``media_root`` / ``allowed_media_paths``)."""
        if self._media_policy is None:
            self._media_policy = LocalMediaPolicy.create(self.media_root, self.allowed_media_paths)
        return self._media_policy

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
        if isinstance(stops, str):
            stops = [stops]
        if isinstance(stops, (list, tuple)) and stops:  # tracing metadata only: checked when used
            params["ls_stop"] = [str(s) for s in stops]
        return params

    # -- loading ----------------------------------------------------------------------------
    def get_tracer(self) -> Any:
        """The tracer, loading the model on first use (once, thread-safe)."""
        if self.tracer is None:
            with self._lock:
                if self.tracer is None and self.hf_model is not None:
                    if self.hf_tokenizer is None:
                        raise InvalidInputError("hf_model needs hf_tokenizer (its tokenizer)")
                    self.tracer = Tracer(self.hf_model, self.hf_tokenizer, config=self.tracer_config)
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
                if isinstance(self.profile, dict) and "max_input_tokens" not in self.profile:
                    self.profile.update(self._loaded_profile() or {})  # now the config is known
        return self.tracer

    def _loaded_tokenizer(self) -> Any:
        tokenizer = getattr(self.get_tracer(), "tokenizer", None)
        if tokenizer is None:
            raise InvalidInputError("the tracer has no tokenizer: cannot count tokens")
        return tokenizer

    # -- tokens -----------------------------------------------------------------------------
    def get_token_ids(self, text: str) -> list[int]:
        """The token ids of ``text`` under the model's own tokenizer (loaded with the model, on
        first use; nothing is downloaded). ``custom_get_token_ids`` still wins when set."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self._loaded_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The prompt length in tokens that ``invoke(messages)`` would send: the chat-template
        prompt for a conversation (with ``tools`` shown as a tool turn shows them), or the
        tracer's source layout when the messages carry sources (what ``usage_metadata
        ["input_tokens"]`` reports)."""
        tracer = self.get_tracer()
        tokenizer = self._loaded_tokenizer()
        request = read_messages(messages, None, require_question=False)
        if request.sources and not tools and request.question and hasattr(tracer, "layout"):
            cfg = self.tracer_config or getattr(tracer, "config", None) or TracerConfig()
            if request.system:
                cfg = cfg.model_copy(update={"system_prompt": f"{cfg.system_prompt}\n{request.system}"})
            return len(tracer.layout(request.sources, request.question, cfg).input_ids)
        specs = tool_specs([convert_to_openai_tool(t) for t in tools or []])
        prompt = render_prompt(tokenizer, conversation_turns(messages), specs)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    # -- profile ----------------------------------------------------------------------------
    def _resolve_model_profile(self) -> ModelProfile | None:
        """What this model can do, without loading it: tool calling, tool choice and structured
        output (grammar-constrained: needs the ``structured`` extra), text in and out, open
        weights, and ``max_input_tokens`` from the model's ``config.json`` (a given tracer or
        model, a local folder, or a packaged model converted by an earlier load; otherwise it
        is added on first load)."""
        grammar = importlib.util.find_spec("llguidance") is not None
        profile = ModelProfile(
            name=self.model_name,
            open_weights=True,
            text_inputs=True,
            text_outputs=True,
            image_outputs=False,
            audio_outputs=False,
            video_outputs=False,
            reasoning_output=False,
            tool_calling=grammar,
            tool_choice=grammar,
            tool_call_streaming=grammar,
            structured_output=grammar,
            temperature=True,
        )
        profile.update(self._loaded_profile() or self._stored_profile())
        return profile

    def _stored_profile(self) -> ModelProfile:
        config = stored_config(self.model_name)
        window = config_context_window(config) if config else None
        out = ModelProfile()
        if window:
            out["max_input_tokens"] = window
        media_keys = ("vision_config", "audio_config", "thinker_config")
        if config is not None and not any(k in config for k in media_keys):  # a text-only model
            out.update(ModelProfile(image_inputs=False, audio_inputs=False, video_inputs=False))
        return out

    def _loaded_profile(self) -> ModelProfile | None:
        loaded = getattr(self.tracer, "loaded", None)
        if loaded is None and self.hf_model is not None:
            loaded = LoadedModel(self.hf_model, self.hf_tokenizer, self.model_name)
        if loaded is None:
            return None
        modalities: frozenset[str] = getattr(
            getattr(self.tracer, "prompt_builder", None), "modalities", frozenset()
        )
        out = ModelProfile(
            name=str(loaded.name),
            image_inputs="image" in modalities,
            audio_inputs="audio" in modalities,
            video_inputs="video" in modalities,
        )
        with contextlib.suppress(Exception):
            out["max_input_tokens"] = int(loaded.context_window)
        return out

    # -- tools and structured output -------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: the model may call them (``tool_choice="auto"``, the default), must call
        one (``"any"`` / ``"required"``), must call a named one, or none (``"none"``).

        The call is decoded under a grammar (the ``structured`` extra), so it always parses into
        ``AIMessage.tool_calls`` with arguments valid for the tool's schema;
        ``parallel_tool_calls`` allows several calls in one reply. Tools are shown through the
        model's chat template when it takes ``tools`` (Qwen2.5), otherwise through a fallback
        system text (SmolLM2; ``omnitrace_core.tools.FALLBACK_TOOL_PROMPT``). Once the input
        holds tool results, ``auto`` answers from them and cites them (``ToolMessage`` ->
        source named by the tool and call id); a forced choice calls again.

        Raises:
            InvalidInputError: a tool that is not a function schema, or an unknown tool_choice.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        specs = tool_specs(formatted)
        if tool_choice is not None:
            resolve_choice(specs, choice_name(tool_choice))  # fail now, naming the problem
        return super().bind(
            tools=formatted, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, **kwargs
        )

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers parsed into ``schema`` (a pydantic class, TypedDict, JSON schema or tool).

        ``json_schema`` (default): the reply is decoded under the schema's grammar and parsed;
        ``function_calling``: the schema is bound as a tool the model must call; ``json_mode``:
        any JSON object (``schema`` optional). With sources the JSON answer is traced like any
        other (``include_raw=True`` keeps the raw message and its citations). With
        ``json_schema`` / ``json_mode`` the raw message also gets per-field citations in
        ``response_metadata["field_citations"]`` (each leaf field's JSON path, its value's span
        in the JSON text and the sources its tokens drew on; read them with
        :func:`omnitrace_integrations.langchain.field_citations`).
        """
        if kwargs:
            raise InvalidInputError(f"unsupported arguments for with_structured_output: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            if schema is None:
                raise InvalidInputError("method='function_calling' needs a schema")
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm: Runnable[LanguageModelInput, Any] = self.bind_tools(
                [schema],
                tool_choice=tool_name,
                parallel_tool_calls=False,
                strict=strict,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser: Runnable[Any, Any] = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema" and schema is None:
                raise InvalidInputError("method='json_schema' needs a schema (or use method='json_mode')")
            if schema is None:
                json_schema: dict[str, Any] = {"type": "object"}
                instruction = json_instruction(None)
            else:
                json_schema = _json_schema(schema)
                instruction = json_instruction(json_schema)
            if method == "json_mode":
                json_schema = {"type": "object"}
            llm = self.bind(
                grammar=Grammar.json_schema(close_objects(json_schema)),
                format_instruction=instruction,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            ) | RunnableLambda(with_field_citations)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        else:
            raise InvalidInputError(
                f"method {method!r} is not one of 'json_schema', 'function_calling', 'json_mode'"
            )
        parser = RunnableLambda(_require_complete) | parser
        if include_raw:
            parser_assign = RunnablePassthrough.assign(
                parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
            )
            parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
            with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
            return RunnableMap(raw=llm) | with_fallback
        return llm | parser

    # -- request ----------------------------------------------------------------------------
    def _prepare(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancel: threading.Event,
    ) -> tuple[ChatRequest, Any, tuple[str, ...]]:
        """Read the messages and build a zero-argument event iterator factory.

        Returns the request, the factory, and for a tool-call turn the bound tools' names (its
        text is then parsed into ``tool_calls``; empty: not a tool turn).
        """
        kwargs = dict(kwargs)
        sources = kwargs.pop("sources", None)
        call_config = kwargs.pop("tracer_config", None)
        tools = tool_specs(kwargs.pop("tools", None))
        choice = resolve_choice(tools, choice_name(kwargs.pop("tool_choice", None))) if tools else "none"
        parallel = bool(kwargs.pop("parallel_tool_calls", True))
        kwargs.pop("ls_structured_output_format", None)
        grammar = kwargs.pop("grammar", None)
        instruction = kwargs.pop("format_instruction", None)
        if kwargs.get("model") not in (None, self.model_name):
            raise InvalidInputError(
                f"per-call model override ({kwargs['model']!r}) is not supported: the model is fixed "
                f"at construction ({self.model_name!r}); create another ChatOmniTrace"
            )
        kwargs.pop("model", None)
        request = read_messages(messages, sources, self.media_policy(), require_question=False)
        tracer = self.get_tracer()
        gen = self._generation_kwargs(tracer, stop, kwargs)
        ticket = _BATCH_TICKET.get()
        batched_gen = dict(gen)  # a batch has no per-input cancel: every row decodes to its end
        gen.update(cancel_kwargs(cancel))
        # A tool turn: tools are bound and either a call is forced or there is no tool result
        # yet to answer from. Once results are in, ``auto`` answers from them, citing them.
        tool_turn = bool(tools) and choice != "none" and (choice != "auto" or not request.sources)
        alone = tool_turn or grammar is not None or not request.sources
        if ticket is not None and ticket.leave_early and alone:
            ticket.leave()  # answered alone: the batch's other inputs need not wait for it
        if tool_turn:
            # The tracer (local, or the server behind a RemoteTracer) decodes under the
            # tool-call grammar for this choice.
            turns = conversation_turns(messages)
            if instruction:
                turns = _with_system(turns, instruction)

            def make() -> Iterator[Event]:
                return plain_events(tracer, turns, gen, tools, parallel, choice)

            return request, make, tuple(t.name for t in tools)
        if grammar is not None:
            gen["grammar"] = grammar
        if request.sources:
            if not request.question:
                raise InvalidInputError("no question: the messages contain no human text to answer")
            base = call_config or self.tracer_config or getattr(tracer, "config", None) or TracerConfig()
            extra = "\n".join(x for x in (request.system, instruction) if x)
            cfg = base
            if extra:
                cfg = base.model_copy(update={"system_prompt": f"{base.system_prompt}\n{extra}"})

            if ticket is not None and "grammar" not in gen and not _is_remote(tracer):

                def make() -> Iterator[Event]:
                    # batch / abatch: decode with the other inputs, replay this row here
                    if not ticket.take():
                        return traced_events(tracer, request.sources, request.question, cfg, gen)
                    return traced_events(ticket.gate, request.sources, request.question, cfg, batched_gen)

                return request, make, ()

            def make() -> Iterator[Event]:
                return traced_events(tracer, request.sources, request.question, cfg, gen)

        else:
            logger.info("no sources in the input: answering without citations")
            turns = conversation_turns(messages)
            if instruction:
                turns = _with_system(turns, instruction)

            def make() -> Iterator[Event]:
                if _is_remote(tracer) and "grammar" not in gen:
                    return remote_plain_events(tracer, turns, gen)
                return plain_events(tracer, turns, gen)

        return request, make, ()

    def _generation_kwargs(
        self, tracer: Any, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        gen: dict[str, Any] = {}
        max_tokens = kwargs.pop("max_tokens", None)
        if max_tokens is None:
            max_tokens = kwargs.pop("max_new_tokens", None)
        kwargs.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = self.max_tokens
        if max_tokens is not None:
            gen["max_new_tokens"] = check_positive_int(max_tokens, "max_tokens")
        temperature = kwargs.pop("temperature", self.temperature)
        if temperature is not None:
            temperature = check_number(temperature, "temperature", low=0.0)
        if temperature:
            gen["do_sample"] = True
            gen["temperature"] = float(temperature)
        call_stop = kwargs.pop("stop", None)
        raw_stops = stop if stop is not None else call_stop if call_stop is not None else self.stop
        stops = check_stop_strings(raw_stops, "stop") if raw_stops is not None else []
        if stops:
            gen["stop"] = stops
        if self.timeout is not None and not _is_remote(tracer):
            gen["max_time"] = float(self.timeout)
        for key in list(kwargs):
            if key in _GENERATION_KWARGS:
                gen[key] = kwargs.pop(key)
        kwargs.pop("stream", None)
        if kwargs:
            raise InvalidInputError(
                f"unsupported keyword argument(s) for ChatOmniTrace: {', '.join(sorted(kwargs))} "
                "(supported: sources, tracer_config, max_tokens, temperature, stop, tools, tool_choice, "
                f"parallel_tool_calls, {', '.join(sorted(_GENERATION_KWARGS))})"
            )
        if "seed" in gen and not _is_remote(tracer):  # a server seeds its own generator
            import torch

            seed = gen.pop("seed")
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise invalid("seed", seed, "must be a whole number >= 0")
            torch.manual_seed(seed)
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

    @staticmethod
    def _tool_turn_text(text: str) -> list[Any]:
        """A tool turn's content: its text beside the calls as one text block, or none."""
        return [{"type": "text", "text": text, "index": TEXT_BLOCK_INDEX}] if text else []

    def _message(self, outcome: Outcome, tool_turn: tuple[str, ...] = ()) -> AIMessage:
        if tool_turn:
            parsed, fields = tool_call_message_fields(outcome.text, tool_turn)
            return AIMessage(
                content=self._tool_turn_text(parsed.text),
                usage_metadata=self._usage(outcome),
                response_metadata=self._metadata(outcome),
                **fields,
            )
        if outcome.answer is not None:
            block = answer_text_block(outcome.answer)
        else:
            block = {"type": "text", "text": outcome.text, "index": TEXT_BLOCK_INDEX}
        return AIMessage(
            content=[block],
            usage_metadata=self._usage(outcome),
            response_metadata=self._metadata(outcome),
        )

    def _tool_turn_chunks(self, outcome: Outcome, names: tuple[str, ...]) -> Iterator[ChatGenerationChunk]:
        """A tool turn streams as one chunk: its text (if any) and whole tool-call chunks."""
        parsed, fields = tool_call_message_fields(outcome.text, names)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=self._tool_turn_text(parsed.text),
                tool_call_chunks=tool_call_chunks(parsed),
                invalid_tool_calls=fields["invalid_tool_calls"],
            )
        )
        yield self._last_chunk(outcome)

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
        request = read_messages(messages, sources, self.media_policy())
        if not request.sources:
            raise InvalidInputError(
                "attribute_message needs sources (content blocks, tool output or sources=)"
            )
        tracer = self.get_tracer()
        cfg = tracer_config or self.tracer_config or getattr(tracer, "config", None) or TracerConfig()
        if request.system:
            cfg = cfg.model_copy(update={"system_prompt": f"{cfg.system_prompt}\n{request.system}"})
        answer = tracer.attribute(request.sources, request.question, response, config=cfg)
        return self._message(Outcome.from_answer(answer))

    # -- custom events ----------------------------------------------------------------------
    # LangChain's ``stream`` / ``astream`` call ``_stream`` / ``_astream`` without a run manager,
    # so a bare model (no enclosing runnable) had no run to attach the citation event to and
    # ``dispatch_custom_event`` refused it. ``stream`` / ``astream`` below fix the run id in the
    # config and leave the config in a context variable, so the event goes to the callbacks of
    # this model's own run (``astream_events`` on the bare model included).
    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        with _own_run(config) as run_config:
            yield from super().stream(input, run_config, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        with _own_run(config) as run_config:
            async for chunk in super().astream(input, run_config, stop=stop, **kwargs):
                yield chunk

    # -- batch ------------------------------------------------------------------------------
    # LangChain's default ``batch`` runs ``invoke`` per input in a thread pool: each input then
    # decodes alone, one model call after another. Here every input still runs its own
    # ``invoke`` (its callbacks, run id, cache lookup, context and spans are untouched), but
    # the inputs of a group share one batched decoding through a BatchGate: each waits at the
    # gate, the rows are decoded together, and each replays its own row (text, citations,
    # observer events) in its own thread, so its message equals ``invoke`` on it alone.
    def _batch_groups(self, inputs: list[Any], configs: list[RunnableConfig]) -> list[range] | None:
        """Groups of input indices to decode together, or None for LangChain's own path
        (one input has nothing to share; a server's RemoteTracer or another tracer-like object
        decodes each request itself)."""
        if len(inputs) < 2 or not isinstance(self.get_tracer(), Tracer):
            return None
        cap = configs[0].get("max_concurrency") or len(inputs)
        return [range(k, min(k + cap, len(inputs))) for k in range(0, len(inputs), cap)]

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """``invoke`` on every input, decoding the inputs that have sources together.

        Inputs with sources decode together through :meth:`Tracer.generate_batch`'s batched
        decoding, ``config["max_concurrency"]`` of them at a time (default: all); each gets
        the message ``invoke`` gives it alone (text, citation annotations, usage, metadata),
        and its own callbacks (``on_chat_model_start`` / ``on_llm_end``, citation events) and
        span. Inputs without sources, tool turns, structured output (a grammar) and inputs
        whose generation options differ are answered by their own decoding, as with
        ``invoke``. ``return_exceptions``: a failing input's exception takes its slot.
        """
        configs = get_config_list(config, len(inputs))
        groups = self._batch_groups(inputs, configs)
        if groups is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        tracer = self.get_tracer()
        results: list[Any] = [None] * len(inputs)
        for group in groups:
            gate = BatchGate(tracer, len(group))

            def run(i: int, gate: BatchGate = gate) -> Any:
                ticket = _BatchTicket(gate)
                token = _BATCH_TICKET.set(ticket)
                try:
                    return self.invoke(inputs[i], configs[i], **kwargs)
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    return exc
                finally:
                    ticket.leave()  # never came to the gate (cache hit, early error): stop waiting
                    _BATCH_TICKET.reset(token)

            with ContextThreadPoolExecutor(max_workers=len(group)) as pool:
                for i, out in zip(group, pool.map(run, group), strict=True):
                    results[i] = out
        return results

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """``ainvoke`` on every input, decoding the inputs that have sources together (as
        :meth:`batch`; the decoding runs in worker threads, never on the event loop)."""
        configs = get_config_list(config, len(inputs))
        groups = await asyncio.to_thread(self._batch_groups, inputs, configs)
        if groups is None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        tracer = self.get_tracer()
        results: list[Any] = [None] * len(inputs)
        for group in groups:
            gate = BatchGate(tracer, len(group))

            async def run(i: int, gate: BatchGate = gate) -> Any:
                ticket = _BatchTicket(gate, leave_early=False)
                _BATCH_TICKET.set(ticket)  # this task's own context copy
                try:
                    return await self.ainvoke(inputs[i], configs[i], **kwargs)
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    return exc
                finally:
                    # leave() may decode for the others: never on the event loop
                    await asyncio.to_thread(ticket.leave)

            outs = await asyncio.gather(*(run(i) for i in group))
            for i, out in zip(group, outs, strict=True):
                results[i] = out
        return results

    def _run_target(self) -> tuple[RunnableConfig, Any] | None:
        config = _RUN_CONFIG.get()
        if config is None or config.get("run_id") is None:
            return None
        return config, config["run_id"]

    def _event_manager(
        self, run_manager: Any, manager_cls: type[CallbackManager] | type[AsyncCallbackManager]
    ) -> tuple[Any, Any] | None:
        """The callback manager (of ``manager_cls``, sync or async) and run id a citation event
        goes to: this call's run, else the run ``stream`` / ``astream`` fixed; None: no run of
        this model's own (the event is dispatched to the enclosing runnable, if any)."""
        if run_manager is not None:
            manager = manager_cls(
                handlers=run_manager.handlers,
                inheritable_handlers=run_manager.inheritable_handlers,
                parent_run_id=run_manager.parent_run_id,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )
            return manager, run_manager.run_id
        target = self._run_target()
        if target is None:
            return None
        config, run_id = target
        manager = manager_cls.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        return manager, run_id

    def _announce(self, run_manager: CallbackManagerForLLMRun | None, sentence: SentenceAttribution) -> None:
        data = sentence_event_data(sentence, sentence_annotations(sentence))
        try:
            found = self._event_manager(run_manager, CallbackManager)
            if found is None:
                dispatch_custom_event(CITATION_EVENT, data)
            else:
                found[0].on_custom_event(CITATION_EVENT, data, run_id=found[1])
        except Exception as exc:  # a raising handler never loses the answer
            _handler_failed(exc)

    async def _aannounce(
        self, run_manager: AsyncCallbackManagerForLLMRun | None, sentence: SentenceAttribution
    ) -> None:
        data = sentence_event_data(sentence, sentence_annotations(sentence))
        try:
            found = self._event_manager(run_manager, AsyncCallbackManager)
            if found is None:
                await adispatch_custom_event(CITATION_EVENT, data)
            else:
                await found[0].on_custom_event(CITATION_EVENT, data, run_id=found[1])
        except Exception as exc:
            _handler_failed(exc)

    # -- chunks -----------------------------------------------------------------------------
    @staticmethod
    def _delta_chunk(text: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(content=[{"type": "text", "text": text, "index": TEXT_BLOCK_INDEX}])
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
        yield self._last_chunk(outcome)

    def _last_chunk(self, outcome: Outcome) -> ChatGenerationChunk:
        """The closing chunk of a stream: usage and metadata, no content."""
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=[],
                usage_metadata=self._usage(outcome),
                response_metadata=self._metadata(outcome),
                chunk_position="last",
            )
        )

    def _event_chunks(
        self, kind: str, value: Any, tool_turn: tuple[str, ...], emitted_text: bool
    ) -> tuple[list[ChatGenerationChunk], bool]:
        """The chunks one engine event becomes, and whether answer text has been sent.

        Shared by ``_stream`` and ``_astream`` so both stream the same chunks; they differ
        only in how they announce a sentence (:meth:`_announce` / :meth:`_aannounce`). A
        tool turn is sent whole at its end (its text is a call until parsed).
        """
        if tool_turn:
            return (list(self._tool_turn_chunks(value, tool_turn)) if kind == "final" else []), emitted_text
        if kind == "delta":
            return [self._delta_chunk(value)], True
        if kind == "sentence":
            chunk = self._citation_chunk(value)
            return ([] if chunk is None else [chunk]), emitted_text
        if kind == "final":
            return list(self._final_chunks(value, emitted_text)), emitted_text
        return [], emitted_text

    def _result(self, outcome: Outcome | None, tool_turn: tuple[str, ...]) -> ChatResult:
        """``_generate`` / ``_agenerate``'s result from the generation's final outcome."""
        if outcome is None:
            raise RuntimeError("the generation ended without a final result (no 'final' event)")
        return ChatResult(generations=[ChatGeneration(message=self._message(outcome, tool_turn))])

    # -- sync -------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        _, make, tool_turn = self._prepare(messages, stop, kwargs, cancel)
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
        return self._result(outcome, tool_turn)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        cancel = threading.Event()
        _, make, tool_turn = self._prepare(messages, stop, kwargs, cancel)
        emitted = False
        events = make()
        try:
            for kind, value in events:
                chunks, emitted = self._event_chunks(kind, value, tool_turn, emitted)
                yield from chunks
                if kind == "sentence" and not tool_turn:
                    self._announce(run_manager, value)
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
        _, make, tool_turn = self._prepare(messages, stop, kwargs, cancel)
        outcome: Outcome | None = None
        async for kind, value in aiter_events(make, cancel):
            if kind == "sentence":
                await self._aannounce(run_manager, value)
            elif kind == "final":
                outcome = value
        return self._result(outcome, tool_turn)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        cancel = threading.Event()
        await asyncio.to_thread(self.get_tracer)
        _, make, tool_turn = self._prepare(messages, stop, kwargs, cancel)
        emitted = False
        events = aiter_events(make, cancel)
        try:
            async for kind, value in events:
                chunks, emitted = self._event_chunks(kind, value, tool_turn, emitted)
                for chunk in chunks:
                    yield chunk
                if kind == "sentence" and not tool_turn:
                    await self._aannounce(run_manager, value)
        finally:
            cancel.set()
            await events.aclose()


@contextlib.contextmanager
def _own_run(config: RunnableConfig | None) -> Iterator[RunnableConfig]:
    """``config`` with this call's run id fixed (the caller's, else a new one), left in
    :data:`_RUN_CONFIG` while the stream runs so a citation event finds its run."""
    config = ensure_config(config)
    config = {**config, "run_id": config.get("run_id") or uuid7()}
    token = _RUN_CONFIG.set(config)
    try:
        yield config
    finally:
        with contextlib.suppress(ValueError):  # finalised in another context
            _RUN_CONFIG.reset(token)


def _handler_failed(exc: Exception) -> None:
    """Log a citation event that could not be delivered; the answer is unaffected. Outside any
    run (a bare model with no run id) the dispatch refuses with a ``parent run id`` error:
    there is no one to tell, so that one is silent."""
    if isinstance(exc, RuntimeError) and "parent run id" in str(exc):
        return
    logger.warning("citation event handler failed (answer unaffected): %r", exc)


def _is_remote(tracer: Any) -> bool:
    """Whether ``tracer`` is a server's (``RemoteTracer``) rather than a local model."""
    return type(tracer).__module__ == "omnitrace_integrations.serving.client"
