"""`omnitrace score` / `omnitrace eval`: outputs, per-task metrics, resuming, crashing rows, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from omnitrace_core.cli import app
from omnitrace_core.evaluation.baselines import LexicalBaseline
from omnitrace_core.evaluation.metrics import score_by_task
from omnitrace_core.evaluation.runner import evaluate

SOURCES = [
    {"id": "doc1", "modality": "text", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls.",
     "keys": ["Valbrook Works", "1905", "Cedar Falls"]},
    {"id": "doc2", "modality": "text", "title": "Lunia Labs", "text": "Lunia Labs makes ceramic tiles in Port Ashby.",
     "keys": ["Lunia Labs", "ceramic tiles", "Port Ashby"]},
]
ROWS = [
    {"id": "g1", "task": "qa_single", "sources": SOURCES, "question": "When was Valbrook Works founded?", "gold_sources": ["doc1"]},
    {"id": "g2", "task": "qa_multi", "sources": SOURCES, "question": "Tell me both.", "gold_sources": ["doc1", "doc2"]},
    {"id": "f1", "task": "teacher_forced", "sources": SOURCES, "question": "Facts?",
     "response": "Lunia Labs makes ceramic tiles. Valbrook Works is in Cedar Falls.",
     "response_sentences": [
         {"text": "Lunia Labs makes ceramic tiles.", "start": 0, "end": 31, "gold_sources": ["doc2"]},
         {"text": "Valbrook Works is in Cedar Falls.", "start": 32, "end": 65, "gold_sources": ["doc1"]}]},
    {"id": "f2", "task": "teacher_forced", "sources": SOURCES, "question": "Facts?",
     "response": "Valbrook Works dates from 1905.",
     "response_sentences": [{"text": "Valbrook Works dates from 1905.", "start": 0, "end": 31, "gold_sources": ["doc1"]}]},
]
ATTENTION = [
    {"id": "g1", "text": "Valbrook Works was founded in 1905.",
     "sentences": [{"text": "Valbrook Works was founded in 1905.", "start": 0, "end": 35,
                    "citations": [{"source_id": "doc2", "score": 0.6}], "source_mass": {"doc1": 0.3, "doc2": 0.6}}]},
    {"id": "g2", "text": "Valbrook Works is in Cedar Falls. Lunia Labs is in Port Ashby.",
     "sentences": [{"text": "Valbrook Works is in Cedar Falls.", "start": 0, "end": 33,
                    "citations": [{"source_id": "doc1", "score": 0.8}]},
                   {"text": "Lunia Labs is in Port Ashby.", "start": 34, "end": 62,
                    "citations": [{"source_id": "doc2", "score": 0.7}]}]},
    {"id": "f1", "text": ROWS[2]["response"],
     "sentences": [{"text": "Lunia Labs makes ceramic tiles.", "start": 0, "end": 31,
                    "citations": [{"source_id": "doc2", "score": 0.9}]},
                   {"text": "Valbrook Works is in Cedar Falls.", "start": 32, "end": 65, "citations": []}]},
    {"id": "f2", "text": ROWS[3]["response"],
     "sentences": [{"text": "Valbrook Works dates from 1905.", "start": 0, "end": 31,
                    "citations": [{"source_id": "doc1", "score": 0.9}]}]},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _without_cost(path):
    """The prediction rows without their measured ``cost`` (seconds differ between runs)."""
    return [{k: v for k, v in row.items() if k != "cost"} for row in _lines(path)]


@pytest.fixture()
def files(tmp_path):
    return _write(tmp_path / "data.jsonl", ROWS), _write(tmp_path / "pred.jsonl", ATTENTION)


def test_eval_with_attention_predictions_scores_every_method_per_task(tmp_path, files):
    data, pred = files
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(data), "--out", str(out), "--pred", str(pred),
                                      "--baseline", "lexical", "--baseline", "random"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json", "metrics.md", "predictions-lexical.jsonl", "predictions-omnitrace.jsonl",
        "predictions-random.jsonl"]
    assert _lines(out / "predictions-omnitrace.jsonl") == ATTENTION
    lexical = _lines(out / "predictions-lexical.jsonl")
    # the baselines attribute the same texts: generated rows from --pred, forced rows their response
    assert [p["text"] for p in lexical] == [p["text"] for p in ATTENTION]
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows_evaluated"] == 4 and report["rows_without_response_text"] == []
    assert list(report["methods"]) == ["omnitrace", "lexical", "random"]
    for name, method in report["methods"].items():
        preds = {p["id"]: p for p in _lines(out / f"predictions-{name}.jsonl")}
        assert method["metrics"] == score_by_task(ROWS, preds)
        assert list(method["metrics"]) == ["all", "qa_single", "qa_multi", "teacher_forced"]
        assert method["rows_new"] == 4 and method["failures"] == []
    attention = report["methods"]["omnitrace"]["metrics"]
    assert attention["qa_single"]["answer_f1"] == 0.0 and attention["qa_multi"]["answer_f1"] == 1.0
    assert attention["teacher_forced"]["sentence_recall"] == pytest.approx(2 / 3)
    assert report["methods"]["lexical"]["metrics"]["all"]["sentence_f1_micro"] == 1.0
    md = (out / "metrics.md").read_text()
    assert "## teacher_forced" in md and "| method | rows | sentences | sent F1 micro |" in md
    assert "| omnitrace | 2 | 3 | 0.800 |" in md  # teacher_forced: P 1, R 2/3
    assert "option cons." not in md  # no mcq row: the empty column is dropped


def test_eval_without_predictions_runs_forced_rows_only(tmp_path, files):
    data, _ = files
    report = evaluate(data, tmp_path / "eval", ["carry_forward"])
    assert report["rows_evaluated"] == 2 and report["rows_without_response_text"] == ["g1", "g2"]
    metrics = report["methods"]["carry_forward"]["metrics"]
    assert list(metrics) == ["all", "teacher_forced"] and metrics["all"]["rows"] == 2
    assert "2 of 4 rows evaluated (2 without a response text)" in (tmp_path / "eval" / "metrics.md").read_text()


def test_eval_resumes_and_records_crashing_rows(tmp_path, files, monkeypatch):
    data, pred = files
    out = tmp_path / "eval"
    evaluate(data, out, ["lexical"], pred)
    path = out / "predictions-lexical.jsonl"
    complete = _without_cost(path)
    # an interrupted run: the last row is missing and a torn line was left behind
    kept = path.read_text().splitlines()[:-1]
    path.write_text("\n".join(kept) + "\n" + '{"id": "f2", "text": "Valb')
    report = evaluate(data, out, ["lexical"], pred)
    run = report["methods"]["lexical"]
    assert (run["rows_resumed"], run["rows_new"]) == (3, 1)
    assert _without_cost(path) == complete  # same rows, same order, torn line gone
    assert evaluate(data, out, ["lexical"], pred)["methods"]["lexical"]["rows_new"] == 0

    original = LexicalBaseline.scores

    def crash_on_g2(self, row, sentences):
        if row["id"] == "g2":
            raise RuntimeError("boom")
        return original(self, row, sentences)

    monkeypatch.setattr(LexicalBaseline, "scores", crash_on_g2)
    out2 = tmp_path / "eval2"
    result = CliRunner().invoke(app, ["eval", str(data), "--out", str(out2), "--pred", str(pred), "--baseline", "lexical"])
    assert result.exit_code == 1
    assert "lexical: row 'g2' failed: RuntimeError: boom" in result.output
    assert [p["id"] for p in _lines(out2 / "predictions-lexical.jsonl")] == ["g1", "f1", "f2"]
    assert _lines(out2 / "failures-lexical.jsonl") == [{"id": "g2", "error": "RuntimeError: boom"}]
    report = json.loads((out2 / "metrics.json").read_text())
    assert report["methods"]["lexical"]["metrics"]["all"]["missing_predictions"] == 1
    monkeypatch.setattr(LexicalBaseline, "scores", original)
    # the next run retries only the failed row, and clears the failure record
    again = evaluate(data, out2, ["lexical"], pred)["methods"]["lexical"]
    assert (again["rows_new"], again["failures"]) == (1, [])
    assert not (out2 / "failures-lexical.jsonl").exists()


def test_eval_bad_input_exit_codes(tmp_path, files):
    data, _ = files
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--baseline", "bm99"])
    assert result.exit_code == 2 and "unknown baseline 'bm99'" in result.output
    empty = _write(tmp_path / "empty.jsonl", [])
    result = runner.invoke(app, ["eval", str(empty), "--out", str(tmp_path / "o"), "--baseline", "lexical"])
    assert result.exit_code == 2 and "no usable dataset rows" in result.output
    generated_only = _write(tmp_path / "gen.jsonl", ROWS[:2])
    result = runner.invoke(app, ["eval", str(generated_only), "--out", str(tmp_path / "o"), "--baseline", "lexical"])
    assert result.exit_code == 2 and "pass --pred" in result.output
    # a prediction for an unknown id is named, the rest still evaluated, exit 1
    extra = _write(tmp_path / "extra.jsonl", [*ATTENTION, {"id": "zzz", "text": "", "sentences": []}])
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o2"), "--pred", str(extra),
                                 "--baseline", "lexical", "--limit", "3"])
    assert result.exit_code == 1 and "id 'zzz' is not in the dataset" in result.output
    report = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert report["rows_evaluated"] == 3 and len(report["input_problems"]) == 1


def test_score_command_json_matches_metrics_and_names_problems(tmp_path, files):
    data, pred = files
    runner = CliRunner()
    result = runner.invoke(app, ["score", str(data), str(pred), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out.pop("input_problems") == []
    assert out == score_by_task(ROWS, {p["id"]: p for p in ATTENTION})
    table = runner.invoke(app, ["score", str(data), str(pred)])
    assert table.exit_code == 0 and "sent F1 micro" in table.stdout and "teacher_forced" in table.stdout

    bad: list[dict[str, Any]] = [dict(ATTENTION[0]), *ATTENTION[1:3], {"id": "nope", "sentences": []}]
    bad[0]["sentences"] = [{"text": "x", "citations": [{"source_id": "doc1", "score": float("nan")}]}]
    bad_path = tmp_path / "bad.jsonl"
    bad_path.write_text("".join(json.dumps(r) + "\n" for r in bad) + "{torn\n")
    result = runner.invoke(app, ["score", str(data), str(bad_path), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    problems = out["input_problems"]
    assert len(problems) == 3
    assert "bad.jsonl:1: sentence 0: citation of 'doc1' has score nan" in problems[0]
    assert "bad.jsonl:4: id 'nope' is not in the dataset" in problems[1]
    assert "bad.jsonl:5: invalid JSON" in problems[2]
    assert out["all"]["missing_predictions"] == 2  # g1 (rejected) and f2 (absent) are counted, not dropped

    empty = _write(tmp_path / "empty.jsonl", [])
    assert runner.invoke(app, ["score", str(data), str(empty)]).exit_code == 2
    assert runner.invoke(app, ["score", str(tmp_path / "absent.jsonl"), str(pred)]).exit_code == 2


def test_eval_on_dev_forced_rows_agrees_with_reference_scorer(tmp_path, bench_dir):
    import subprocess
    import sys

    out = tmp_path / "dev"
    result = CliRunner().invoke(app, ["eval", str(bench_dir / "dev.jsonl"), "--out", str(out),
                                      "--baseline", "lexical", "--baseline", "random"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows_evaluated"] == 30 and len(report["rows_without_response_text"]) == 120
    forced = tmp_path / "forced.jsonl"
    forced.write_text("".join(line + "\n" for line in (bench_dir / "dev.jsonl").read_text().splitlines()
                              if '"teacher_forced"' in line))
    for name in ("lexical", "random"):
        ref = json.loads(subprocess.run(
            [sys.executable, str(bench_dir / "score.py"), str(forced), str(out / f"predictions-{name}.jsonl"), "--json"],
            capture_output=True, text=True, check=True).stdout)
        ours = report["methods"][name]["metrics"]["all"]
        assert ours.keys() == ref.keys()
        for k, v in ref.items():
            assert ours[k] == pytest.approx(v, abs=1e-9) if v is not None else ours[k] is None
    assert report["methods"]["lexical"]["metrics"]["teacher_forced"]["sentence_f1_micro"] == 1.0


def test_eval_names_skips_and_counts_malformed_dataset_rows(tmp_path, files):
    _, pred = files
    no_gold = {k: v for k, v in ROWS[1].items() if k != "gold_sources"}
    bad = [
        {**ROWS[0], "id": "t1", "task": "essay"},
        {**no_gold, "id": "t2"},
        {**ROWS[2], "id": "t3", "response_sentences": [{"text": "x"}]},
        {**ROWS[0], "id": "t4", "sources": [{"id": "doc1", "text": "a source without keys"}]},
        {"id": "t5", "question": "no sources"},
        {**ROWS[0], "id": "t6", "gold_sources": ["doc9"]},
    ]
    data = _write(tmp_path / "data.jsonl", [*ROWS, *bad])
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(data), "--out", str(out), "--pred", str(pred), "--baseline", "lexical"])
    assert result.exit_code == 1, result.output
    for message in ("row 't1' skipped: unknown task 'essay'", "row 't2' skipped: a qa_multi row needs a 'gold_sources' list",
                    "row 't3' skipped: response_sentences[0] is missing ['start', 'end', 'gold_sources']",
                    "row 't4' skipped: source 'doc1' has no 'keys' list", "row is missing 'sources'",
                    "row 't6' skipped: gold_sources ['doc9'] are not among the sources"):
        assert message in result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows_skipped"] == 6 and report["rows_evaluated"] == 4 and len(report["input_problems"]) == 6
    assert report["methods"]["lexical"]["metrics"]["all"]["rows"] == 4


def test_eval_refuses_unusable_predictions_and_names_bad_scores(tmp_path, files):
    data, _ = files
    runner = CliRunner()
    empty = _write(tmp_path / "empty-pred.jsonl", [])
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--pred", str(empty), "--baseline", "lexical"])
    assert result.exit_code == 2 and "no usable prediction rows" in result.output
    negative = [dict(p) for p in ATTENTION]
    negative[0] = {**negative[0], "sentences": [{**negative[0]["sentences"][0], "source_mass": {"doc1": -0.2}}]}
    bad = _write(tmp_path / "neg.jsonl", negative)
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--pred", str(bad), "--baseline", "lexical"])
    assert result.exit_code == 1 and "source_mass of 'doc1' is -0.2" in result.output
    assert "(1 without a response text" in result.output  # g1's only text was the rejected row
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--method", "bm25"])
    assert result.exit_code == 2 and "unknown method 'bm25'" in result.output
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--method", "omnitrace", "--engine", "spark"])
    assert result.exit_code == 2 and "unknown engine 'spark'" in result.output


def test_eval_command_defaults_and_engine_options_reach_evaluate(tmp_path, files, monkeypatch):
    import omnitrace_core.cli.evaluation as commands
    from omnitrace_core.evaluation.baselines import BASELINES
    from omnitrace_core.evaluation.methods import DEFAULT_METHODS

    seen = {}

    def fake_evaluate(data, out, baselines, pred, limit, seed, progress, methods, settings):
        seen.update(baselines=baselines, methods=methods, settings=settings)
        return {"input_problems": [], "methods": {}, "rows_without_response_text": [], "rows_evaluated": 4,
                "rows_read": 4, "rows_skipped": 0}

    monkeypatch.setattr(commands, "evaluate", fake_evaluate)
    data, _ = files
    runner = CliRunner()
    assert runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o")]).exit_code == 0
    assert seen["methods"] == list(DEFAULT_METHODS) and seen["baselines"] == list(BASELINES)
    result = runner.invoke(app, ["eval", str(data), "--out", str(tmp_path / "o"), "--method", "self-cite",
                                 "--engine", "ray", "--workers", "2", "--address", "ray://head:10001",
                                 "--faithfulness", "--max-new-tokens", "32", "--model", "qwen2.5-0.5b"])
    assert result.exit_code == 0, result.output
    assert seen["methods"] == ["self-cite"] and seen["baselines"] == []  # only what was asked
    s = seen["settings"]
    assert (s.engine, s.workers, s.address, s.faithfulness, s.max_new_tokens, s.model) == (
        "ray", 2, "ray://head:10001", True, 32, "qwen2.5-0.5b")
