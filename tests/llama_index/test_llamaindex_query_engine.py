"""The citation query engine and synthesizer on real LlamaIndex indexes and retrievers."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from llama_index.core import QueryBundle, SummaryIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode
from llamaindex_fakes import FakeTracer

from omnitrace_core import ContextLengthError
from omnitrace_integrations.llama_index import (
    OmniTraceCitationQueryEngine,
    OmniTraceLLM,
    OmniTraceSynthesizer,
)

QUESTION = "How many people work at Vorbrook Labs?"


def _markers(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\[(\d+)\]", text)]


def test_markers_name_exactly_the_cited_retrieved_nodes(index: Any, fake_tracer: FakeTracer) -> None:
    engine = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=fake_tracer), similarity_top_k=2
    )
    retrieved = {n.node.node_id: n.score for n in engine.retrieve(QueryBundle(QUESTION))}
    response = engine.query(QUESTION)
    text = str(response)
    assert text == (
        "Vorbrook Labs was founded in 2009 in Port Ashby. [1] "
        "Valbrook Works was founded in 1905 in Cedar Falls. [2]"
    )
    assert sorted(set(_markers(text))) == list(range(1, len(response.source_nodes) + 1))
    for n, node in enumerate(response.source_nodes, start=1):
        assert node.node.node_id in retrieved
        assert node.node.metadata["retrieval_score"] == pytest.approx(retrieved[node.node.node_id])
        assert 0.0 < node.score <= 1.0  # the attribution share, not the retrieval score
        assert response.metadata["omnitrace"]["markers"][str(n)] == node.node.node_id
    assert response.source_nodes[0].node.ref_doc_id == "vorbrook"
    first = response.metadata["omnitrace"]["sentences"][0]
    assert (
        first["markers"] == [1] and first["citations"][0]["node_id"] == response.source_nodes[0].node.node_id
    )
    assert response.metadata["omnitrace"]["answer"]["model"] == "fake-model"


def test_split_sources_cite_inside_nodes_with_node_relative_offsets(
    index: Any, fake_tracer: FakeTracer
) -> None:
    engine = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=fake_tracer), similarity_top_k=2, split_sources=True
    )
    response = engine.query(QUESTION)
    for record in response.metadata["omnitrace"]["sentences"]:
        for cite in record["citations"]:
            node = next(n.node for n in response.source_nodes if n.node.node_id == cite["node_id"])
            assert node.text[cite["char_start"] : cite["char_end"]] == cite["cited_text"]
            assert cite["unit_id"] == f"{cite['node_id']}#0"


def test_streaming_equals_non_streaming_and_fills_in_as_it_goes(index: Any, fake_tracer: FakeTracer) -> None:
    llm = OmniTraceLLM(tracer=fake_tracer)
    whole = OmniTraceCitationQueryEngine.from_args(index, llm=llm, similarity_top_k=2).query(QUESTION)
    streamed = OmniTraceCitationQueryEngine.from_args(
        index, llm=llm, similarity_top_k=2, streaming=True
    ).query(QUESTION)
    seen_sentences = []
    pieces = []
    for piece in streamed.response_gen:  # type: ignore[union-attr]
        pieces.append(piece)
        seen_sentences.append(len(streamed.metadata["omnitrace"]["sentences"]))  # type: ignore[index]
    assert "".join(pieces) == str(whole)
    assert seen_sentences[len(seen_sentences) // 2] >= 1  # first sentence cited mid-stream
    assert streamed.metadata["omnitrace"]["complete"] is True  # type: ignore[index]
    assert streamed.metadata["omnitrace"]["sentences"] == whole.metadata["omnitrace"]["sentences"]  # type: ignore[index]
    assert [n.node.node_id for n in streamed.source_nodes] == [n.node.node_id for n in whole.source_nodes]
    assert [n.score for n in streamed.source_nodes] == [n.score for n in whole.source_nodes]


def test_empty_retrieval_answers_without_markers(index: Any, fake_tracer: FakeTracer) -> None:
    engine = OmniTraceCitationQueryEngine.from_args(
        index,
        llm=OmniTraceLLM(tracer=fake_tracer),
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=2.0)],  # drops everything
    )
    response = engine.query(QUESTION)
    assert "No sources were retrieved" in str(response) and not _markers(str(response))
    assert response.source_nodes == [] and fake_tracer.calls == []
    streamed = OmniTraceCitationQueryEngine.from_args(
        index,
        llm=OmniTraceLLM(tracer=fake_tracer),
        streaming=True,
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=2.0)],
    ).query(QUESTION)
    assert "".join(streamed.response_gen) == str(response)  # type: ignore[union-attr]


class _ListRetriever(BaseRetriever):
    """A real retriever returning fixed nodes (images, repeats)."""

    def __init__(self, nodes: list[NodeWithScore]) -> None:
        super().__init__()
        self._nodes = nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return list(self._nodes)


def test_image_nodes_and_repeated_nodes(fake_tracer: FakeTracer) -> None:
    text = TextNode(id_="t1", text="Vorbrook Labs employs 3397 people.", metadata={"title": "Vorbrook"})
    nodes = [
        NodeWithScore(node=ImageNode(id_="img1", image_url="http://example.com/a.png"), score=0.9),
        NodeWithScore(node=text, score=0.8),
        NodeWithScore(node=text, score=0.7),
    ]
    engine = OmniTraceCitationQueryEngine(_ListRetriever(nodes), llm=OmniTraceLLM(tracer=fake_tracer))
    assert [n.node.node_id for n in engine.retrieve(QueryBundle(QUESTION))] == [
        "img1",
        "t1",
    ]  # LlamaIndex dedupes
    assert str(engine.query(QUESTION)) == "Vorbrook Labs employs 3397 people. [1]"
    # a synthesizer handed repeats directly (e.g. by a custom engine) keeps the node once
    response = engine.synthesize(QueryBundle(QUESTION), nodes)
    assert str(response) == "Vorbrook Labs employs 3397 people. [1]"
    assert [n.node.node_id for n in response.source_nodes] == ["t1"]
    notes = " ".join(response.metadata["omnitrace"]["notes"])
    assert "'img1' has no text (image content)" in notes and "more than once" in notes
    only_images = OmniTraceCitationQueryEngine(
        _ListRetriever(nodes[:1]), llm=OmniTraceLLM(tracer=fake_tracer)
    )
    assert "No sources were retrieved" in str(only_images.query(QUESTION))


def test_context_overflow_errors_with_numbers_or_drops_the_lowest(index: Any) -> None:
    tracer = FakeTracer(max_source_chars=150)  # two example documents do not fit, one does
    strict = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=tracer), similarity_top_k=2
    )
    with pytest.raises(ContextLengthError, match=r"fake window of 150.*2 retrieved nodes.*drop_lowest"):
        strict.query(QUESTION)
    lenient = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=tracer), similarity_top_k=2, overflow="drop_lowest"
    )
    response = lenient.query(QUESTION)
    assert [n.node.ref_doc_id for n in response.source_nodes] == ["vorbrook"]  # the better-scored node stays
    assert any("dropped to fit" in n for n in response.metadata["omnitrace"]["notes"])


def test_synthesizer_works_with_as_query_engine_and_other_indexes(index: Any, documents: Any) -> None:
    synth = OmniTraceSynthesizer(llm=OmniTraceLLM(tracer=FakeTracer()))
    response = index.as_query_engine(llm=synth.llm, response_synthesizer=synth, similarity_top_k=1).query(
        QUESTION
    )
    assert str(response) == "Vorbrook Labs was founded in 2009 in Port Ashby. [1]"
    summary = SummaryIndex.from_documents(documents).as_query_engine(
        llm=synth.llm, response_synthesizer=synth
    )
    assert _markers(str(summary.query(QUESTION))) == [1, 2]
    with pytest.raises(TypeError, match="needs an OmniTraceLLM"):
        OmniTraceSynthesizer(llm=object())  # type: ignore[arg-type]


def test_aquery_matches_query(index: Any, fake_tracer: FakeTracer) -> None:
    engine = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=fake_tracer), similarity_top_k=2
    )
    assert str(asyncio.run(engine.aquery(QUESTION))) == str(engine.query(QUESTION))
    streaming = OmniTraceCitationQueryEngine.from_args(
        index, llm=OmniTraceLLM(tracer=fake_tracer), similarity_top_k=2, streaming=True
    )

    async def consume() -> str:
        response = await streaming.aquery(QUESTION)
        return "".join([p async for p in response.async_response_gen()])  # type: ignore[union-attr]

    assert asyncio.run(consume()) == str(engine.query(QUESTION))
