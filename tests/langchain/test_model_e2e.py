"""End-to-end on the packaged SmolLM2-135M-Instruct: stream == invoke, citation latency, examples,
and the grounding verdict's unsupported F1 on the dev set (reference scorer)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda

from omnitrace_integrations.langchain import CITATION_EVENT, ChatOmniTrace

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    Document(
        "Valbrook Works was founded in 1905 in Cedar Falls. Its chief executive is Bastian Vasquez.",
        id="valbrook",
        metadata={"title": "Valbrook Works"},
    ),
    Document("The Merrow Point lighthouse stands 42 metres tall.", id="lighthouse"),
]


def _sum(chunks: list[Any]) -> Any:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


@pytest.fixture(scope="module")
def llm(default_tracer: Any) -> ChatOmniTrace:
    return ChatOmniTrace(tracer=default_tracer, max_tokens=40)


def test_stream_equals_invoke_on_the_packaged_model(llm: ChatOmniTrace) -> None:
    q = "When was Valbrook Works founded?"
    msg = llm.invoke(q, sources=DOCS)
    full = _sum(list(llm.stream(q, sources=DOCS)))
    assert full.content == msg.content and full.usage_metadata == msg.usage_metadata
    strip = lambda m: {k: v for k, v in m["omnitrace"].items() if k != "timings"}  # noqa: E731
    assert strip(full.response_metadata) == strip(msg.response_metadata)
    anns = msg.content[0].get("annotations", [])
    assert anns and {a["id"] for a in anns} <= {"valbrook", "lighthouse"}
    for a in anns:
        assert msg.text[a["start_index"] : a["end_index"]].strip()


class _TimedTracer:
    """Delegates to the real tracer, noting when each sentence event leaves ``Tracer.stream``."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self.sentence_times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracer, name)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        from omnitrace_core import SentenceEvent

        for event in self._tracer.stream(*args, **kwargs):
            if isinstance(event, SentenceEvent):
                self.sentence_times.append(time.perf_counter())
            yield event


def test_citation_event_latency(default_tracer: Any) -> None:
    """The citation event follows the tracer's sentence event at once (< 50 ms); the delay after
    the sentence's last token (set by when the core closes a sentence) is printed for the record."""

    class Clock(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[tuple[float, str]] = []
            self.events: list[tuple[float, dict[str, Any]]] = []

        def on_llm_new_token(self, token: Any, **kw: Any) -> None:
            text = (
                "".join(b.get("text", "") for b in token) if isinstance(token, list) else str(token)
            )
            if text:
                self.tokens.append((time.perf_counter(), text))

        def on_custom_event(self, name: str, data: Any, **kw: Any) -> None:
            if name == CITATION_EVENT:
                self.events.append((time.perf_counter(), data))

    timed = _TimedTracer(default_tracer)
    llm = ChatOmniTrace(tracer=timed, max_tokens=60)
    clock = Clock()
    chain = RunnableLambda(lambda q: q) | llm.bind(sources=DOCS)
    question = "Who runs Valbrook Works, when was it founded, and how tall is the lighthouse?"
    list(chain.stream(question, config={"callbacks": [clock]}))
    assert clock.events and len(clock.events) == len(timed.sentence_times)
    overhead = [
        t_ev - t_core for (t_ev, _), t_core in zip(clock.events, timed.sentence_times, strict=True)
    ]
    after_last_token = []
    for t_event, data in clock.events:
        produced, completing = "", None
        for t_tok, text in clock.tokens:
            produced += text
            if len(produced) >= data["sentence"]["char_end"]:
                completing = t_tok
                break
        if completing is not None:
            after_last_token.append(round((t_event - completing) * 1000, 1))
    print(
        "citation event after the tracer's sentence event (ms):",
        [round(x * 1000, 2) for x in overhead],
        "| after the sentence's last token (ms):",
        after_last_token,
    )
    assert max(overhead) < 0.05


def _example(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))


def test_rag_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _example("langchain_rag").main(["--max-tokens", "24"])
    out = capsys.readouterr().out
    assert "Grounding:" in out and "Sources:" in out
    ids = {
        json.loads(line)["id"] for line in (ROOT / "examples/data/langchain_corpus.jsonl").open()
    }
    anns = msg.content[0].get("annotations", [])
    assert anns and {a["id"] for a in anns} <= ids
    assert {s["label"] for s in msg.response_metadata["grounding"]["sentences"]} <= {
        "supported",
        "weak",
        "unsupported",
    }


def test_agent_example_catches_the_invented_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llguidance", reason="the model's own tool call is grammar-constrained")
    result = _example("langchain_agent").main(["--max-tokens", "24", "--retries", "0"])
    assert result["caught"] == ["Casethepel Harbor is also famous for its glass museum."]
    # the model made the tool call itself, and the answer cites that call's documents
    (call,) = result["tool_calls"]
    assert call["name"] == "search_corpus" and isinstance(call["args"]["query"], str)
    tool_docs = {s.id for s in _example("langchain_agent").tool_sources(result["state"]["messages"])}
    cited = {a["id"] for a in result["final"].content[0].get("annotations", [])}
    assert cited <= tool_docs
    assert "Caught:" in capsys.readouterr().out


def test_grounding_unsupported_f1_on_dev_set(default_tracer: Any, bench_dir: Any) -> None:
    sys.path.insert(0, str(ROOT / "tests/langchain/data"))
    try:
        evaluate = importlib.import_module("eval_grounding").evaluate
    finally:
        sys.path.remove(str(ROOT / "tests/langchain/data"))
    out = evaluate(default_tracer)
    verdict, baseline = out["verdict"], out["overlap_baseline_best_threshold"]
    print("verdict", {k: v for k, v in verdict.items() if "unsupported" in k}, "baseline", baseline)
    assert verdict["unsupported_f1"] >= 0.80
