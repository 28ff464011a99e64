"""The CLI never shows a traceback: every bad input is one line naming file, line and problem.

``predict`` / ``eval`` keep going past a bad row (named and counted, exit 1); unusable input
as a whole (an empty file, ``--out`` a folder, ``--limit -1``) exits 2; an interrupted
``predict`` resumes with ``--resume``. The model is the tiny random Llama saved to a folder.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from omnitrace_core.cli import app

GOOD = {"id": "r1", "question": "Where?", "sources": [{"id": "doc1", "text": "A is in Bay.", "keys": ["A"]}]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


BAD_ROWS = {
    "id-null": ({**GOOD, "id": None}, "'id' must be a non-empty string, got None"),
    "id-int": ({**GOOD, "id": 5}, "'id' must be a non-empty string, got 5"),
    "id-empty": ({**GOOD, "id": ""}, "'id' must be a non-empty string"),
    "question-int": ({**GOOD, "id": "q", "question": 5}, "'question' must be a string, got 5"),
    "question-null": ({**GOOD, "id": "q", "question": None}, "'question' must be a string, got None"),
    "question-empty": ({**GOOD, "id": "q", "question": ""}, "question is empty"),
    "question-surrogate": ({**GOOD, "id": "q", "question": "x\ud800"}, "lone surrogate"),
    "response-int": ({**GOOD, "id": "q", "response": 7}, "'response' must be a string, got 7"),
    "sources-str": ({**GOOD, "id": "q", "sources": "doc"}, "'sources' must be a list"),
    "sources-empty": ({**GOOD, "id": "q", "sources": []}, "sources is empty"),
    "source-int": ({**GOOD, "id": "q", "sources": [5]}, "source #0 must be"),
    "source-no-text": ({**GOOD, "id": "q", "sources": [{"id": "a"}]}, "source #0 ('a') is invalid"),
    "source-inf-segment": (
        {**GOOD, "id": "q", "sources": [{"id": "a", "text": "abc", "segments": [{"start_s": 0, "end_s": "Infinity", "char_start": 0, "char_end": 2}]}]},
        "end_s",
    ),
    "unknown-task": ({**GOOD, "id": "q", "task": "essay"}, "unknown task 'essay'"),
    "not-object": ([1, 2], "a row must be a JSON object"),
    "missing-sources": ({"id": "q", "question": "?"}, "row is missing 'sources'"),
    "forced-no-response": ({**GOOD, "id": "q", "task": "teacher_forced"}, "teacher_forced row has no 'response'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_predict_names_a_bad_row_and_goes_on(case, tmp_path, model_dir):
    row, message = BAD_ROWS[case]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8", errors="surrogatepass")
    out = tmp_path / "pred.jsonl"
    result = _run("predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2")
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    assert f"{data}:1" in result.output and message in result.output, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r1"]
    assert "(1 rows skipped)" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no rows (the file is empty)"),
        (b"\n\n  \n", "no rows (the file is empty)"),
    ],
    ids=["empty", "blank-lines"],
)
def test_predict_on_an_empty_file_exits_2(content, message, tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    result = _run("predict", str(data), "--out", str(tmp_path / "p.jsonl"), "--model", str(model_dir))
    _no_traceback(result)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_predict_limit_must_be_positive(limit, tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "r2"}) + "\n")
    result = _run("predict", str(data), "--out", str(tmp_path / "p.jsonl"), "--model", str(model_dir), "--limit", limit)
    _no_traceback(result)
    assert result.exit_code == 2 and f"--limit must be >= 1, got {limit}" in result.output
    assert not (tmp_path / "p.jsonl").exists()


def test_predict_out_is_a_folder(tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    result = _run("predict", str(data), "--out", str(tmp_path), "--model", str(model_dir))
    _no_traceback(result)
    assert result.exit_code == 2 and "is a folder" in result.output
    assert len(_errors(result.output)) == 1


def test_predict_missing_dataset(tmp_path, model_dir):
    result = _run("predict", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "p.jsonl"), "--model", str(model_dir))
    _no_traceback(result)
    assert result.exit_code == 2 and "cannot read dataset" in result.output and "nope.jsonl" in result.output


def test_predict_bad_correction_is_one_line(tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    result = _run("predict", str(data), "--out", str(tmp_path / "p.jsonl"), "--model", str(model_dir), "--correction", "bogus")
    _no_traceback(result)
    assert result.exit_code == 2 and "--correction 'bogus'" in result.output
    assert len(_errors(result.output)) == 1


def test_predict_accepts_a_utf8_bom(tmp_path, model_dir):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    out = tmp_path / "p.jsonl"
    result = _run("predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["id"] == "r1"


def test_predict_keeps_u2028_inside_a_row(tmp_path, model_dir):
    row = {**GOOD, "question": "Where\u2028is A?", "sources": [{"id": "doc1", "text": "A is\u2029 in Bay."}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    result = _run("predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output


def test_predict_interrupted_then_resumed(tmp_path, model_dir, monkeypatch):
    from omnitrace_core.evaluation import bench

    rows = [{**GOOD, "id": f"r{k}"} for k in range(1, 5)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.jsonl"
    real = bench.answer_row
    calls: list[str] = []

    def interrupted(tracer, row, **kw):
        calls.append(row["id"])
        if row["id"] == "r3":
            raise KeyboardInterrupt
        return real(tracer, row, **kw)

    monkeypatch.setattr(bench, "answer_row", interrupted)
    args = ["predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2"]
    first = _run(*args)
    _no_traceback(first)
    assert first.exit_code == 130 and "--resume" in first.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r1", "r2"]
    out.write_bytes(out.read_bytes() + b'{"id": "r3", "sen')  # a line torn by the interrupt
    monkeypatch.setattr(bench, "answer_row", lambda tracer, row, **kw: (calls.append(row["id"]), real(tracer, row, **kw))[1])
    calls.clear()
    second = _run(*args, "--resume")
    assert second.exit_code == 0, second.output
    assert calls == ["r3", "r4"]  # the finished rows were not answered again
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["r1", "r2", "r3", "r4"]


def test_predict_survives_an_unexpected_exception_in_one_row(tmp_path, model_dir, monkeypatch):
    from omnitrace_core.evaluation import bench

    real = bench.answer_row

    def flaky(tracer, row, **kw):
        if row["id"] == "bad":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(tracer, row, **kw)

    monkeypatch.setattr(bench, "answer_row", flaky)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**GOOD, "id": "bad"}) + "\n" + json.dumps(GOOD) + "\n")
    out = tmp_path / "p.jsonl"
    result = _run("predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2")
    _no_traceback(result)
    assert result.exit_code == 1
    assert f"{data}:1: row 'bad' failed: RuntimeError: CUDA out of memory" in result.output
    assert json.loads(out.read_text())["id"] == "r1"


# -- run --sources -------------------------------------------------------------------------------

SOURCES_FILES = {
    "json-list": (json.dumps([{"id": "a", "text": "The tower is 42 metres tall."}]), 0, None),
    "json-dict": (json.dumps({"sources": [{"id": "a", "text": "The tower is 42 metres tall."}]}), 0, None),
    "jsonl": (json.dumps({"id": "a", "text": "T is 42 m."}) + "\n" + json.dumps({"id": "b", "text": "U is 3 m."}), 0, None),
    "json-u2028": (json.dumps([{"id": "a", "text": "The tower\u2028is 42 metres tall."}], ensure_ascii=False), 0, None),
    "jsonl-u2028": (
        json.dumps({"id": "a", "text": "T\u2028is 42 m."}, ensure_ascii=False) + "\n" + json.dumps({"id": "b", "text": "U\u2029is 3."}, ensure_ascii=False),
        0,
        None,
    ),
    "bom": ("\ufeff" + json.dumps([{"id": "a", "text": "The tower is 42 metres tall."}]), 0, None),
    "invalid-json": ('[{"id": "a", "text": "x"', 2, ":1: invalid JSON"),
    "invalid-jsonl-line-2": (json.dumps({"id": "a", "text": "x"}) + "\n{oops", 2, ":2: invalid JSON"),
    "empty": ("", 2, "the file is empty"),
    "blank": ("  \n ", 2, "the file is empty"),
    "not-a-source": ("[5]", 2, "source #0 must be"),
    "empty-text": (json.dumps([{"id": "a", "text": ""}]), 2, "source text is empty"),
    "surrogate": ('[{"id": "a", "text": "x\\ud800"}]', 2, "lone surrogate"),
    "nan-segment": ('[{"id": "a", "text": "abc", "segments": [{"start_s": 0, "end_s": NaN, "char_start": 0, "char_end": 2}]}]', 2, "end_s"),
    "duplicate-ids": (json.dumps([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]), 2, "duplicate source id 'a'"),
}


@pytest.mark.parametrize("case", sorted(SOURCES_FILES))
def test_run_sources_files(case, tmp_path, model_dir):
    content, code, message = SOURCES_FILES[case]
    path = tmp_path / "sources.json"
    path.write_text(content, encoding="utf-8")
    result = _run("run", "--sources", str(path), "--question", "How tall?", "--model", str(model_dir), "--max-new-tokens", "2", "--json")
    _no_traceback(result)
    assert result.exit_code == code, result.output
    if message:
        (line,) = _errors(result.output)
        assert message in line and str(path) in line, line


def test_run_question_with_a_lone_surrogate_is_named(tmp_path, model_dir):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"id": "a", "text": "T is 42 m."}]))
    result = _run("run", "--sources", str(path), "--question", "   ", "--model", str(model_dir))
    _no_traceback(result)
    assert result.exit_code == 2 and "question is empty" in result.output


def test_run_max_new_tokens_zero_is_refused(tmp_path, model_dir):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"id": "a", "text": "T is 42 m."}]))
    result = _run("run", "--sources", str(path), "--question", "q", "--model", str(model_dir), "--max-new-tokens", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output


# -- eval --------------------------------------------------------------------------------------


def test_eval_out_existing_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**GOOD, "task": "qa_single", "gold_sources": ["doc1"]}) + "\n")
    out = tmp_path / "metrics.txt"
    out.write_text("keep me")
    result = _run("eval", str(data), "--out", str(out), "--baseline", "lexical")
    _no_traceback(result)
    assert result.exit_code == 2 and "is a file" in result.output
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_eval_limit_must_be_positive(limit, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**GOOD, "task": "qa_single", "gold_sources": ["doc1"]}) + "\n")
    result = _run("eval", str(data), "--out", str(tmp_path / "ev"), "--baseline", "lexical", "--limit", limit)
    _no_traceback(result)
    assert result.exit_code == 2 and "--limit must be >= 1" in result.output


def test_eval_names_bad_rows_and_exits_1(tmp_path):
    good = {
        **GOOD,
        "task": "teacher_forced",
        "response": "A is in Bay.",
        "response_sentences": [{"text": "A is in Bay.", "start": 0, "end": 12, "gold_sources": ["doc1"]}],
    }
    data = tmp_path / "d.jsonl"
    data.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\n"
        + json.dumps({**good, "id": None}).encode() + b"\n"
        + json.dumps({**good, "id": "t", "task": "essay"}).encode() + b"\n"
    )
    result = _run("eval", str(data), "--out", str(tmp_path / "ev"), "--baseline", "lexical")
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    assert f"{data}:2: 'id' must be a non-empty string" in result.output
    assert "unknown task 'essay'" in result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["rows_evaluated"] == 1


def test_eval_empty_file_exits_2(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    result = _run("eval", str(data), "--out", str(tmp_path / "ev"), "--baseline", "lexical")
    _no_traceback(result)
    assert result.exit_code == 2 and "no usable dataset rows" in result.output


def test_score_accepts_a_bom_in_predictions(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({**GOOD, "task": "qa_single", "gold_sources": ["doc1"]}) + "\n")
    pred = tmp_path / "p.jsonl"
    pred.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "r1", "text": "A is in Bay.", "sentences": [{"text": "A is in Bay.", "start": 0, "end": 12, "sources": ["doc1"]}]}).encode() + b"\n")
    result = _run("score", str(data), str(pred), "--json")
    assert result.exit_code == 0, result.output

