"""Model-based eval methods on the tiny random model: shared pass, costs, failures, peers, engines, resume."""

from __future__ import annotations

import json
import pickle

import pytest

from omnitrace_core.evaluation import engines
from omnitrace_core.evaluation.methods import (
    DEFAULT_METHODS,
    METHODS,
    VARIANTS,
    ModelWorker,
    ModelWorkerFactory,
    UnknownMethodError,
    check_methods,
    matched_ablations,
)
from omnitrace_core.evaluation.metrics import score_by_task
from omnitrace_core.evaluation.runner import EvalInputError, EvalSettings, evaluate, group_tasks

SOURCES = [
    {"id": "doc1", "modality": "text", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls.",
     "keys": ["Valbrook Works", "1905"]},
    {"id": "doc2", "modality": "text", "title": "Lighthouse", "text": "The lighthouse stands 42 metres tall.",
     "keys": ["lighthouse", "42 metres"]},
]
FORCED = {"id": "f1", "task": "teacher_forced", "sources": SOURCES, "question": "How tall is the lighthouse?",
          "response": "The lighthouse stands 42 metres tall. Valbrook Works was founded in 1905.",
          "response_sentences": [
              {"text": "The lighthouse stands 42 metres tall.", "start": 0, "end": 37, "gold_sources": ["doc2"]},
              {"text": "Valbrook Works was founded in 1905.", "start": 38, "end": 73, "gold_sources": ["doc1"]}]}
GENERATED = {"id": "g1", "task": "qa_single", "sources": SOURCES, "question": "When was Valbrook Works founded?",
             "gold_sources": ["doc1"]}


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_method_names_defaults_and_budget():
    assert check_methods(["omnitrace-peak", "omnitrace", "omnitrace-peak"]) == ["omnitrace-peak", "omnitrace"]
    assert check_methods(["all"]) == list(METHODS)
    assert "omnitrace-attgrads" in METHODS and "omnitrace-attgrads" not in DEFAULT_METHODS
    with pytest.raises(UnknownMethodError, match="unknown method 'bm25'"):
        check_methods(["bm25"])
    assert matched_ablations({"sources": SOURCES}) == 2
    assert matched_ablations({"sources": [*SOURCES, *SOURCES, SOURCES[0]]}) == 5
    # each ablation changes exactly one knob of the default config
    assert VARIANTS["omnitrace-peak"].mapping.rule == "peak"
    assert VARIANTS["omnitrace-top1"].curation.max_citations == 1
    assert VARIANTS["omnitrace-paper-curation"].curation.min_relative == 0.0


def test_worker_shares_one_forced_pass_and_costs_each_method(tiny_tracer):
    worker = ModelWorker(tiny_tracer, max_new_tokens=8)
    wanted = ["omnitrace", "omnitrace-peak", "omnitrace-no-curation", "omnitrace-grounding", "omnitrace-rawatt"]
    out = worker({"id": "f1", "row": FORCED, "text": FORCED["response"], "methods": wanted})
    assert list(out) == wanted and all("prediction" in r for r in out.values())
    preds = {m: r["prediction"] for m, r in out.items()}
    assert {p["text"] for p in preds.values()} == {FORCED["response"]}
    assert all(p["method"] == m for m, p in preds.items())
    expected = tiny_tracer.attribute(SOURCES, FORCED["question"], FORCED["response"]).to_prediction("f1")
    assert preds["omnitrace"]["sentences"] == expected["sentences"]  # the shared pass = attribute()
    for m in wanted:
        c = preds[m]["cost"]
        assert (c["forward_passes"], c["backward_passes"]) == (1, 0) and c["seconds"] > 0
    # curation off cites every unit that won a token; the default cites a subset of it
    for default, off in zip(preds["omnitrace"]["sentences"], preds["omnitrace-no-curation"]["sentences"], strict=True):
        assert {c["source_id"] for c in default["citations"]} <= {c["source_id"] for c in off["citations"]}
    grounding = preds["omnitrace-grounding"]["sentences"]
    assert all(s["grounding"] in ("supported", "weak", "unsupported") for s in grounding)
    assert all(s["grounded"] == (s["grounding"] != "unsupported") for s in grounding)


def test_worker_generates_first_then_attributes_that_text(tiny_tracer):
    worker = ModelWorker(tiny_tracer, max_new_tokens=6)
    out = worker({"id": "g1", "row": GENERATED, "text": None, "methods": ["omnitrace", "omnitrace-peak"]})
    generated = out["omnitrace"]["prediction"]
    assert generated["cost"]["forward_passes"] == 0  # attributed while decoding
    assert generated["cost"]["generation"]["forward_passes"] >= 1
    assert out["omnitrace-peak"]["prediction"]["text"] == generated["text"]
    # an empty text: every method predicts no sentence, at no cost
    empty = worker({"id": "g1", "row": GENERATED, "text": "  ", "methods": ["omnitrace-peak", "omnitrace-rawatt"]})
    assert [r["prediction"]["sentences"] for r in empty.values()] == [[], []]
    assert all(r["prediction"]["cost"]["forward_passes"] == 0 for r in empty.values())


