"""``OmniTraceLLM``: a LlamaIndex LLM whose answers cite their sources from attention.

Sources come from ``CitableBlock`` / ``DocumentBlock`` content in the chat messages, or from
the ``sources=`` keyword (nodes, ``NodeWithScore``, ``TextSource`` or dicts). The answer
comes back as a ``ChatResponse`` whose message blocks are the answer text followed by one
``CitationBlock`` per cited unit per sentence, with the whole core result (JSON-safe) in
``additional_kwargs["omnitrace"]`` and as a :class:`omnitrace_core.TracedAnswer` in ``raw``.

Without sources (e.g. LlamaIndex's own prompts) it generates plainly with the same model
and reports ``additional_kwargs["omnitrace"] = None``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import Any

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
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field, PrivateAttr

from omnitrace_core import (
    Citation,
    ContextLengthError,
    FinalEvent,
    InvalidInputError,
    SentenceAttribution,
    SentenceEvent,
    TextDelta,
    TracedAnswer,
    Tracer,
    TracerConfig,
)
from omnitrace_integrations.llama_index.events import AttributionSpan
from omnitrace_integrations.llama_index.labels import SourceLabels
from omnitrace_integrations.llama_index.sources import (
    ParsedMessages,
    SourceLike,
    coerce_sources,
    parse_messages,
)

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


class OmniTraceLLM(CustomLLM):
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
        """Context window and name of the loaded model (loads it on first access)."""
        loaded = self.tracer.loaded
        return LLMMetadata(
            context_window=int(loaded.context_window),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
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
            **kwargs: Passed to ``model.generate`` (e.g. ``max_new_tokens``).
        """
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, streamed: a response per text delta and per completed sentence
        (with its citation blocks appended); the last response equals :meth:`chat`'s."""
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

    # -- internals ---------------------------------------------------------------------------------
    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        last: ChatResponse | None = None
        for last in self._stream(messages, **kwargs):  # noqa: B007 - the last one is the answer
            pass
        assert last is not None
        last.delta = None
        return last

    def _stream(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Generator[ChatResponse, None, None]:
        parsed = parse_messages(messages)
        extra: Sequence[SourceLike] | None = kwargs.pop("sources", None)
        if extra:
            for src in coerce_sources(extra).sources:
                parsed.prepared.add(src)
        split = bool(kwargs.pop("split_sources", self.split_sources))
        config: TracerConfig | None = kwargs.pop("tracer_config", None)
        gen = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs, **kwargs}
        system = parsed.system_prompt or self.system_prompt
        if not parsed.prepared.sources:
            return self._plain(parsed, system, gen)
        tracer = self.tracer
        updates: dict[str, Any] = {"split_sources": split}
        if system:
            updates["system_prompt"] = system
        # ``tracer_config`` applies per call too (e.g. audio_fallback="asr" with a given tracer).
        cfg = (config or self.tracer_config or tracer.config).model_copy(update=updates)
        return self._traced(tracer, parsed, cfg, gen)

    def _traced(
        self, tracer: Tracer, parsed: ParsedMessages, cfg: TracerConfig, gen: dict[str, Any]
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
                        raw=answer,
                        additional_kwargs={
                            "omnitrace": answer.model_dump(mode="json"),
                            "omnitrace_notes": list(prepared.notes),
                        },
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
        """No sources: plain generation with the same model (nothing to attribute)."""
        if not parsed.turns:
            raise InvalidInputError("the messages hold no text: nothing to answer")
        tracer = self.tracer
        chat = [{"role": "system", "content": system}] if system else []
        chat += [{"role": r if r in ("user", "assistant") else "user", "content": t} for r, t in parsed.turns]
        if type(tracer).__module__ == "omnitrace_integrations.serving.client":
            return self._remote_plain(tracer, parsed, chat, gen)
        from transformers import TextIteratorStreamer

        tok, model = tracer.tokenizer, tracer.model
        prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        input_ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        defaults = tracer.config.generation
        kwargs: dict[str, Any] = {
            "no_repeat_ngram_size": defaults.no_repeat_ngram_size,
            "do_sample": defaults.do_sample,
            **gen,
        }
        if not kwargs.get("do_sample"):
            for key in ("temperature", "top_p", "top_k"):
                kwargs.setdefault(key, None)
        window = int(tracer.loaded.context_window)
        n_prompt, n_new = int(input_ids.shape[1]), int(kwargs["max_new_tokens"])
        if n_prompt + n_new > window:
            raise ContextLengthError(
                f"prompt is {n_prompt} tokens and {n_new} new tokens are requested: "
                f"{n_prompt + n_new} > the model's context window of {window}"
            )
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                model.generate(
                    input_ids=input_ids,
                    attention_mask=input_ids.new_ones(input_ids.shape),
                    streamer=streamer,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                    **kwargs,
                )
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        def run() -> Generator[ChatResponse, None, None]:
            worker = threading.Thread(target=work, name="omnitrace-llamaindex-plain", daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                if piece:
                    text += piece
                    yield ChatResponse(message=_message(text, []), delta=piece)
            worker.join()
            if failure:
                raise failure[0]
            yield ChatResponse(
                message=_message(text, []),
                delta="",
                additional_kwargs={
                    "omnitrace": None,
                    "omnitrace_notes": [*parsed.prepared.notes, NO_SOURCES_NOTE],
                },
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
