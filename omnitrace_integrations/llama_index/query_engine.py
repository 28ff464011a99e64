"""``OmniTraceCitationQueryEngine``: LlamaIndex's citation query engine, with real citations.

The stock ``CitationQueryEngine`` asks the model to write ``[n]`` markers; models invent or
misplace them. Here the model just answers, and the markers come from where the answer's
tokens actually looked: a marker always names a retrieved node, and every node behind a
marker is in ``Response.source_nodes`` (``[n]`` is ``source_nodes[n - 1]``).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.indices.base import BaseIndex
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from omnitrace_integrations.llama_index.llm import OmniTraceLLM
from omnitrace_integrations.llama_index.synthesizer import (
    DEFAULT_EMPTY_RESPONSE,
    OmniTraceSynthesizer,
    Overflow,
)


class OmniTraceCitationQueryEngine(BaseQueryEngine):
    """Retrieve, answer, and cite each sentence from the answer's attention.

    Args:
        retriever: Any LlamaIndex retriever.
        llm: The :class:`OmniTraceLLM` (a new one on the default model if omitted and no
            ``response_synthesizer`` is given).
        response_synthesizer: An :class:`OmniTraceSynthesizer` (built from the other
            arguments if omitted).
        node_postprocessors: Applied to retrieved nodes, as in the stock engine.
        callback_manager: LlamaIndex callback manager.
        streaming: Stream the answer (markers appear as sentences complete).
        split_sources: Cite sentence sub-units of nodes (node-relative character offsets).
        marker_template: Format of one marker; ``{n}`` is the number.
        empty_response: The answer when nothing with text was retrieved.
        overflow: ``error`` (default) or ``drop_lowest`` when the prompt exceeds the window.
        llm_kwargs: Extra keyword arguments for every LLM call (e.g. ``max_new_tokens``).
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        llm: OmniTraceLLM | None = None,
        response_synthesizer: OmniTraceSynthesizer | None = None,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
        callback_manager: CallbackManager | None = None,
        streaming: bool = False,
        split_sources: bool | None = None,
        marker_template: str = "[{n}]",
        empty_response: str = DEFAULT_EMPTY_RESPONSE,
        overflow: Overflow = "error",
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._retriever = retriever
        self._response_synthesizer = response_synthesizer or OmniTraceSynthesizer(
            llm=llm,
            callback_manager=callback_manager,
            streaming=streaming,
            split_sources=split_sources,
            marker_template=marker_template,
            empty_response=empty_response,
            overflow=overflow,
            llm_kwargs=llm_kwargs,
        )
        self._node_postprocessors = node_postprocessors or []
        callback_manager = callback_manager or self._response_synthesizer.callback_manager
        for postprocessor in self._node_postprocessors:
            postprocessor.callback_manager = callback_manager
        super().__init__(callback_manager=callback_manager)

    @classmethod
    def from_args(
        cls,
        index: BaseIndex,
        llm: OmniTraceLLM | None = None,
        response_synthesizer: OmniTraceSynthesizer | None = None,
        retriever: BaseRetriever | None = None,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
        streaming: bool = False,
        split_sources: bool | None = None,
        marker_template: str = "[{n}]",
        empty_response: str = DEFAULT_EMPTY_RESPONSE,
        overflow: Overflow = "error",
        llm_kwargs: dict[str, Any] | None = None,
        **retriever_kwargs: Any,
    ) -> OmniTraceCitationQueryEngine:
        """Build from an index, like ``CitationQueryEngine.from_args``.

        Extra keyword arguments go to ``index.as_retriever`` (e.g. ``similarity_top_k=3``).
        """
        return cls(
            retriever=retriever or index.as_retriever(**retriever_kwargs),
            llm=llm,
            response_synthesizer=response_synthesizer,
            node_postprocessors=node_postprocessors,
            streaming=streaming,
            split_sources=split_sources,
            marker_template=marker_template,
            empty_response=empty_response,
            overflow=overflow,
            llm_kwargs=llm_kwargs,
        )

    @property
    def retriever(self) -> BaseRetriever:
        return self._retriever

    @property
    def response_synthesizer(self) -> OmniTraceSynthesizer:
        return self._response_synthesizer

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"response_synthesizer": self._response_synthesizer}

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = self._retriever.retrieve(query_bundle)
        for postprocessor in self._node_postprocessors:
            nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes

    async def aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = await self._retriever.aretrieve(query_bundle)
        for postprocessor in self._node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes

    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Any = None,
    ) -> RESPONSE_TYPE:
        return self._response_synthesizer.synthesize(
            query=query_bundle, nodes=nodes, additional_source_nodes=additional_source_nodes
        )

    async def asynthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Any = None,
    ) -> RESPONSE_TYPE:
        return await self._response_synthesizer.asynthesize(
            query=query_bundle, nodes=nodes, additional_source_nodes=additional_source_nodes
        )

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            with self.callback_manager.event(
                CBEventType.RETRIEVE, payload={EventPayload.QUERY_STR: query_bundle.query_str}
            ) as retrieve_event:
                nodes = self.retrieve(query_bundle)
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            response = self._response_synthesizer.synthesize(query=query_bundle, nodes=nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            with self.callback_manager.event(
                CBEventType.RETRIEVE, payload={EventPayload.QUERY_STR: query_bundle.query_str}
            ) as retrieve_event:
                nodes = await self.aretrieve(query_bundle)
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            response = await self._response_synthesizer.asynthesize(query=query_bundle, nodes=nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response
