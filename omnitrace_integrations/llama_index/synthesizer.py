"""``OmniTraceSynthesizer``: a response synthesizer whose ``[n]`` markers come from attribution.

Usable with any retriever or query engine (``index.as_query_engine(response_synthesizer=
OmniTraceSynthesizer(llm=OmniTraceLLM()))``). Retrieved nodes become source units
(optionally split into sentence sub-units with node-relative character offsets); the
``Response`` has the answer with ``[n]`` markers after each sentence from its curated
citations, ``source_nodes`` = exactly the cited nodes (``[n]`` is ``source_nodes[n - 1]``,
scored by their share of the answer's attribution, the retrieval score kept in
``node.metadata["retrieval_score"]``), and ``metadata["omnitrace"]`` with per-sentence
citations. With ``streaming=True`` the text streams with markers as each sentence
completes; ``metadata["omnitrace"]["sentences"]`` and ``source_nodes`` fill in as it goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.indices.prompt_helper import ChatPromptHelper, PromptHelper
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType
from llama_index.core.types import RESPONSE_TEXT_TYPE

from omnitrace_core import (
    ContextLengthError,
    InvalidInputError,
    SentenceAttribution,
    SentenceEvent,
    TextDelta,
    TracedAnswer,
)
from omnitrace_core.sources import Source
from omnitrace_integrations.llama_index.llm import OmniTraceLLM, _to_async, traced_answer
from omnitrace_integrations.llama_index.markers import MarkerPlacer
from omnitrace_integrations.llama_index.sources import PreparedSources, prepare_node_sources

dispatcher = instrument.get_dispatcher(__name__)

DEFAULT_EMPTY_RESPONSE = "No sources were retrieved for this question, so it cannot be answered from sources."
Overflow = Literal["error", "drop_lowest"]


class OmniTraceSynthesizer(BaseSynthesizer):
    """Answers from retrieved nodes and cites them from where the answer's tokens looked.

    Args:
        llm: The :class:`OmniTraceLLM` to answer with (a new one on the default model if omitted).
        callback_manager: LlamaIndex callback manager.
        streaming: Return a ``StreamingResponse`` (text with markers as sentences complete).
        split_sources: Cite sentence sub-units of nodes (defaults to the LLM's setting).
        marker_template: Format of one marker; ``{n}`` is the number.
        empty_response: The answer when no node with text was retrieved (no markers).
        overflow: When the prompt exceeds the model's context window: ``error`` raises the
            core's ``ContextLengthError`` (with the token counts); ``drop_lowest`` drops the
            lowest-scored node until it fits (noted in ``metadata["omnitrace"]["notes"]``).
        llm_kwargs: Extra keyword arguments for every LLM call (e.g. ``max_new_tokens``).

    Raises:
        TypeError: if ``llm`` is not an :class:`OmniTraceLLM` (only it can attribute).
    """

    def __init__(
        self,
        llm: OmniTraceLLM | None = None,
        callback_manager: CallbackManager | None = None,
        streaming: bool = False,
        split_sources: bool | None = None,
        marker_template: str = "[{n}]",
        empty_response: str = DEFAULT_EMPTY_RESPONSE,
        overflow: Overflow = "error",
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        llm = llm if llm is not None else OmniTraceLLM()
        if not isinstance(llm, OmniTraceLLM):
            raise TypeError(
                "OmniTraceSynthesizer needs an OmniTraceLLM (it attributes while decoding), "
                f"got {type(llm).__name__}"
            )
        if overflow not in ("error", "drop_lowest"):
            raise ValueError(f"overflow must be 'error' or 'drop_lowest', got {overflow!r}")
        if "{n}" not in marker_template:
            raise ValueError(f"marker_template must contain '{{n}}', got {marker_template!r}")
        # Explicit prompt helpers: the base class would otherwise read llm.metadata, loading the
        # model at construction. This synthesizer never packs or truncates chunks itself.
        super().__init__(
            llm=llm,
            callback_manager=callback_manager,
            prompt_helper=PromptHelper(),
            chat_prompt_helper=ChatPromptHelper(),
            streaming=streaming,
            empty_response=empty_response,
        )
        self._omni_llm = llm
        self._split_sources = split_sources
        self._marker_template = marker_template
        self._overflow: Overflow = overflow
        self._llm_kwargs = dict(llm_kwargs or {})

    @property
    def llm(self) -> OmniTraceLLM:
        return self._omni_llm

    def _get_prompts(self) -> PromptDictType:
        """No prompt templates: the tracer lays out sources and question itself."""
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """Nothing to update (see :meth:`_get_prompts`)."""

    # -- BaseSynthesizer API -------------------------------------------------------------------
    def synthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        """Answer ``query`` from ``nodes``; see the module docstring for the response."""
        dispatcher.event(SynthesizeStartEvent(query=query))
        bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: bundle.query_str}
        ) as event:
            response = self._respond(bundle.query_str, nodes, additional_source_nodes, response_kwargs)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    async def asynthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        """Async :meth:`synthesize` (decoding runs in a worker thread)."""
        dispatcher.event(SynthesizeStartEvent(query=query))
        bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
        response: RESPONSE_TYPE = await asyncio.to_thread(
            self._respond, bundle.query_str, nodes, additional_source_nodes, response_kwargs
        )
        if isinstance(response, StreamingResponse):
            response = AsyncStreamingResponse(
                response_gen=_to_async(response.response_gen),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        """Plain text chunks (no nodes): the marked answer (chunks are ``chunk1``, ``chunk2``...)."""
        from llama_index.core.schema import TextNode

        nodes = [NodeWithScore(node=TextNode(id_=f"chunk{i + 1}", text=t)) for i, t in enumerate(text_chunks)]
        response = self._respond(query_str, nodes, None, response_kwargs)
        if isinstance(response, StreamingResponse):
            return response.response_gen
        return str(response.response)

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        result = await asyncio.to_thread(self.get_response, query_str, text_chunks, **response_kwargs)
        if isinstance(result, Generator):
            return _to_async(result)
        return result

    # -- internals -----------------------------------------------------------------------------
    def _respond(
        self,
        query_str: str,
        nodes: Sequence[NodeWithScore],
        additional: Sequence[NodeWithScore] | None,
        kwargs: dict[str, Any],
    ) -> Response | StreamingResponse:
        prepared = prepare_node_sources(nodes)
        retrieved = [
            {"node_id": n.node.node_id, "retrieval_score": n.score}
            for n in nodes
            if n.node.node_id in prepared.nodes
        ]
        if not prepared.sources:
            return self._empty(prepared, retrieved)
        call = {**self._llm_kwargs, **kwargs}
        if self._split_sources is not None:
            call.setdefault("split_sources", self._split_sources)
        messages = [ChatMessage(role=MessageRole.USER, content=query_str)]
        sources = list(prepared.sources)
        while True:
            try:
                if self._streaming:
                    stream = self._omni_llm.stream_chat(messages, sources=sources, **call)
                    first = next(stream)  # surfaces input and context-length errors now
                    return self._streaming_response(_chain(first, stream), prepared, retrieved, additional)
                final = self._omni_llm.chat(messages, sources=sources, **call)
                return self._response(final, prepared, retrieved, additional)
            except ContextLengthError as exc:
                if self._overflow != "drop_lowest" or len(sources) <= 1:
                    hint = "" if self._overflow == "drop_lowest" else "; or set overflow='drop_lowest'"
                    raise ContextLengthError(f"{exc} ({len(sources)} retrieved nodes{hint})") from exc
                victim = _lowest(sources, prepared)
                sources = [s for s in sources if s.id != victim.id]
                prepared.note(f"node {victim.id!r} dropped to fit the context window ({exc})")

    def _empty(
        self, prepared: PreparedSources, retrieved: list[dict[str, Any]]
    ) -> Response | StreamingResponse:
        meta: dict[str, Any] = {
            "omnitrace": {
                "text": self._empty_response,
                "sentences": [],
                "markers": {},
                "retrieved": retrieved,
                "notes": [*prepared.notes, "no retrieved node has text: nothing to answer from"],
                "answer": None,
            }
        }
        if self._streaming:
            return StreamingResponse(
                response_gen=self._empty_response_generator(), source_nodes=[], metadata=meta
            )
        return Response(self._empty_response, source_nodes=[], metadata=meta)

    def _response(
        self,
        final: ChatResponse,
        prepared: PreparedSources,
        retrieved: list[dict[str, Any]],
        additional: Sequence[NodeWithScore] | None,
    ) -> Response:
        answer = _answer_of(final)
        placer = MarkerPlacer(prepared.nodes.keys(), self._marker_template)
        marked = placer.mark(answer)
        records = [
            _sentence_record(s, n, placer)
            for s, n in zip(answer.sentences, placer.sentence_markers, strict=True)
        ]
        source_nodes = _cited_nodes(placer, prepared, answer)
        meta = _metadata(answer, marked, records, placer, prepared, retrieved, source_nodes, final)
        return Response(marked, source_nodes=source_nodes + list(additional or []), metadata=meta)

    def _streaming_response(
        self,
        stream: Iterator[ChatResponse],
        prepared: PreparedSources,
        retrieved: list[dict[str, Any]],
        additional: Sequence[NodeWithScore] | None,
    ) -> StreamingResponse:
        placer = MarkerPlacer(prepared.nodes.keys(), self._marker_template)
        source_nodes: list[NodeWithScore] = []
        records: list[dict[str, Any]] = []
        meta: dict[str, Any] = {
            "omnitrace": {
                "text": None,
                "sentences": records,
                "markers": {},
                "retrieved": retrieved,
                "notes": prepared.notes,
                "answer": None,
                "complete": False,
            }
        }

        def gen() -> Generator[str, None, None]:
            shown = ""
            for chunk in stream:
                raw = chunk.raw
                out = ""
                if isinstance(raw, TextDelta):
                    out = placer.feed_text(raw.text)
                elif isinstance(raw, SentenceEvent):
                    out = placer.feed_sentence(raw.sentence)
                    records.append(_sentence_record(raw.sentence, placer.sentence_markers[-1], placer))
                    for sid, n in placer.numbers.items():
                        if n > len(source_nodes):
                            source_nodes.append(_cited_node(prepared.nodes[sid], None))
                            meta["omnitrace"]["markers"][str(n)] = sid
                elif isinstance(raw, dict) and isinstance(raw.get("omnitrace"), TracedAnswer):
                    raw = raw["omnitrace"]
                    out = placer.finish(raw.text)
                    shown += out
                    final_nodes = _cited_nodes(placer, prepared, raw)
                    source_nodes[:] = final_nodes + list(additional or [])
                    meta.update(
                        _metadata(raw, shown, records, placer, prepared, retrieved, final_nodes, chunk)
                    )
                    meta["omnitrace"]["complete"] = True
                    if out:
                        yield out
                    continue
                if out:
                    shown += out
                    yield out

        return StreamingResponse(response_gen=gen(), source_nodes=source_nodes, metadata=meta)


def _chain(first: ChatResponse, rest: Iterator[ChatResponse]) -> Iterator[ChatResponse]:
    yield first
    yield from rest


def _answer_of(response: ChatResponse) -> TracedAnswer:
    answer = traced_answer(response)
    if answer is None:
        raise InvalidInputError(
            "the LLM response carries no attributed answer (no sources reached the model)"
        )
    return answer


def _lowest(sources: list[Source], prepared: PreparedSources) -> Source:
    """The source of the lowest-scored node (the last one on ties or missing scores)."""

    def key(item: tuple[int, Source]) -> tuple[float, int]:
        score = prepared.nodes[item[1].id].score if item[1].id in prepared.nodes else None
        return (score if score is not None else float("-inf"), -item[0])

    return min(enumerate(sources), key=key)[1]


def _cited_node(nws: NodeWithScore, score: float | None) -> NodeWithScore:
    node = nws.node
    copy = node.model_copy(
        update={
            "metadata": {**node.metadata, "retrieval_score": nws.score},
            "excluded_llm_metadata_keys": [*node.excluded_llm_metadata_keys, "retrieval_score"],
            "excluded_embed_metadata_keys": [*node.excluded_embed_metadata_keys, "retrieval_score"],
        }
    )
    return NodeWithScore(node=copy, score=score)


def _cited_nodes(
    placer: MarkerPlacer, prepared: PreparedSources, answer: TracedAnswer
) -> list[NodeWithScore]:
    """Cited nodes in marker order, scored by their share of the answer's attribution."""
    view = answer.source_view()
    ordered = sorted(placer.numbers.items(), key=lambda kv: kv[1])
    return [_cited_node(prepared.nodes[sid], float(view.get(sid, 0.0))) for sid, _ in ordered]


def _sentence_record(
    sentence: SentenceAttribution, markers: list[int], placer: MarkerPlacer
) -> dict[str, Any]:
    return {
        "index": sentence.index,
        "text": sentence.text,
        "char_start": sentence.char_start,
        "char_end": sentence.char_end,
        "markers": list(markers),
        "grounded": sentence.grounded,
        "citations": [
            {
                "marker": placer.numbers.get(c.source_id),
                "node_id": c.source_id,
                "unit_id": c.unit_id,
                "score": c.score,
                "cited_text": c.cited_text,
                "char_start": c.char_start,
                "char_end": c.char_end,
                "title": c.title,
            }
            for c in sentence.citations
            if c.source_id in placer.numbers
        ],
    }


def _metadata(
    answer: TracedAnswer,
    marked: str,
    records: list[dict[str, Any]],
    placer: MarkerPlacer,
    prepared: PreparedSources,
    retrieved: list[dict[str, Any]],
    cited: list[NodeWithScore],
    final: ChatResponse,
) -> dict[str, Any]:
    meta: dict[str, Any] = {n.node.node_id: n.node.metadata for n in cited}
    notes = [*prepared.notes]
    for note in final.additional_kwargs.get("omnitrace_notes", []):
        if note not in notes:
            notes.append(note)
    if placer.dropped:
        notes.append(f"citations of unknown sources dropped: {sorted(set(placer.dropped))}")
    meta["omnitrace"] = {
        "text": answer.text,
        "marked_text": marked,
        "sentences": records,
        "markers": {str(n): sid for sid, n in placer.numbers.items()},
        "retrieved": retrieved,
        "notes": notes,
        "answer": answer.model_dump(mode="json"),
        "complete": True,
    }
    return meta
