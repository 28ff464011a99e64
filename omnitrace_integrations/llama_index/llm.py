"""``OmniTraceLLM``: a LlamaIndex LLM whose answers cite their sources from attention.

Sources come from ``CitableBlock`` / ``DocumentBlock`` content in the chat messages, from
``tool`` messages (a tool's result, cited as ``<tool name>:<call id>``), or from the
``sources=`` keyword (nodes, ``NodeWithScore``, ``TextSource`` or dicts). The answer comes back
as a ``ChatResponse`` whose message blocks are the answer text followed by one
``CitationBlock`` per cited unit per sentence, with the whole core result (JSON-safe) in
``additional_kwargs["omnitrace"]``.

``response.raw`` of a finished answer is a dict: ``usage`` (``prompt_tokens``,
``completion_tokens``, ``total_tokens``: what LlamaIndex's ``TokenCountingHandler`` reads),
``finish_reason``, ``model`` and ``omnitrace`` (the :class:`omnitrace_core.TracedAnswer`, None
without sources); :func:`traced_answer` returns the latter from any final response.

It is a ``FunctionCallingLLM``: ``chat_with_tools`` / ``predict_and_call`` / LlamaIndex agents
call tools under a grammar (the ``structured`` extra), so every call parses into
``ToolCallBlock``s with arguments valid for the tool's schema; ``structured_predict`` /
``as_structured_llm`` decode under the output class's JSON schema.

Without sources (e.g. LlamaIndex's own prompts) it generates plainly with the same model
and reports ``additional_kwargs["omnitrace"] = None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CitationBlock,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.structured_llm import StructuredLLM
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.program.utils import create_flexible_model
from llama_index.core.prompts import ChatPromptTemplate
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import PydanticProgramMode
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from omnitrace_core import (
    Citation,
    FinalEvent,
    InvalidInputError,
    SentenceAttribution,
    SentenceEvent,
    TextDelta,
    TracedAnswer,
    Tracer,
    TracerConfig,
)
from omnitrace_core.decoding import Grammar, close_objects, json_instruction
from omnitrace_core.media.paths import LocalMediaPolicy
from omnitrace_core.structured import FieldCitation
from omnitrace_core.structured import field_citations as core_field_citations
from omnitrace_core.tools import ToolSpec, parse_tool_calls
from omnitrace_integrations.llama_index.events import AttributionSpan
from omnitrace_integrations.llama_index.labels import SourceLabels
from omnitrace_integrations.llama_index.sources import (
    ParsedMessages,
    SourceLike,
    coerce_sources,
    parse_messages,
)
from omnitrace_integrations.llama_index.tools import (
    conversation_turns,
    tool_call_blocks,
    tool_choice_name,
    tool_specs,
)

Model = TypeVar("Model", bound=BaseModel)
dispatcher = get_dispatcher(__name__)

NO_SOURCES_NOTE = "no sources in the messages: generated plainly, nothing attributed"
_DONE = object()


def media_location_info(citation: Citation) -> dict[str, int]:
    """Where in a media file a citation points, as integers (``CitationBlock`` only takes ints).

    Audio / video (and transcripts): ``span<k>_start_ms`` / ``span<k>_end_ms`` per cited
    stretch, in milliseconds; images: ``box<k>_x0`` / ``_y0`` / ``_x1`` / ``_y1`` per cited
    region, in pixels (``k`` from 0). Empty for a text citation. The exact values (seconds as
    floats) are in the core result, ``additional_kwargs["omnitrace"]``.
    """
    info: dict[str, int] = {}
    for k, (start, end) in enumerate(citation.seconds):
        info[f"span{k}_start_ms"] = round(start * 1000)
        info[f"span{k}_end_ms"] = round(end * 1000)
    for k, box in enumerate(citation.boxes):
        for name, value in zip(("x0", "y0", "x1", "y1"), box, strict=True):
            info[f"box{k}_{name}"] = int(value)
    return info


def citation_blocks(sentence: SentenceAttribution) -> list[CitationBlock]:
    """One ``CitationBlock`` per cited unit of ``sentence``.

    ``additional_location_info`` holds the sentence's index and character span in the
    answer (``start_char_index`` / ``end_char_index``), the cited unit's span in its
    source (``source_start_char_index`` / ``source_end_char_index``) and, for a media
    citation, its time spans or pixel boxes (:func:`media_location_info`).
    """
    return [
        CitationBlock(
            cited_content=TextBlock(text=c.cited_text),
            source=c.source_id,
            title=c.title or c.source_id,
            additional_location_info={
                "sentence_index": sentence.index,
                "start_char_index": sentence.char_start,
                "end_char_index": sentence.char_end,
                "source_start_char_index": c.char_start,
                "source_end_char_index": c.char_end,
                **media_location_info(c),
            },
        )
        for c in sentence.citations
    ]


def answer_message(answer: TracedAnswer) -> ChatMessage:
    """The assistant message for a whole answer: its text, then every citation block."""
    blocks: list[Any] = [TextBlock(text=answer.text)]
    for s in answer.sentences:
        blocks.extend(citation_blocks(s))
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def usage_raw(answer: TracedAnswer, traced: bool) -> dict[str, Any]:
    """``response.raw`` of a finished answer: ``usage`` where LlamaIndex's
    ``TokenCountingHandler`` reads it (``raw["usage"]["prompt_tokens"]`` /
    ``["completion_tokens"]``), ``finish_reason``, ``model``, and the core result under
    ``omnitrace`` (None when nothing was attributed)."""
    return {
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.generated_tokens,
            "total_tokens": answer.prompt_tokens + answer.generated_tokens,
        },
        "finish_reason": answer.finish_reason or "stop",
        "model": answer.model,
        "omnitrace": answer if traced else None,
    }


def traced_answer(response: ChatResponse | CompletionResponse) -> TracedAnswer | None:
    """The :class:`omnitrace_core.TracedAnswer` of a finished ``OmniTraceLLM`` response
    (``raw["omnitrace"]``, else rebuilt from ``additional_kwargs["omnitrace"]``), or None
    when the answer was not attributed (no sources, a tool call)."""
    raw = response.raw
    if isinstance(raw, dict) and isinstance(raw.get("omnitrace"), TracedAnswer):
        return raw["omnitrace"]
    data = response.additional_kwargs.get("omnitrace")
    return TracedAnswer.model_validate(data) if isinstance(data, dict) else None


def _final_kwargs(
    answer: TracedAnswer, traced: bool, notes: list[str], json_reply: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "omnitrace": answer.model_dump(mode="json") if traced else None,
        "omnitrace_notes": notes,
        "finish_reason": answer.finish_reason or "stop",
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.generated_tokens,
    }
    if traced and json_reply:
        # A reply cut by the token limit is not one JSON value: no fields (the parse refuses it).
        with contextlib.suppress(InvalidInputError):
            out["field_citations"] = [f.model_dump(mode="json") for f in core_field_citations(answer)]
    return out


def field_citations(response: ChatResponse | CompletionResponse) -> list[FieldCitation]:
    """Per-field citations of a structured (JSON) reply: for each leaf field, its JSON path,
    its value's span in the raw JSON text and the sources its tokens drew on
    (:func:`omnitrace_core.structured.field_citations`).

    A JSON-schema-constrained answer with sources stores them in
    ``additional_kwargs["field_citations"]`` (``structured_predict``'s reply and every
    response of ``as_structured_llm(...)``); otherwise they are computed from the traced answer.

    Returns:
        The field citations; empty when the reply was not attributed (no sources).

    Raises:
        InvalidInputError: the attributed reply is not one JSON value.
    """
    stored = response.additional_kwargs.get("field_citations")
    if isinstance(stored, list):
        return [FieldCitation.model_validate(f) for f in stored]
    answer = traced_answer(response)
    return core_field_citations(answer) if answer is not None else []


def structured_kwargs(output_cls: type[BaseModel]) -> dict[str, Any]:
    """Chat kwargs that make the reply one JSON object valid for ``output_cls``: the grammar
    (objects closed, compact JSON) and the instruction showing the schema to the model."""
    schema = output_cls.model_json_schema()
    return {
        "grammar": Grammar.json_schema(close_objects(schema)),
        "format_instruction": json_instruction(schema),
    }


def parse_structured(output_cls: type[Model], response: ChatResponse) -> Model:
    """``output_cls`` from a grammar-constrained reply.

    Raises:
        ValueError: the reply was cut by the token limit (incomplete JSON: raise
            ``max_new_tokens``), or it does not validate (e.g. a pydantic validator refused it).
    """
    text = response.message.content or ""
    if response.additional_kwargs.get("finish_reason") == "length":
        raise ValueError(
            f"the structured reply for {output_cls.__name__} was cut by the token limit before it "
            f"was complete ({len(text)} characters): raise max_new_tokens"
        )
    try:
        return output_cls.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"the reply is not a valid {output_cls.__name__}: {exc}; reply: {text!r}") from exc


class OmniTraceLLM(FunctionCallingLLM):
    """A local Hugging Face model behind LlamaIndex's LLM interface, citing every sentence.

    Args:
        tracer: An existing :class:`omnitrace_core.Tracer` (or compatible object); when
            omitted, ``model`` is loaded on first use.
        model: Packaged model name (``smollm2-135m``, ``qwen2.5-0.5b``) or a local folder.
        max_new_tokens: Tokens to generate per call (``LLMMetadata.num_output``).
        split_sources: Split sources into sentence sub-units (citations point inside them).
        short_source_labels: Show sources to the model as ``doc1``, ``doc2``... (ids in every
            result stay the caller's). Node ids are UUIDs that small models copy verbatim.
        tracer_config: Tracer configuration used when loading (and per call).
        generate_kwargs: Extra keyword arguments for ``model.generate``.
        load_kwargs: Extra keyword arguments for ``Tracer.from_pretrained`` (``device``, ``dtype``).
        media_root: A folder from which ``ImageBlock`` / ``AudioBlock`` / ``VideoBlock`` /
            ``DocumentBlock`` in messages may name local files (``path`` or ``file://`` URL);
            paths must resolve inside it. Without it (and ``allowed_media_paths``) local paths
            in messages are refused (:mod:`omnitrace_core.media.paths`).
        allowed_media_paths: Explicit local files message blocks may name, wherever they are.
        base_url: An ``omnitrace serve`` server to use instead of a local model: the same
            citation blocks, sentence events and spans, with the trace context sent over HTTP
            (``serve`` extra).
        api_key: The server's bearer token (default: ``OMNITRACE_API_KEY``).

    Example:
        >>> llm = OmniTraceLLM(max_new_tokens=64)
        >>> msg = ChatMessage(role="user", blocks=[
        ...     CitableBlock(source="n1", title="Valbrook", content="Valbrook makes filters."),
        ...     TextBlock(text="What does Valbrook make?")])
        >>> response = llm.chat([msg])  # response.message.blocks: text + CitationBlocks
    """

    model: str = Field(default="smollm2-135m", description="Packaged model name or local folder.")
    max_new_tokens: int = Field(default=256, ge=1, description="Tokens to generate per call.")
    split_sources: bool = Field(default=False, description="Cite sentence sub-units of sources.")
    short_source_labels: bool = Field(default=True, description="Show sources as doc1, doc2... to the model.")
    tracer_config: TracerConfig | None = Field(default=None, description="Tracer configuration.")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra generate() kwargs.")
    load_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra from_pretrained() kwargs.")
    media_root: str | None = Field(
        default=None,
        description="Folder from which message blocks may name local files (refused by default).",
    )
    allowed_media_paths: list[str] | None = Field(
        default=None, description="Explicit local files message blocks may name."
    )
    base_url: str | None = Field(default=None, description="An omnitrace serve server (not a local model).")
    api_key: str | None = Field(default=None, description="The server's bearer token.", exclude=True)

    _tracer: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, tracer: Any | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._tracer = tracer

    @classmethod
    def class_name(cls) -> str:
        return "OmniTraceLLM"

    # -- model -----------------------------------------------------------------------------------
    @property
    def tracer(self) -> Tracer:
        """The tracer, loading the model on first use (thread-safe)."""
        if self._tracer is None:
            with self._lock:
                if self._tracer is None and self.base_url is not None:
                    import os

                    from omnitrace_integrations.serving.client import RemoteTracer

                    key = self.api_key or os.environ.get("OMNITRACE_API_KEY")
                    self._tracer = RemoteTracer(self.base_url, api_key=key)
                elif self._tracer is None:
                    self._tracer = Tracer.from_pretrained(
                        self.model, config=self.tracer_config, **self.load_kwargs
                    )
        return self._tracer

    @property
    def metadata(self) -> LLMMetadata:
        """Context window and name of the loaded model (loads it on first access); a function
        calling model (tool calls are grammar-constrained)."""
        loaded = self.tracer.loaded
        return LLMMetadata(
            context_window=int(loaded.context_window),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=str(loaded.name),
        )

    # -- chat --------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the messages; the response carries text, citation blocks and the core result.

        Keyword Args:
            sources: Extra sources (nodes, ``NodeWithScore``, ``TextSource``, dicts).
            split_sources: Override ``split_sources`` for this call.
            tracer_config: Override the tracer configuration for this call.
            stop: Stop strings: decoding ends at the first one, which is cut from the answer
                (with everything after it); citations cover the kept text.
            tools: Tools the model may call (LlamaIndex tools or OpenAI-style dicts; usually
                passed by :meth:`chat_with_tools`). ``tool_choice`` (``"auto"``,
                ``"required"``, ``"none"``, a tool's name), ``tool_required`` and
                ``parallel_tool_calls`` as in :meth:`chat_with_tools`.
            grammar: An :class:`omnitrace_core.Grammar` the reply must match;
                ``format_instruction``: text added to the system prompt with it.
            **kwargs: Passed to ``model.generate`` (e.g. ``max_new_tokens``).
        """
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, streamed: a response per text delta and per completed sentence
        (with its citation blocks appended); the last response equals :meth:`chat`'s. A tool
        call is never streamed as text: it arrives whole in the last response."""
        return self._stream(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _to_async(self._stream(messages, **kwargs))

    # -- completion ----------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt`` (as one user message); pass ``sources=`` to attribute."""
        return _completion(self._chat([ChatMessage(role=MessageRole.USER, content=prompt)], **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return (
            _completion(r)
            for r in self._stream([ChatMessage(role=MessageRole.USER, content=prompt)], **kwargs)
        )

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        return _completion(await asyncio.to_thread(self._chat, messages, **kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        gen = self._stream([ChatMessage(role=MessageRole.USER, content=prompt)], **kwargs)
        return _to_async(_completion(r) for r in gen)

    # -- tools -------------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``chat`` kwargs for a tool turn: the messages, the tools as core specs and the
        choice (``tool_choice`` wins over ``tool_required``; the default is ``auto``).

        Raises:
            InvalidInputError: an object that is not a tool, two tools with one name, or an
                unknown ``tool_choice`` (the bound tools are listed).
        """
        specs = tool_specs(tools)
        choice = tool_choice_name(specs, tool_required, tool_choice) if specs else "none"
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": specs,
            "tool_choice": choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The response's ``ToolCallBlock``s as ``ToolSelection``s (id, name, arguments).

        Raises:
            ValueError: no tool call and ``error_on_no_tool_call`` (a call the token limit cut
                is named, with the advice to raise ``max_new_tokens``).
        """
        calls = [
            ToolSelection(
                tool_id=b.tool_call_id or "",
                tool_name=b.tool_name,
                tool_kwargs=b.tool_kwargs if isinstance(b.tool_kwargs, dict) else _json_object(b.tool_kwargs),
            )
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]
        if not calls and error_on_no_tool_call:
            invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
            detail = (
                f"; {len(invalid)} call(s) did not complete ({invalid[0]['error']}): raise max_new_tokens"
                if invalid
                else f"; the model answered in text: {(response.message.content or '')[:80]!r}"
            )
            raise ValueError(f"expected at least one tool call, got 0{detail}")
        return calls

    # -- structured output ---------------------------------------------------------------------
    def _structured_messages(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> list[ChatMessage]:
        return self._extend_messages(prompt.format_messages(llm=self, **prompt_args))

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """``output_cls`` from the prompt, decoded under its JSON schema (so it always parses
        unless the token limit cuts it). With sources in the prompt's messages or
        ``llm_kwargs={"sources": ...}`` the JSON answer is attributed like any other.
        ``pydantic_program_mode`` other than DEFAULT uses LlamaIndex's programs (``FUNCTION``:
        a forced tool call, also grammar-constrained).

        Raises:
            ValueError: the reply was cut by the token limit (raise ``max_new_tokens``).
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        return self._structured_response(output_cls, prompt, llm_kwargs, prompt_args)[0]

    def _structured_response(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> tuple[Model, ChatResponse]:
        """The parsed object and the reply it came from (with its citations)."""
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._structured_messages(prompt, prompt_args)
        response = self.chat(messages, **{**(llm_kwargs or {}), **structured_kwargs(output_cls)})
        result = parse_structured(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result, response

    async def _astructured_response(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> tuple[Model, ChatResponse]:
        """Async :meth:`_structured_response`."""
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._structured_messages(prompt, prompt_args)
        response = await self.achat(messages, **{**(llm_kwargs or {}), **structured_kwargs(output_cls)})
        result = parse_structured(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result, response

    def as_structured_llm(self, output_cls: type[BaseModel], **kwargs: Any) -> StructuredLLM:
        """A LlamaIndex ``StructuredLLM`` around this model: ``response.raw`` is the parsed
        ``output_cls`` object (as LlamaIndex's own), and with sources the reply's citations
        stay on the response: ``additional_kwargs["omnitrace"]`` (the traced JSON answer) and
        ``["field_citations"]`` (per leaf field; :func:`field_citations` reads them)."""
        return OmniTraceStructuredLLM(llm=self, output_cls=output_cls, **kwargs)

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Async :meth:`structured_predict` (decoding runs in a worker thread)."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        return (await self._astructured_response(output_cls, prompt, llm_kwargs, prompt_args))[0]

    @dispatcher.span
    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Any, None, None]:
        """Partial objects (LlamaIndex ``FlexibleModel``s, fields filled as their JSON
        arrives) while decoding, then the validated ``output_cls`` instance last."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages = self._structured_messages(prompt, prompt_args)
        kwargs = {**(llm_kwargs or {}), **structured_kwargs(output_cls)}
        return self._stream_structured(output_cls, self.stream_chat(messages, **kwargs))

    @dispatcher.span
    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Any, None]:
        """Async :meth:`stream_structured_predict`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages = self._structured_messages(prompt, prompt_args)
        kwargs = {**(llm_kwargs or {}), **structured_kwargs(output_cls)}
        return _to_async(self._stream_structured(output_cls, self._stream(messages, **kwargs)))

    @staticmethod
    def _stream_structured(
        output_cls: type[Model], responses: Iterator[ChatResponse]
    ) -> Generator[Any, None, None]:
        flexible = create_flexible_model(output_cls)
        last: ChatResponse | None = None
        shown: dict[str, Any] | None = None
        for last in responses:
            if not last.delta:
                continue
            try:
                data = parse_partial_json(last.message.content or "")
            except (ValueError, TypeError):
                continue
            if isinstance(data, dict) and data and data != shown:
                try:
                    partial = flexible.model_validate(data)
                except ValidationError:
                    continue
                shown = data
                yield partial
        if last is None:
            raise ValueError("the model produced no response")
        yield parse_structured(output_cls, last)

    # -- internals ---------------------------------------------------------------------------------
    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        last: ChatResponse | None = None
        for last in self._stream(messages, **kwargs):  # noqa: B007 - the last one is the answer
            pass
        assert last is not None
        last.delta = None
        return last

    def _stream(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Generator[ChatResponse, None, None]:
        tools = tool_specs(kwargs.pop("tools", None))
        choice = (
            tool_choice_name(tools, bool(kwargs.pop("tool_required", False)), kwargs.pop("tool_choice", None))
            if tools
            else "none"
        )
        kwargs.pop("tool_required", None)
        kwargs.pop("tool_choice", None)
        parallel = bool(kwargs.pop("parallel_tool_calls", kwargs.pop("allow_parallel_tool_calls", False)))
        kwargs.pop("allow_parallel_tool_calls", None)
        grammar: Grammar | None = kwargs.pop("grammar", None)
        instruction: str | None = kwargs.pop("format_instruction", None)
        parsed = parse_messages(messages, LocalMediaPolicy.create(self.media_root, self.allowed_media_paths))
        extra: Sequence[SourceLike] | None = kwargs.pop("sources", None)
        if extra:
            for src in coerce_sources(extra).sources:
                parsed.prepared.add(src)
        split = bool(kwargs.pop("split_sources", self.split_sources))
        config: TracerConfig | None = kwargs.pop("tracer_config", None)
        gen = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs, **kwargs}
        system = parsed.system_prompt or self.system_prompt
        # A tool turn: tools are bound and either a call is forced or there is nothing to
        # answer from yet. Once tool results (or other sources) are in, ``auto`` answers from
        # them, citing them; a forced choice calls again.
        if tools and choice != "none" and (choice != "auto" or not parsed.prepared.sources):
            turns = conversation_turns(messages, "\n".join(x for x in (system, instruction) if x) or None)
            return self._tool_turn(turns, tools, choice, parallel, gen, list(parsed.prepared.notes))
        if grammar is not None:
            gen["grammar"] = grammar
        if not parsed.prepared.sources:
            return self._plain(parsed, "\n".join(x for x in (system, instruction) if x) or None, gen)
        tracer = self.tracer
        # ``tracer_config`` applies per call too (e.g. audio_fallback="asr" with a given tracer).
        base = config or self.tracer_config or tracer.config
        updates: dict[str, Any] = {"split_sources": split}
        prompt = "\n".join(x for x in (system or base.system_prompt, instruction) if x)
        if prompt != base.system_prompt:
            updates["system_prompt"] = prompt
        json_reply = grammar is not None and grammar.kind == "json_schema"
        return self._traced(tracer, parsed, base.model_copy(update=updates), gen, json_reply)

    def _traced(
        self,
        tracer: Tracer,
        parsed: ParsedMessages,
        cfg: TracerConfig,
        gen: dict[str, Any],
        json_reply: bool = False,
    ) -> Generator[ChatResponse, None, None]:
        prepared = parsed.prepared
        labels = SourceLabels(prepared.sources, short=self.short_source_labels)
        span = AttributionSpan(
            self, str(tracer.loaded.name), [s.id for s in prepared.sources], parsed.question
        )
        span.enter()
        text = ""
        cites: list[Any] = []
        try:
            for event in tracer.stream(labels.labelled, parsed.question, config=cfg, **gen):
                if isinstance(event, TextDelta):
                    text += event.text
                    yield ChatResponse(message=_message(text, cites), delta=event.text, raw=event)
                elif isinstance(event, SentenceEvent):
                    sentence = labels.sentence(event.sentence)
                    span.sentence(sentence)
                    cites = [*cites, *citation_blocks(sentence)]
                    yield ChatResponse(
                        message=_message(text, cites),
                        delta="",
                        raw=SentenceEvent(sentence=sentence),
                        additional_kwargs={"omnitrace_sentence": sentence.model_dump(mode="json")},
                    )
                elif isinstance(event, FinalEvent):
                    answer = labels.answer(event.answer)
                    span.finish(answer)
                    yield ChatResponse(
                        message=answer_message(answer),
                        delta="",
                        raw=usage_raw(answer, traced=True),
                        additional_kwargs=_final_kwargs(answer, True, list(prepared.notes), json_reply),
                    )
        except GeneratorExit:
            span.drop(None)
            raise
        except BaseException as exc:
            span.drop(exc)
            raise

    def _plain(
        self, parsed: ParsedMessages, system: str | None, gen: dict[str, Any]
    ) -> Generator[ChatResponse, None, None]:
        """No sources: plain generation with the same model (nothing to attribute), through
        :meth:`Tracer.chat` (stop strings, observers and spans as for a traced call)."""
        if not parsed.turns:
            raise InvalidInputError("the messages hold no text: nothing to answer")
        tracer = self.tracer
        chat = [{"role": "system", "content": system}] if system else []
        chat += [{"role": r if r in ("user", "assistant") else "user", "content": t} for r, t in parsed.turns]
        notes = [*parsed.prepared.notes, NO_SOURCES_NOTE]
        if type(tracer).__module__ == "omnitrace_integrations.serving.client" and "grammar" not in gen:
            return self._remote_plain(tracer, parsed, chat, gen)

        def run() -> Generator[ChatResponse, None, None]:
            text = ""
            for event in tracer.chat(chat, **gen):
                if isinstance(event, TextDelta):
                    text += event.text
                    yield ChatResponse(message=_message(text, []), delta=event.text)
                elif isinstance(event, FinalEvent):
                    yield ChatResponse(
                        message=_message(event.answer.text, []),
                        delta="",
                        raw=usage_raw(event.answer, traced=False),
                        additional_kwargs=_final_kwargs(event.answer, False, notes),
                    )

        return run()

    @staticmethod
    def _remote_plain(
        tracer: Any, parsed: ParsedMessages, chat: list[dict[str, str]], gen: dict[str, Any]
    ) -> Generator[ChatResponse, None, None]:
        """No sources, on a server (``RemoteTracer``): the same responses as :meth:`_plain`."""
        text = ""
        for event in tracer.chat_stream(chat, **gen):
            if isinstance(event, TextDelta):
                text += event.text
                yield ChatResponse(message=_message(text, []), delta=event.text)
        yield ChatResponse(
            message=_message(text, []),
            delta="",
            additional_kwargs={
                "omnitrace": None,
                "omnitrace_notes": [*parsed.prepared.notes, NO_SOURCES_NOTE],
            },
        )

    def _tool_turn(
        self,
        turns: list[dict[str, Any]],
        tools: list[ToolSpec],
        choice: str,
        parallel: bool,
        gen: dict[str, Any],
        notes: list[str],
    ) -> Generator[ChatResponse, None, None]:
        """A reply that may (``auto``) or must call tools, decoded under the call grammar. A
        text reply streams as it comes; a call arrives whole, as ``ToolCallBlock``s, in the
        last response (a call the token limit cut is in ``additional_kwargs
        ["invalid_tool_calls"]``, never guessed)."""
        tracer = self.tracer

        def run() -> Generator[ChatResponse, None, None]:
            text = ""
            is_text: bool | None = None  # decided by the first visible character
            events = tracer.chat(turns, tools=tools, tool_choice=choice, parallel_tool_calls=parallel, **gen)
            for event in events:
                if isinstance(event, TextDelta):
                    text += event.text
                    if is_text is None and text.strip():
                        is_text = not text.lstrip().startswith("<")
                        if is_text:
                            yield ChatResponse(message=_message(text, []), delta=text)
                            continue
                    if is_text:
                        yield ChatResponse(message=_message(text, []), delta=event.text)
                elif isinstance(event, FinalEvent):
                    answer = event.answer
                    calls = parse_tool_calls(answer.text)
                    blocks: list[Any] = [TextBlock(text=calls.text)] if calls.text or not calls.calls else []
                    blocks.extend(tool_call_blocks(calls))
                    message_kwargs: dict[str, Any] = {}
                    if calls.invalid:
                        message_kwargs["invalid_tool_calls"] = [
                            {"raw": raw, "error": error} for raw, error in calls.invalid
                        ]
                    yield ChatResponse(
                        message=ChatMessage(
                            role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=message_kwargs
                        ),
                        delta="",
                        raw=usage_raw(answer, traced=False),
                        additional_kwargs=_final_kwargs(answer, False, notes),
                    )

        return run()


class OmniTraceStructuredLLM(StructuredLLM):
    """LlamaIndex's ``StructuredLLM`` over an :class:`OmniTraceLLM` that keeps the reply's
    citations: ``raw`` is the parsed object (as in LlamaIndex), ``additional_kwargs`` holds the
    traced JSON answer (``"omnitrace"``), its per-field citations (``"field_citations"``) and
    usage. Streaming and a non-default ``pydantic_program_mode`` behave as LlamaIndex's own."""

    @classmethod
    def class_name(cls) -> str:
        return "omnitrace_structured_llm"

    def _cited(self) -> OmniTraceLLM | None:
        llm = self.llm
        if isinstance(llm, OmniTraceLLM) and llm.pydantic_program_mode == PydanticProgramMode.DEFAULT:
            return llm
        return None

    @staticmethod
    def _response(output: BaseModel, reply: ChatResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=output.model_dump_json()),
            raw=output,
            additional_kwargs=dict(reply.additional_kwargs),
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        llm = self._cited()
        if llm is None:
            return super().chat(messages, **kwargs)
        prompt = ChatPromptTemplate(message_templates=messages)
        output, reply = llm._structured_response(self.output_cls, prompt, kwargs, {})
        return self._response(output, reply)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        llm = self._cited()
        if llm is None:
            return await super().achat(messages, **kwargs)
        prompt = ChatPromptTemplate(message_templates=messages)
        output, reply = await llm._astructured_response(self.output_cls, prompt, kwargs, {})
        return self._response(output, reply)


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(text: str, cites: list[Any]) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=[TextBlock(text=text), *cites])


def _completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(
        text=response.message.content or "",
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
    )


async def _to_async(gen: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Drive a blocking generator from a worker thread, one item at a time."""
    while True:
        item = await asyncio.to_thread(next, gen, _DONE)
        if item is _DONE:
            return
        yield item
