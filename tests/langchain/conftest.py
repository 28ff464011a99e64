"""Fakes for the LangChain integration tests: a tracer that replays a hand-built answer."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from omnitrace_core import FinalEvent, SentenceEvent, TextDelta, TextSource, TracedAnswer, TracerConfig
from tests.factories import make_answer

# Without the langchain extra, these tests are not collected at all.
collect_ignore_glob = [] if importlib.util.find_spec("langchain_core") else ["test_*.py"]


def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> None:
    """Run ``async def`` tests with pytest-asyncio (the project runs it in strict mode)."""
    if inspect.iscoroutinefunction(obj) and not any(
        m.name == "asyncio" for m in getattr(obj, "pytestmark", [])
    ):
        pytest.mark.asyncio(obj)


def build_answer(
    sources: list[TextSource],
    sentences: list[tuple[str, list[tuple[str, float]]]],
    *,
    model: str = "fake-model",
    source_fraction: float = 0.5,
) -> TracedAnswer:
    """A TracedAnswer whose sentences (joined by spaces) cite the given (source id, score)s.

    Each citation cites its whole source; each word is a token attributed to the sentence's
    first cited source.
    """
    return make_answer(
        sentences,
        sources=sources,
        tokens="words",
        token_fields={"source_fraction": source_fraction},
        model=model,
        prompt_tokens=50,
    )


class FakeTracer:
    """Stands in for ``omnitrace_core.Tracer``: replays scripted answers, records calls.

    ``script`` maps a call number to a list of (sentence, [(source id, score)]) pairs; the
    last entry repeats. Each call streams word deltas, a sentence event after each sentence's
    last word, then the final answer (built with the call's actual sources).
    """

    def __init__(self, script: list[list[tuple[str, list[tuple[str, float]]]]]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.config = TracerConfig()
        self.tokenizer = object()

    def stream(
        self, sources: Any, question: str, *, config: Any = None, **gen: Any
    ) -> Iterator[Any]:
        self.calls.append(
            {"sources": list(sources), "question": question, "config": config, "gen": gen}
        )
        plan = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        answer = build_answer(list(sources), plan)
        emitted = 0
        for sentence in answer.sentences:
            for tok in answer.tokens[sentence.token_start : sentence.token_end]:
                end = tok.char_end
                yield TextDelta(text=answer.text[emitted:end], token_index=tok.index)
                emitted = end
            yield SentenceEvent(sentence=sentence)
        yield FinalEvent(answer=answer)

    def attribute(
        self, sources: Any, question: str, response: str, *, config: Any = None
    ) -> TracedAnswer:
        self.calls.append(
            {"sources": list(sources), "question": question, "config": config, "response": response}
        )
        plan = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        answer = build_answer(list(sources), plan)
        return answer.model_copy(update={"mode": "attribute", "finish_reason": None})

    def generate(
        self, sources: Any, question: str, *, config: Any = None, **gen: Any
    ) -> TracedAnswer:
        final = None
        for event in self.stream(sources, question, config=config, **gen):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        return final


SOURCES_SCRIPT = [
    [
        ("Valbrook Works was founded in 1905.", [("valbrook", 0.9)]),
        ("The lighthouse is 42 metres tall.", [("lighthouse", 0.7), ("valbrook", 0.3)]),
    ]
]


@pytest.fixture()
def fake_tracer() -> FakeTracer:
    return FakeTracer(SOURCES_SCRIPT)


@pytest.fixture()
def docs() -> list[Any]:
    from langchain_core.documents import Document

    return [
        Document(
            "Valbrook Works was founded in 1905 in Cedar Falls.",
            id="valbrook",
            metadata={"title": "Valbrook Works", "url": "https://example.org/valbrook"},
        ),
        Document(
            "The lighthouse stands 42 metres tall.",
            id="lighthouse",
            metadata={"title": "Lighthouse"},
        ),
    ]
