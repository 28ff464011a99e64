"""The hard dev set (benchmarks/data/hard_dev.jsonl): reproducible, well-formed, scorable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from omnitrace_core.evaluation.baselines import content_words
from omnitrace_core.evaluation.metrics import score

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "benchmarks" / "data" / "hard_dev.jsonl"
KINDS = {"extractive", "paraphrase", "meaning_only", "multi_source", "unsupported"}


@pytest.fixture(scope="module")
def maker():
    spec = importlib.util.spec_from_file_location("make_hard_dev", ROOT / "benchmarks" / "make_hard_dev.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_checked_in_file_equals_the_scripts_output(maker):
    assert DATA.read_text(encoding="utf-8") == maker.to_jsonl(maker.build())


def test_gold_prediction_scores_one(rows):
    preds = {
        r["id"]: {
            "id": r["id"],
            "text": r["response"],
            "sentences": [
                {"text": s["text"], "start": s["start"], "end": s["end"],
                 "citations": [{"source_id": g, "score": 1.0} for g in s["gold_sources"]],
                 "grounded": bool(s["gold_sources"])}
                for s in r["response_sentences"]
            ],
        }
        for r in rows
    }
    m = score(rows, preds)
    assert m["labelled_sentences"] >= 250
    assert m["sentence_f1_micro"] == 1.0
    assert m["unsupported_f1"] == 1.0
    for kind in KINDS - {"unsupported"}:
        assert m[f"sentence_f1_{kind}"] == 1.0


def test_every_kind_is_present_and_labelled_consistently(rows):
    assert 60 <= len(rows) <= 100
    counts = {k: 0 for k in KINDS}
    for r in rows:
        assert r["task"] == "teacher_forced" and 4 <= len(r["sources"]) <= 6
        ids = {s["id"] for s in r["sources"]}
        for s in r["response_sentences"]:
            counts[s["kind"]] += 1
            assert r["response"][s["start"] : s["end"]] == s["text"]
            assert set(s["gold_sources"]) <= ids
            assert bool(s.get("unsupported")) == (s["kind"] == "unsupported") == (not s["gold_sources"])
            assert len(s["gold_sources"]) == (2 if s["kind"] == "multi_source" else 0 if s.get("unsupported") else 1)
    assert all(n >= 40 for n in counts.values()), counts


def test_no_carry_forward_leak_and_gold_not_only_early(rows):
    relative = []
    for r in rows:
        previous: set[str] = set()
        order = [s["id"] for s in r["sources"]]
        for s in r["response_sentences"]:
            gold = set(s["gold_sources"])
            if gold:
                assert not gold & previous, (r["id"], s["text"])
                previous = gold
            relative += [order.index(g) / (len(order) - 1) for g in gold]
    assert 0.4 < sum(relative) / len(relative) < 0.6


def test_word_overlap_rules_hold(rows):
    for r in rows:
        words = {s["id"]: set(content_words(f"{s['title']}. {s['text']}")) for s in r["sources"]}
        for s in r["response_sentences"]:
            said = set(content_words(s["text"]))
            if s["kind"] == "meaning_only":
                assert not said & words[s["gold_sources"][0]], s["text"]
            if s["kind"] == "paraphrase":
                gold = s["gold_sources"][0]
                shared = said & words[gold]
                assert shared and any(shared <= said & w for sid, w in words.items() if sid != gold), s["text"]


def test_the_core_splitter_returns_exactly_the_labelled_sentences(rows):
    from omnitrace_core.chunking import Chunker

    chunker = Chunker()
    for r in rows:
        spans = chunker.sentences(r["response"])
        assert spans == [(s["start"], s["end"]) for s in r["response_sentences"]], r["id"]
