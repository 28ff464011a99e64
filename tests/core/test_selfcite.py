"""Self-citation: marker parsing, label scoring by shared prefixes, teacher-forced and generated modes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omnitrace_core.evaluation.selfcite import (
    assign_markers,
    label_logprobs,
    label_token_ids,
    parse_markers,
    self_cite_generate,
    self_cite_prediction,
)

LABELS = {"doc1": "a", "doc2": "b", "Doc3": "c"}
ROW = {
    "id": "row-1",
    "question": "How tall is the lighthouse?",
    "sources": [
        {"id": "doc1", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
        {"id": "doc2", "title": "Lighthouse", "text": "The lighthouse stands 42 metres tall."},
        {"id": "doc3", "text": "Its keeper lit the lamp every night."},
    ],
}


def test_parse_markers_strips_and_positions():
    raw = "It was founded in 1905 [doc1]. It is 42 metres tall. [doc2][DOC3] Done [doc1, doc2]."
    clean, markers = parse_markers(raw, LABELS)
    assert clean == "It was founded in 1905. It is 42 metres tall. Done."
    assert markers == [(22, ["a"]), (45, ["b"]), (45, ["c"]), (50, ["a", "b"])]
    assert clean[22] == "." and clean[45] == " "


def test_parse_markers_keeps_unknown_brackets_and_trims():
    clean, markers = parse_markers("  [doc2] Values [1] and [x; doc1 and doc2] here.\n", LABELS)
    assert clean == "Values [1] and here."
    assert markers == [(0, ["b"]), (14, ["a", "b"])]
    assert parse_markers("No markers at all.", LABELS) == ("No markers at all.", [])


def test_assign_markers_to_the_sentence_they_close():
    spans = [(0, 23), (24, 46), (47, 52)]
    markers = [(22, ["a"]), (46, ["b"]), (48, ["c"]), (0, ["c"]), (23, ["a"])]
    assert assign_markers(spans, markers) == [["a", "c"], ["b"], ["c"]]
    assert assign_markers([], markers) == []


def test_label_tokens_follow_the_cue(tiny_tokenizer):
    ids = label_token_ids(tiny_tokenizer, "doc1")
    assert tiny_tokenizer.decode(ids) == "doc1"
    cue_plus = tiny_tokenizer(" [doc1", add_special_tokens=False)["input_ids"]
    assert cue_plus[-len(ids):] == ids


def test_label_logprobs_share_a_forward_per_prefix(tiny_tracer):
    context = tiny_tracer.tokenizer("Sources: [doc1] [doc2] [", add_special_tokens=False)["input_ids"]
    labels = [[5, 7], [5, 9], [11], [12, 13, 14]]
    scores, passes = label_logprobs(tiny_tracer, context, labels)
    assert passes == 3  # prefixes (5,), (), (12, 13)
    for label, got in zip(labels, scores, strict=True):
        ids = torch.tensor([[*context, *label]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_tracer.model(input_ids=ids).logits[0].float(), dim=-1)
        want = sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(label))
        assert got == pytest.approx(want, abs=1e-4)


def test_teacher_forced_prediction_format(tiny_tracer):
    text = "The lighthouse stands 42 metres tall. Its keeper lit the lamp."
    pred, passes, seconds = self_cite_prediction(tiny_tracer, ROW, text)
    assert pred["id"] == "row-1" and pred["text"] == text and pred["method"] == "self_cite"
    assert len(pred["sentences"]) == 2 and passes >= 2 and seconds > 0
    for s in pred["sentences"]:
        assert text[s["start"]:s["end"]] == s["text"]
        assert len(s["citations"]) == 1 and s["grounded"]
        assert sum(s["source_mass"].values()) == pytest.approx(1.0)
        best = max(s["source_mass"], key=s["source_mass"].get)
        assert s["citations"][0] == {"source_id": best, "score": s["source_mass"][best]}
        assert 0 < s["label_mass"] <= 1
    strict, _, _ = self_cite_prediction(tiny_tracer, ROW, text, min_label_mass=1.01)
    assert all(not s["citations"] and s["grounded"] is False for s in strict["sentences"])


def _forced_rows(bench_dir, n):
    rows = [json.loads(line) for line in (bench_dir / "dev.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["task"] == "teacher_forced"][:n]


@pytest.mark.model
def test_self_cite_on_dev_rows(default_tracer, bench_dir):
    for row in _forced_rows(bench_dir, 2):
        pred, passes, _ = self_cite_prediction(default_tracer, row, row["response"])
        ids = {s["id"] for s in row["sources"]}
        assert len(pred["sentences"]) == len(row["response_sentences"])
        assert passes == len(pred["sentences"])  # doc1..docN share the prefix "doc": one forward each
        for s in pred["sentences"]:
            assert {c["source_id"] for c in s["citations"]} <= ids and len(s["citations"]) == 1
            assert math.isclose(sum(s["source_mass"].values()), 1.0, rel_tol=1e-6)
            assert s["label_mass"] > 0.05  # after " [" the model does expect a source label


@pytest.mark.model
def test_self_cite_generate_on_a_dev_row(default_tracer, bench_dir):
    row = _forced_rows(bench_dir, 1)[0]
    pred, passes, _ = self_cite_generate(default_tracer, row, max_new_tokens=40)
    assert 0 < passes <= 40 and pred["method"] == "self_cite_generate"
    text = pred["text"]
    assert "[doc" not in text.lower()
    for s in pred["sentences"]:
        assert text[s["start"]:s["end"]] == s["text"]
        assert s["grounded"] == bool(s["citations"])
