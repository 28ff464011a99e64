"""Metrics: agree with the reference scorer (../shared/bench/score.py) to 1e-9, and hand-worked cases."""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
from typing import Any

import pytest

from omnitrace_core.evaluation.baselines import make_baseline
from omnitrace_core.evaluation.metrics import (
    mentions,
    option_named,
    prediction_problems,
    score,
    score_by_task,
)


def _synthetic_response(row: dict, rng: random.Random) -> str:
    """A response for a generated row, written from its sources (no model needed)."""
    docs = [s for s in row["sources"] if not s["id"].startswith("option")]
    if row["task"] == "mcq":
        option = rng.choice(row["options"])
        letter = option[-1]
        text = next(s["text"] for s in row["sources"] if s["id"] == option)
        return rng.choice([f"The answer is {text}.", f"{letter}. {text.split(') ')[-1]}", "I am not sure."])
    picked = rng.sample(docs, k=min(len(docs), rng.choice([1, 2])))
    parts = [rng.choice(s["text"].split(". ")).rstrip(".") + "." for s in picked]
    if rng.random() < 0.5:
        parts.append("I hope this helps.")
    return " ".join(parts)


def _perturb(prediction: dict, rng: random.Random, source_ids: list[str]) -> dict:
    """Edge cases the scorer must agree on: flags, empty citations, text-only sentences, seconds."""
    p = copy.deepcopy(prediction)
    for s in p["sentences"]:
        r = rng.random()
        if r < 0.1:
            s["citations"] = []
        elif r < 0.2:
            s["grounded"] = False
        elif r < 0.3:
            del s["start"], s["end"]
        elif r < 0.4:
            s.pop("source_mass", None)
        if rng.random() < 0.3:
            s["citations"].append({"source_id": rng.choice(source_ids), "score": rng.random()})
        for c in s["citations"]:
            if rng.random() < 0.7:
                a = rng.uniform(0, 20)
                c["seconds"] = [[a, a + rng.uniform(-1, 8)] for _ in range(rng.randint(0, 3))]
    return p


def _augment(row: dict, rng: random.Random) -> dict:
    """Add sentence kinds, unsupported sentences and audio gold spans to a dev row."""
    r = copy.deepcopy(row)
    if "response_sentences" in r:
        for gs in r["response_sentences"]:
            gs["kind"] = rng.choice(["extractive", "paraphrase"])
            if rng.random() < 0.25:
                gs["unsupported"] = True
                gs["gold_sources"] = []
    if rng.random() < 0.5:
        r["gold_spans"] = {
            s["id"]: [[a, a + rng.uniform(0, 6)] for a in (rng.uniform(0, 20) for _ in range(rng.randint(1, 2)))]
            for s in rng.sample(r["sources"], k=2)
        }
    return r


