"""ContextCite peer: one part per source, our prompt layout, forced response, offline import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation import contextcite_peer
from omnitrace_core.evaluation.contextcite_peer import (
    char_span_to_tokens,
    cite_from_scores,
    contextcite_prediction,
    default_num_ablations,
)
from omnitrace_core.evaluation.faithfulness import prompt_ids, response_tokens, text_sources

ROW = {
    "id": "row-1",
    "question": "How tall is the lighthouse?",
    "sources": [
        {"id": "doc1", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
        {"id": "doc2", "title": "Lighthouse", "text": "The lighthouse stands 42 metres tall."},
        {"id": "doc3", "label": "third", "text": "Its keeper lit the lamp every night."},
    ],
}
TEXT = "The lighthouse stands 42 metres tall. Its keeper lit the lamp."


def test_cite_from_scores_relative_and_positive_only():
    assert cite_from_scores({"a": 4.0, "b": 2.5, "c": 1.0, "d": -9.0}, 0.5) == [("a", 4.0), ("b", 2.5)]
    assert cite_from_scores({"a": 0.1, "b": 0.0}, 0.9) == [("a", 0.1)]
    assert cite_from_scores({"a": -1.0, "b": 0.0}, 0.5) == []


def test_char_span_to_tokens():
    offsets = [(0, 3), (3, 9), (9, 10), (10, 14), (14, 20), (20, 21)]
    assert char_span_to_tokens(offsets, 0, 10) == (0, 3)
    assert char_span_to_tokens(offsets, 11, 21) == (3, 6)
    with pytest.raises(InvalidInputError, match=r"\[30, 40\)"):
        char_span_to_tokens(offsets, 30, 40)


def test_parts_are_sources_and_ablations_use_our_prompt(tiny_tracer):
    partitioner_cls, citer_cls = contextcite_peer._classes()
    srcs = text_sources(ROW)
    citer = citer_cls(tiny_tracer, srcs, ROW["question"], TEXT, num_ablations=4)
    assert citer.num_sources == 3
    assert citer.sources[2] == "[third]\nIts keeper lit the lamp every night.\n\n"
    mask = np.array([True, False, True])
    assert citer.partitioner.get_context(mask) == citer.sources[0] + citer.sources[2]
    assert citer._get_prompt_ids(mask) == prompt_ids(tiny_tracer, [srcs[0], srcs[2]], ROW["question"])
    assert citer._get_prompt_ids(np.zeros(3, dtype=bool)) == prompt_ids(tiny_tracer, [], ROW["question"])
    assert citer._response_ids == response_tokens(tiny_tracer.tokenizer, TEXT)[0]
    assert isinstance(citer.partitioner, partitioner_cls)


def test_prediction_on_tiny_model(tiny_tracer):
    pred, passes, seconds = contextcite_prediction(tiny_tracer, ROW, TEXT, num_ablations=6)
    assert passes == 6 and seconds > 0 and pred["method"] == "contextcite"
    assert len(pred["sentences"]) == 2
    for s in pred["sentences"]:
        assert TEXT[s["start"]:s["end"]] == s["text"]
        assert set(s["weights"]) == {"doc1", "doc2", "doc3"}
        mass = s["source_mass"]
        assert all(v >= 0 for v in mass.values())
        assert sum(mass.values()) == pytest.approx(1.0) or not any(mass.values())
        assert s["grounded"] == bool(s["citations"])
        if s["citations"]:
            top = max(s["weights"], key=s["weights"].get)
            assert s["citations"][0]["source_id"] == top
    with pytest.raises(InvalidInputError, match="num_ablations=1"):
        contextcite_prediction(tiny_tracer, ROW, TEXT, num_ablations=1)
    assert default_num_ablations() == 64


def test_missing_package_names_the_extra(monkeypatch):
    contextcite_peer._classes.cache_clear()
    monkeypatch.setitem(sys.modules, "context_cite", None)
    try:
        with pytest.raises(ImportError, match=r"omnitrace-integrations\[eval\]"):
            contextcite_peer._classes()
    finally:
        contextcite_peer._classes.cache_clear()


def test_import_never_calls_nltk_download():
    code = textwrap.dedent(
        """
        import nltk
        calls = []
        def record(*args, **kwargs):
            calls.append(args)
            raise RuntimeError("network")
        nltk.download = record
        from omnitrace_core.evaluation.contextcite_peer import _import_context_cite
        _import_context_cite()
        assert calls == [] and nltk.download is record, calls
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.model
def test_contextcite_on_a_dev_row(default_tracer, bench_dir):
    rows = [json.loads(line) for line in (bench_dir / "dev.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in rows if r["task"] == "teacher_forced")
    pred, passes, _ = contextcite_prediction(default_tracer, row, row["response"], num_ablations=8)
    assert passes == 8
    assert len(pred["sentences"]) == len(row["response_sentences"])
    # The surrogate puts the largest weight on the gold source of the first sentence.
    first = pred["sentences"][0]
    assert max(first["weights"], key=first["weights"].get) in row["response_sentences"][0]["gold_sources"]
