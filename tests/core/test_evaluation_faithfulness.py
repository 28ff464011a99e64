"""``omnitrace eval --faithfulness``: which sources are removed, one shared call per row, the summary."""

from __future__ import annotations

import json
import math

import pytest

import omnitrace_core.evaluation.faithfulness as faithfulness
import omnitrace_core.evaluation.faithfulness_eval as ef
from omnitrace_core.evaluation.faithfulness_eval import (
    CONTROL,
    named_sources,
    pair_drops,
    plan_row,
    run_plan,
    sentence_spans,
    summarize,
)
from omnitrace_core.evaluation.runner import EvalSettings, evaluate

SOURCES = [
    {"id": f"doc{i}", "modality": "text", "title": f"Firm {i}", "text": f"Firm {i} was founded in 19{i}0."}
    for i in range(1, 5)
]
ROW = {
    "id": "f1",
    "task": "teacher_forced",
    "sources": SOURCES,
    "question": "When?",
    "response": "Firm 1 was founded in 1910. Firm 2 was founded in 1920.",
    "response_sentences": [
        {"text": "Firm 1 was founded in 1910.", "start": 0, "end": 27, "gold_sources": ["doc1"]},
        {"text": "Firm 2 was founded in 1920.", "start": 28, "end": 55, "gold_sources": ["doc2"]},
    ],
}
TEXT = ROW["response"]


def _sentence(start, end, cited=(), mass=None):
    return {
        "text": TEXT[start:end],
        "start": start,
        "end": end,
        "citations": [{"source_id": s, "score": v} for s, v in cited],
        "source_mass": mass or {},
    }


def test_named_sources_cited_by_score_then_filled_from_mass():
    s = _sentence(
        0, 27, [("doc2", 0.4), ("doc1", 0.9)], {"doc1": 0.5, "doc2": 0.2, "doc3": 0.25, "doc4": 0.0}
    )
    assert named_sources(s, 1) == ["doc1"]
    assert named_sources(s, 3) == ["doc1", "doc2", "doc3"]  # doc4 has no mass: never named
    assert named_sources(_sentence(0, 27, [], {"doc3": 0.7, "doc2": 0.3}), 3) == ["doc3", "doc2"]
    assert named_sources(_sentence(0, 27), 3) == []  # abstains


def test_spans_from_offsets_or_located_by_text():
    assert sentence_spans({"sentences": [_sentence(0, 27), _sentence(28, 55)]}, TEXT) == [(0, 27), (28, 55)]
    bare = {"sentences": [{"text": "Firm 2 was founded in 1920."}, {"text": "not there"}]}
    assert sentence_spans(bare, TEXT) == [(28, 55), (0, 0)]


def test_plan_dedupes_pairs_into_one_call_and_maps_drops_back(monkeypatch):
    a = {
        "id": "f1",
        "text": TEXT,
        "sentences": [_sentence(0, 27, [("doc1", 1.0)]), _sentence(28, 55, [("doc2", 1.0)])],
    }
    b = {
        "id": "f1",
        "text": TEXT,
        "sentences": [_sentence(0, 27, [("doc1", 0.8)], {"doc1": 0.6, "doc3": 0.4}), _sentence(28, 55)],
    }
    other_text = {"id": "f1", "text": "Something else.", "sentences": []}
    task = plan_row(ROW, TEXT, {"a": a, "b": b, "c": other_text}, seed=3)
    assert set(task["plan"]) == {"a", "b", CONTROL}  # a prediction of another text is left out
    assert task["plan"][CONTROL]["spans"] == [(0, 27), (28, 55)]
    assert all(len(r) == 3 for r in task["plan"][CONTROL]["k3"])
    assert plan_row(ROW, TEXT, {"a": a, "b": b}, seed=3)["plan"][CONTROL] == task["plan"][CONTROL]  # seeded
    calls = []

    def fake(tracer, row, text, pairs):
        calls.append(pairs)
        return [float(len(r)) + a / 100 for a, _, r in pairs], 7

    monkeypatch.setattr(ef, "pair_drops", fake)
    result = run_plan(object(), task)
    assert len(calls) == 1 and result["forward_passes"] == 7
    assert len(calls[0]) == len(set(calls[0]))  # each (sentence, removed set) asked once
    assert result["drops"]["a"] == {"k1": [1.0, 1.28], "k3": [1.0, 1.28]}  # cited one source each
    assert result["drops"]["b"] == {"k1": [1.0, None], "k3": [2.0, None]}  # abstains on sentence 2
    summary = summarize([result], ["a", "b"])
    assert summary["a"] == {
        "logp_drop_k1": pytest.approx(1.14),
        "logp_drop_k3": pytest.approx(1.14),
        "sentences": 2,
        "abstained": 0,
    }
    assert summary["b"]["sentences"] == 1 and summary["b"]["abstained"] == 1
    assert summary[CONTROL]["logp_drop_k3"] == pytest.approx(3.14)