def test_a_failing_method_fails_alone_and_bad_scores_are_refused(tiny_tracer, monkeypatch):
    import omnitrace_core.evaluation.selfcite as selfcite

    def broken(tracer, row, text):
        raise RuntimeError("label tokens missing")

    monkeypatch.setattr(selfcite, "self_cite_prediction", broken)
    worker = ModelWorker(tiny_tracer)
    task = {"id": "f1", "row": FORCED, "text": FORCED["response"], "methods": ["self-cite", "omnitrace"]}
    out = worker(task)
    assert out["self-cite"] == {"error": "RuntimeError: label tokens missing"} and "prediction" in out["omnitrace"]

    def nan_scores(tracer, row, text):
        s = {"text": text, "start": 0, "end": len(text), "citations": [{"source_id": "doc1", "score": float("nan")}]}
        return {"id": row["id"], "text": text, "sentences": [s]}, 3, 0.5

    monkeypatch.setattr(selfcite, "self_cite_prediction", nan_scores)
    assert "has score nan" in worker(task)["self-cite"]["error"]


def test_peers_are_called_with_their_budget(tiny_tracer, monkeypatch):
    import omnitrace_core.evaluation.contextcite_peer as peer

    calls = []

    def fake(tracer, row, text, num_ablations):
        calls.append(num_ablations)
        s = {"text": text, "start": 0, "end": len(text), "citations": [{"source_id": "doc2", "score": 1.0}]}
        return {"id": row["id"], "text": text, "method": "contextcite", "sentences": [s]}, num_ablations or 64, 2.0

    monkeypatch.setattr(peer, "contextcite_prediction", fake)
    out = ModelWorker(tiny_tracer)({"id": "f1", "row": FORCED, "text": FORCED["response"],
                                    "methods": ["contextcite", "contextcite-matched"]})
    assert calls == [None, 2]  # the package default, then one ablation per source
    assert out["contextcite"]["prediction"]["cost"] == {"forward_passes": 64, "backward_passes": 0, "seconds": 2.0}
    assert out["contextcite-matched"]["prediction"]["method"] == "contextcite-matched"


def test_factory_pickles_settings_only():
    factory = ModelWorkerFactory("smollm2-135m", 32, 1)
    assert pickle.loads(pickle.dumps(factory)) == factory
    with pytest.raises(TypeError, match="cannot be shipped"):
        pickle.dumps(ModelWorkerFactory(tracer=object()))


def test_evaluate_runs_model_methods_through_the_engine_and_resumes(tmp_path, tiny_tracer, monkeypatch):
    """A stand-in remote engine: the factory crosses a pickle boundary and loads its own model."""
    import omnitrace_core.evaluation.methods as em

    built = []

    def shipped_engine(rows, make_worker, *, workers, address):
        factory = pickle.loads(pickle.dumps(make_worker))
        built.append((factory, workers, address))
        worker = factory()
        for i, row in enumerate(rows):
            yield engines._call(worker, i, row)

    monkeypatch.setitem(engines.ENGINES, "shipped", shipped_engine)
    monkeypatch.setattr(em, "load_tracer", lambda model, threads=None: tiny_tracer)
    data = _write(tmp_path / "data.jsonl", [GENERATED, FORCED])
    out = tmp_path / "eval"
    settings = EvalSettings(engine="shipped", workers=2, address="ray://head:10001", max_new_tokens=6)
    report = evaluate(data, out, ["lexical"], methods=["omnitrace-peak"], settings=settings)
    assert built[0][1:] == (2, "ray://head:10001") and built[0][0].max_new_tokens == 6
    assert list(report["methods"]) == ["omnitrace", "omnitrace-peak", "lexical"]  # generation adds omnitrace
    texts = {m: [p["text"] for p in _lines(out / f"predictions-{m}.jsonl")] for m in report["methods"]}
    assert texts["omnitrace"] == texts["omnitrace-peak"] == texts["lexical"]
    assert texts["omnitrace"][1] == FORCED["response"]
    for name, m in report["methods"].items():
        preds = {p["id"]: p for p in _lines(out / f"predictions-{name}.jsonl")}
        assert m["metrics"] == score_by_task([GENERATED, FORCED], preds) and m["failures"] == []
    cost = report["methods"]["omnitrace"]["cost"]
    assert cost["forward_passes"] == 1 and cost["generation"]["rows"] == 1  # forced row: 1 pass
    assert report["methods"]["lexical"]["cost"]["forward_passes"] == 0
    assert report["methods"]["omnitrace-peak"]["cost"]["forward_passes_per_sentence"] > 0
    md = (out / "metrics.md").read_text()
    assert "## cost" in md and "| fwd/sent | bwd/sent | s/sent |" in md
    again = evaluate(data, out, ["lexical"], methods=["omnitrace-peak"], settings=settings)
    assert [m["rows_new"] for m in again["methods"].values()] == [0, 0, 0] and len(built) == 1  # no task left


