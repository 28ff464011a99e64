"""End to end on the packaged SmolLM2-135M-Instruct (fp32, CPU, one thread, few tokens)."""

from __future__ import annotations

import json

import pytest

from omnitrace_core import FinalEvent, SentenceEvent, TextSource, Tracer
from omnitrace_core.models import CACHE_ENV, load_model

pytestmark = pytest.mark.model


SOURCES = [
    TextSource(
        id="harbor",
        title="Harbor",
        text="Port Veltra's harbor was dredged in 1911 so that steamships could dock.",
    ),
    TextSource(
        id="lighthouse",
        title="Lighthouse",
        text="The Veltra lighthouse stands 42 metres tall on Gannet Point.",
    ),
    TextSource(
        id="market", title="Market", text="The fish market of Port Veltra opens at five in the morning."
    ),
]


def test_generate_and_stream_agree(default_tracer):
    q = "How tall is the Veltra lighthouse?"
    answer = default_tracer.generate(SOURCES, q, max_new_tokens=24)
    assert answer.text.strip() and answer.sentences
    events = list(default_tracer.stream(SOURCES, q, max_new_tokens=24))
    assert isinstance(events[-1], FinalEvent)
    assert events[-1].answer.model_dump(exclude={"timings"}) == answer.model_dump(exclude={"timings"})
    assert [e.sentence for e in events if isinstance(e, SentenceEvent)] == answer.sentences


def test_forced_sentences_cite_their_source(default_tracer):
    response = "The Veltra lighthouse stands 42 metres tall. The harbor was dredged in 1911."
    answer = default_tracer.attribute(SOURCES, "Tell me about Port Veltra.", response)
    assert [s.citations[0].source_id for s in answer.sentences] == ["lighthouse", "harbor"]


def test_forced_dev_rows(default_tracer, bench_dir):
    dev = bench_dir / "dev.jsonl"
    rows = [json.loads(line) for line in dev.read_text().splitlines() if line.strip()]
    forced = [r for r in rows if r["task"] == "teacher_forced"][:3]
    hits = total = 0
    for row in forced:
        srcs = [{k: s[k] for k in ("id", "text", "title")} for s in row["sources"]]
        answer = default_tracer.attribute(srcs, row["question"], row["response"])
        for gold in row["response_sentences"]:
            got = {
                c.source_id
                for s in answer.sentences
                if s.char_start < gold["end"] and s.char_end > gold["start"]
                for c in s.citations
            }
            hits += set(gold["gold_sources"]) == got
            total += 1
    assert hits >= total - 1


def test_decode_time_and_forced_attribution_agree(default_tracer):
    gen = default_tracer.generate(SOURCES, "When was the harbor dredged?", max_new_tokens=20)
    forced = default_tracer.attribute(SOURCES, "When was the harbor dredged?", gen.text)
    pairs = list(zip(gen.tokens, forced.tokens, strict=False))
    same = sum(a.token == b.token and a.source_id == b.source_id for a, b in pairs)
    assert same >= 0.8 * len(pairs)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = load_model("smollm2-135m")
    folder = next((tmp_path / "models").iterdir())
    (folder / "model.safetensors").write_bytes(b"garbage")
    second = load_model("smollm2-135m")  # logs a warning and rebuilds
    assert (folder / "model.safetensors").stat().st_size > 1_000_000
    assert type(second.model) is type(first.model)


def test_tracer_from_default_is_offline_and_named(default_tracer):
    assert isinstance(default_tracer, Tracer)
    assert default_tracer.loaded.name == "smollm2-135m"
    assert default_tracer.loaded.context_window == 8192
