"""Fixtures for the LlamaIndex integration tests (helpers live in ``llamaindex_fakes``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers, whatever pytest's import mode

from llamaindex_fakes import DOCS, FakeTracer, HashEmbedding


@pytest.fixture
def fake_tracer() -> FakeTracer:
    return FakeTracer()


@pytest.fixture
def documents() -> list[Any]:
    from llama_index.core import Document

    return [Document(text=text, doc_id=doc_id, metadata={"title": title}) for doc_id, title, text in DOCS]


@pytest.fixture
def index(documents: list[Any]) -> Any:
    from llama_index.core import VectorStoreIndex

    return VectorStoreIndex.from_documents(documents, embed_model=HashEmbedding())