def test_eval_refuses_bad_methods_and_engines(tmp_path, tiny_tracer):
    data = _write(tmp_path / "data.jsonl", [FORCED])
    with pytest.raises(EvalInputError, match="unknown method 'nope'"):
        evaluate(data, tmp_path / "o", [], methods=["nope"])
    with pytest.raises(EvalInputError, match="unknown engine 'spark'"):
        evaluate(data, tmp_path / "o", [], methods=["omnitrace"], settings=EvalSettings(engine="spark"))
    with pytest.raises(EvalInputError, match="only be used with the local engine"):
        evaluate(data, tmp_path / "o", [], methods=["omnitrace"], settings=EvalSettings(engine="ray", tracer=tiny_tracer))


def test_a_failed_generation_fails_the_row_for_every_method(tiny_tracer, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("context window exceeded")

    monkeypatch.setattr(tiny_tracer, "generate", refuse)
    out = ModelWorker(tiny_tracer)({"id": "g1", "row": GENERATED, "text": None, "methods": ["omnitrace", "omnitrace-peak"]})
    assert out == {"omnitrace": {"error": "ValueError: context window exceeded"},
                   "omnitrace-peak": {"error": "generation failed: ValueError: context window exceeded"}}


def _without_cost(prediction):
    """A prediction without its timing, scores rounded: a batched row's attention sums its
    floats in another order (differences ~1e-8), its sources and spans are the same."""

    def rounded(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return rounded({k: v for k, v in prediction.items() if k != "cost"})


def test_eval_batch_size_writes_the_same_predictions(tmp_path, tiny_tracer):
    """--batch-size decodes generated rows together; every prediction equals the one-by-one run."""
    rows = [
        GENERATED,
        FORCED,
        {**GENERATED, "id": "g2", "question": "How tall is the lighthouse?"},
        {**GENERATED, "id": "g3", "sources": SOURCES[1:], "question": "Who kept it?", "gold_sources": ["doc2"]},
    ]
    data = _write(tmp_path / "data.jsonl", rows)
    runs = {}
    for size in (1, 3):
        settings = EvalSettings(tracer=tiny_tracer, max_new_tokens=10, batch_size=size)
        report = evaluate(data, tmp_path / f"b{size}", [], methods=["omnitrace-peak"], settings=settings)
        assert all(m["failures"] == [] for m in report["methods"].values())
        runs[size] = {
            m: [_without_cost(p) for p in _lines(tmp_path / f"b{size}" / f"predictions-{m}.jsonl")]
            for m in report["methods"]
        }
    assert runs[1] == runs[3]
    assert [p["id"] for p in runs[3]["omnitrace"]] == ["g1", "f1", "g2", "g3"]
    batched = {p["id"]: p for p in _lines(tmp_path / "b3" / "predictions-omnitrace.jsonl")}
    # one group of up to 3 rows to generate: g1, g2 and g3 decode together (f1 rides along)
    assert [batched[i]["cost"]["generation"]["batch_size"] for i in ("g1", "g2", "g3")] == [3, 3, 3]
    assert [len(g["tasks"]) for g in group_tasks([{"id": i, "text": t} for i, t in
                                                  [("a", None), ("b", "x"), ("c", None), ("d", None)]], 2)] == [3, 1]
    with pytest.raises(EvalInputError, match="--batch-size"):
        evaluate(data, tmp_path / "b0", [], methods=["omnitrace"], settings=EvalSettings(tracer=tiny_tracer, batch_size=0))


def test_a_group_row_that_fails_fails_alone(tiny_tracer):
    worker = ModelWorker(tiny_tracer, max_new_tokens=6, batch_size=4)
    bad = {**GENERATED, "id": "bad", "sources": [{"id": "x"}]}
    tasks = [
        {"id": "g1", "row": GENERATED, "text": None, "methods": ["omnitrace", "omnitrace-peak"]},
        {"id": "bad", "row": bad, "text": None, "methods": ["omnitrace", "omnitrace-peak"]},
        {"id": "f1", "row": FORCED, "text": FORCED["response"], "methods": ["omnitrace-peak"]},
    ]
    out = worker({"id": "g1", "tasks": tasks})
    alone = ModelWorker(tiny_tracer, max_new_tokens=6)(tasks[0])
    assert _without_cost(out[0]["omnitrace"]["prediction"]) == _without_cost(alone["omnitrace"]["prediction"])
    assert "requests[1]" in out[1]["omnitrace"]["error"]
    assert out[1]["omnitrace-peak"]["error"].startswith("generation failed:")
    assert "prediction" in out[2]["omnitrace-peak"]
    factory = ModelWorkerFactory("smollm2-135m", 32, 1, batch_size=4)
    assert pickle.loads(pickle.dumps(factory)).batch_size == 4