def _reference(bench_dir, data_path, pred_path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(bench_dir / "score.py"), str(data_path), str(pred_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def _assert_agree(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        if value is None or ours[key] is None:
            assert ours[key] is value, key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-9, rel=0), key


@pytest.fixture(scope="module")
def dev_rows(bench_dir):
    return [json.loads(line) for line in (bench_dir / "dev.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dev_predictions(dev_rows):
    """Prediction files of each baseline on the dev rows (forced responses + synthetic answers)."""
    rng = random.Random(7)
    texts = {r["id"]: r.get("response") or _synthetic_response(r, rng) for r in dev_rows}
    out = {}
    for name in ("random", "lexical", "carry_forward"):
        b = make_baseline(name)
        out[name] = {r["id"]: b.predict(r, texts[r["id"]]) for r in dev_rows}
    return out


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("method", ["random", "lexical", "carry_forward"])
def test_agrees_with_score_py_on_dev(tmp_path, bench_dir, dev_rows, dev_predictions, method):
    preds = dev_predictions[method]
    pred_path = tmp_path / "pred.jsonl"
    _write(pred_path, [preds[r["id"]] for r in dev_rows[::-1] if r["id"] != dev_rows[3]["id"]])
    ref = _reference(bench_dir, bench_dir / "dev.jsonl", pred_path)
    loaded = {json.loads(x)["id"]: json.loads(x) for x in pred_path.read_text().splitlines()}
    ours = score(dev_rows, loaded)
    _assert_agree(ours, ref)
    assert ours["missing_predictions"] == 1 and ours["labelled_sentences"] > 71
    assert ours["answer_rows"] > 0 and ours["option_rows"] > 0


def test_agrees_with_score_py_on_augmented_dev(tmp_path, bench_dir, dev_rows, dev_predictions):
    """Kinds, unsupported flags, time spans and text-only sentences: every metric key is exercised."""
    rng = random.Random(3)
    rows = [_augment(r, rng) for r in dev_rows]
    data_path = tmp_path / "data.jsonl"
    _write(data_path, rows)
    for method in ("lexical", "random"):
        preds = [_perturb(dev_predictions[method][r["id"]], rng, [s["id"] for s in r["sources"]]) for r in rows]
        pred_path = tmp_path / f"pred-{method}.jsonl"
        _write(pred_path, preds)
        ref = _reference(bench_dir, data_path, pred_path)
        ours = score(rows, {p["id"]: p for p in preds})
        _assert_agree(ours, ref)
        for key in ("time_f1_micro", "time_f1_macro", "unsupported_f1", "sentence_f1_paraphrase"):
            assert ours[key] is not None and 0 < ours[key] < 1, (method, key)


def test_per_task_breakdown_matches_scoring_each_task_alone(dev_rows, dev_predictions):
    preds = dev_predictions["lexical"]
    by_task = score_by_task(dev_rows, preds)
    assert list(by_task) == ["all", "qa_single", "qa_multi", "summary", "mcq", "teacher_forced"]
    assert by_task["all"] == score(dev_rows, preds)
    for task, metrics in list(by_task.items())[1:]:
        assert metrics == score([r for r in dev_rows if r["task"] == task], preds)
        assert metrics["rows"] == 30
    assert by_task["teacher_forced"]["sentence_f1_micro"] == 1.0  # extractive: word overlap solves it
    assert by_task["mcq"]["answer_f1"] is None and by_task["qa_single"]["option_consistency"] is None


# ---------------------------------------------------------------- hand-worked cases

SOURCES = [
    {"id": "doc1", "text": "Valbrook Works employs 405 people.", "keys": ["Valbrook Works", "405"]},
    {"id": "doc2", "text": "Lunia Labs is in Port Ashby.", "keys": ["Lunia Labs", "Port Ashby"]},
    {"id": "doc3", "text": "Quen Works makes tiles.", "keys": ["Quen Works"]},
]


def _sent(text, cited, **extra):
    return {"text": text, "citations": [{"source_id": c, "score": 0.5} for c in cited], **extra}


def test_generated_sentence_gold_from_keys_and_answer_f1():
    row = {"id": "q", "task": "qa_multi", "sources": SOURCES, "question": "?", "gold_sources": ["doc1", "doc2"]}
    pred = {
        "id": "q",
        "sentences": [
            _sent("Valbrook Works has 405 staff.", ["doc1", "doc2"]),  # gold {doc1}: P 1/2, R 1
            _sent("It is big.", ["doc3"]),  # no key: not labelled, still counts for the answer
            _sent("The valbrook works-site is in port ashby.", []),  # keys match whole words, any case
        ],
    }
    m = score([row], {"q": pred})
    assert m["labelled_sentences"] == 2
    # sentence 1: tp 1 fp 1 fn 0; sentence 3: gold {doc1, doc2}, nothing cited: fn 2
    assert m["sentence_precision"] == 0.5 and m["sentence_recall"] == pytest.approx(1 / 3)
    assert m["sentence_f1_micro"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["sentence_f1_macro"] == pytest.approx((2 / 3 + 0.0) / 2)
    # answer: cited {doc1, doc2, doc3} vs gold {doc1, doc2}: P 2/3, R 1, F1 0.8
    assert m["answer_f1"] == pytest.approx(0.8) and m["answer_rows"] == 1
    assert not mentions("Valbrook Worksite", "Valbrook Works") and mentions("(405)", "405")


def test_forced_rows_use_given_gold_offsets_kinds_and_unsupported_flags():
    response = "Valbrook Works employs 405 people. It was painted blue. Lunia Labs is in Port Ashby."
    row: dict[str, Any] = {
        "id": "f",
        "task": "teacher_forced",
        "sources": SOURCES,
        "question": "?",
        "response": response,
        "response_sentences": [
            {"text": "Valbrook Works employs 405 people.", "start": 0, "end": 34, "gold_sources": ["doc1"], "kind": "extractive"},
            {"text": "It was painted blue.", "start": 35, "end": 55, "gold_sources": [], "unsupported": True},
            {"text": "Lunia Labs is in Port Ashby.", "start": 56, "end": 84, "gold_sources": ["doc2"], "kind": "paraphrase"},
        ],
    }
    pred = {
        "id": "f",
        "sentences": [
            # split in two predicted sentences: both belong to gold sentence 0 (union of citations)
            {"text": "Valbrook Works", "start": 0, "end": 14, "citations": [{"source_id": "doc1", "score": 1}]},
            {"text": "employs 405 people.", "start": 15, "end": 34, "citations": [{"source_id": "doc3", "score": 1}]},
            {"text": "It was painted blue.", "start": 35, "end": 55, "citations": []},  # a flag
            # matched by text (no offsets); cites doc2 but says grounded false: a (wrong) flag
            {"text": "Lunia Labs is in Port Ashby.", "citations": [{"source_id": "doc2", "score": 1}], "grounded": False},
        ],
    }
    m = score([row], {"f": pred})
    assert m["labelled_sentences"] == 2  # the unsupported sentence has no gold
    assert (m["sentence_precision"], m["sentence_recall"]) == (pytest.approx(2 / 3), 1.0)
    assert m["sentence_f1_extractive"] == pytest.approx(2 / 3) and m["sentence_f1_paraphrase"] == 1.0
    assert (m["unsupported_precision"], m["unsupported_recall"]) == (0.5, 1.0)
    assert m["unsupported_f1"] == pytest.approx(2 / 3)
    # without any sentence marked unsupported, flags are not scored
    plain = copy.deepcopy(row)
    del plain["response_sentences"][1]["unsupported"]
    assert score([plain], {"f": pred})["unsupported_f1"] is None


def test_mcq_option_consistency_from_source_mass_then_citation_scores():
    sources = [*SOURCES, *({"id": f"option{x}", "text": f"({x}) {x}", "keys": []} for x in "ABCD")]
    row = {"id": "m", "task": "mcq", "sources": sources, "question": "?", "options": [f"option{x}" for x in "ABCD"],
           "gold_option": "optionB", "gold_sources": ["doc1"]}
    by_mass = {"id": "m", "sentences": [
        _sent("Let me think.", []),
        _sent("(C) 405, from Valbrook Works", ["doc1", "optionC"], source_mass={"optionB": 0.2, "optionC": 0.3}),
        _sent("B is also possible.", [], source_mass={"optionB": 0.9}),  # only the first naming sentence counts
    ]}
    m = score([row], {"m": by_mass})
    assert m["option_consistency"] == 1.0 and m["option_rows"] == 1
    # option citations never count as sentence predictions: cited {doc1} vs gold {doc1}
    assert m["sentence_f1_micro"] == 1.0
    by_score = {"id": "m", "sentences": [{"text": "Answer: D.", "citations": [
        {"source_id": "optionA", "score": 0.6}, {"source_id": "optionD", "score": 0.4}]}]}
    assert score([row], {"m": by_score})["option_consistency"] == 0.0
    no_mass = {"id": "m", "sentences": [{"text": "Answer: D.", "citations": []}]}
    assert score([row], {"m": no_mass})["option_consistency"] == 0.0  # no attribution: no top option
    assert score([row], {"m": {"id": "m", "sentences": [_sent("I cannot say.", [])]}})["option_rows"] == 0
    assert option_named("(B) 2265") == "optionB" and option_named("Answer:C") is None
    assert option_named("A.") == "optionA" and option_named("ABC") is None


def test_time_f1_micro_and_macro_over_merged_seconds():
    row = {"id": "t", "task": "qa_single", "sources": SOURCES, "question": "?", "gold_sources": ["doc1"],
           "gold_spans": {"doc1": [[0, 10]], "doc2": [[0, 4], [2, 6]]}}
    pred = {"id": "t", "sentences": [
        {"text": "a.", "citations": [{"source_id": "doc1", "score": 1, "seconds": [[5, 15]]}]},
        {"text": "b.", "citations": [{"source_id": "doc1", "score": 1, "seconds": [[12, 14], [3, 2]]},
                                     {"source_id": "doc3", "score": 1, "seconds": [[0, 9]]}]},
    ]}
    m = score([row], {"t": pred})
    # doc1: cited [5,15] (the [12,14] overlap merges, [3,2] is empty), gold [0,10]: overlap 5 -> F1 0.5
    # doc2: gold [0,6], nothing cited: F1 0
    assert m["time_rows"] == 2 and m["time_f1_macro"] == pytest.approx(0.25)
    assert m["time_f1_micro"] == pytest.approx(2 * 5 / (10 + 10 + 6))
    assert score([{**row, "gold_spans": {}}], {"t": pred})["time_f1_micro"] is None


def test_missing_predictions_counted_and_empty_scores():
    row = {"id": "x", "task": "summary", "sources": SOURCES, "question": "?"}
    m = score([row], {})
    assert m["missing_predictions"] == 1 and m["labelled_sentences"] == 0
    assert m["sentence_f1_micro"] == 0.0 and m["sentence_f1_macro"] is None and m["answer_f1"] is None


def test_prediction_problems_names_bad_values():
    good = {"id": "a", "sentences": [_sent("x.", ["doc1"], source_mass={"doc1": 1.0})]}
    assert prediction_problems(good) == []
    bad = {"id": "a", "sentences": [{"text": "x.", "citations": [{"source_id": "doc1", "score": math.nan},
                                                                 {"score": 1}],
                                     "source_mass": {"doc2": -0.5}}, {"citations": []}]}
    problems = prediction_problems(bad)
    assert any("'doc1' has score nan" in p for p in problems)
    assert any("has no 'source_id'" in p for p in problems)
    assert any("source_mass of 'doc2' is -0.5" in p for p in problems)
    assert any("sentence 1 has no 'text'" in p for p in problems)
    assert prediction_problems([1]) == ["a prediction row must be a JSON object"]
    assert prediction_problems({"sentences": []}) == ["missing or non-string 'id'"]