def test_pair_drops_agree_with_logp_drops_and_allow_repeated_sentences(tiny_tracer):
    spans = [(0, 27), (28, 55)]
    reference, ref_passes = faithfulness.logp_drops(
        tiny_tracer, ROW, TEXT, spans, [["doc1"], ["doc2", "doc3"]]
    )
    pairs = [
        (0, 27, ("doc1",)),
        (28, 55, ("doc2", "doc3")),
        (0, 27, ("doc2", "doc3")),
        (0, 27, ()),
        (56, 56, ("doc1",)),
    ]
    drops, passes = pair_drops(tiny_tracer, ROW, TEXT, pairs)
    assert drops[:2] == pytest.approx(reference, abs=1e-5) and passes == ref_passes == 3
    assert drops[2] is not None and drops[2] != pytest.approx(drops[0])  # same sentence, another removed set
    assert drops[3:] == [None, None]  # nothing removed / no token: no pass, no value
    with pytest.raises(Exception, match="not sources of 'f1'"):
        pair_drops(tiny_tracer, ROW, TEXT, [(0, 27, ("doc9",))])


def test_evaluate_with_faithfulness_on_the_tiny_model(tmp_path, tiny_tracer):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "eval"
    settings = EvalSettings(tracer=tiny_tracer, faithfulness=True)
    report = evaluate(data, out, ["lexical", "random"], methods=["omnitrace"], settings=settings)
    faith = report["faithfulness"]
    assert faith["rows"] == 1 and faith["forward_passes"] >= 2 and faith["failures"] == []
    for name in ("omnitrace", "lexical", "random"):
        entry = report["methods"][name]["faithfulness"]
        assert entry["sentences"] + entry["abstained"] == 2
        assert entry["logp_drop_k1"] is None or math.isfinite(entry["logp_drop_k1"])
    base = {"logp_drop_k1", "logp_drop_k3", "sentences", "abstained"}
    assert set(faith["random"]) in (base, base | {"paired_k1", "paired_k3"})
    assert all(faith["random"].get(f"paired_k{k}", {"reference": "omnitrace"})["reference"] == "omnitrace"
               for k in (1, 3))
    assert "paired_k1" not in report["methods"]["omnitrace"]["faithfulness"]
    assert "## faithfulness" in (out / "metrics.md").read_text()
    record = json.loads((out / "faithfulness.jsonl").read_text())
    assert set(record["drops"]) == {"omnitrace", "lexical", "random", CONTROL}
    # resumed: nothing is measured again
    again = evaluate(data, out, ["lexical", "random"], methods=["omnitrace"], settings=settings)
    assert again["faithfulness"]["seconds_new_rows"] < 0.5 and again["faithfulness"]["rows"] == 1
    assert again["methods"]["omnitrace"]["faithfulness"] == report["methods"]["omnitrace"]["faithfulness"]
    # a method added later is measured alone and merged into the row's record
    more = evaluate(
        data, out, ["lexical", "random", "carry_forward"], methods=["omnitrace"], settings=settings
    )
    records = [json.loads(x) for x in (out / "faithfulness.jsonl").read_text().splitlines()]
    assert records[-1]["drops"]["omnitrace"] == record["drops"]["omnitrace"]
    assert "carry_forward" in records[-1]["drops"] and more["faithfulness"]["rows"] == 1
    assert more["faithfulness"]["forward_passes"] >= faith["forward_passes"]


def _record(rid: str, drops: dict[str, list[float | None]]) -> dict:
    return {"id": rid, "drops": {m: {"k1": v, "k3": v} for m, v in drops.items()}}


def test_paired_difference_pairs_sentences_and_bootstraps_over_rows():
    records = [
        _record("r1", {"omnitrace": [1.0, 2.0], "lexical": [2.0, None], "embedding": [1.5, 2.5]}),
        _record("r2", {"omnitrace": [3.0], "lexical": [5.0], "embedding": [3.5]}),
        _record("r3", {"omnitrace": [1.0, 1.0], "lexical": [9.0]}),  # lengths differ: not paired
    ]
    summary = summarize(records, ["lexical", "omnitrace", "embedding"])
    assert "paired_k1" not in summary["omnitrace"]  # the reference, even when not listed first
    lex = summary["lexical"]["paired_k1"]
    assert lex["reference"] == "omnitrace" and lex["sentences"] == 2 and lex["rows"] == 2
    assert lex["diff"] == pytest.approx(1.5)  # (2-1) and (5-3): the sentence lexical abstained on is out
    emb = summary["embedding"]["paired_k1"]
    assert emb["diff"] == pytest.approx(0.5) and emb["ci95"] == pytest.approx([0.5, 0.5])  # no spread
    lo, hi = lex["ci95"]
    assert 1.0 <= lo <= lex["diff"] <= hi <= 2.0  # resampled row means stay within the rows' own
    assert ef.paired_difference(records, "lexical", "omnitrace", 1) == lex  # seeded: reproducible
    assert ef.paired_difference(records, "missing", "omnitrace", 1) is None
