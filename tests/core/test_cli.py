"""CLI: predict on a folder model, malformed rows are named and skipped, run prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from omnitrace_core.cli import app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_predict_writes_scorable_rows_and_names_bad_lines(tmp_path, model_dir, bench_dir):
    good = {
        "id": "r1",
        "task": "qa_single",
        "question": "Where?",
        "sources": [{"id": "doc1", "modality": "text", "title": "A", "text": "A is in Bay.", "keys": ["A"]}],
        "gold_sources": ["doc1"],
    }
    forced = {
        "id": "r2",
        "task": "teacher_forced",
        "question": "Where?",
        "response": "A is in Bay.",
        "sources": good["sources"],
        "response_sentences": [{"text": "A is in Bay.", "start": 0, "end": 12, "gold_sources": ["doc1"]}],
    }
    data = tmp_path / "data.jsonl"
    data.write_bytes(
        (json.dumps(good) + "\n{not json\n" + json.dumps({"id": "x"}) + "\n").encode()
        + b"\xff\xfe\n"
        + (json.dumps(forced) + "\n").encode()
    )
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(
        app, ["predict", str(data), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "8"]
    )
    assert result.exit_code == 1, result.output  # some rows were skipped
    assert ":2: invalid JSON" in result.output
    assert ":3: row is missing 'sources'" in result.output
    assert ":4: not UTF-8" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r1", "r2"]
    assert rows[1]["text"] == "A is in Bay." and rows[1]["sentences"][0]["start"] == 0
    # the reference scorer accepts the file (scored against the valid rows)
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(good) + "\n" + json.dumps(forced) + "\n")
    proc = subprocess.run(
        [sys.executable, str(bench_dir / "score.py"), str(clean), str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["missing_predictions"] == 0


def test_run_prints_json(tmp_path, model_dir):
    src = tmp_path / "sources.json"
    src.write_text(json.dumps([{"id": "a", "text": "The tower is 42 metres tall."}]))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--sources",
            str(src),
            "--question",
            "How tall?",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "6",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    assert payload["sources"][0]["id"] == "a"


def test_run_rejects_bad_sources_file(tmp_path, model_dir):
    src = tmp_path / "sources.json"
    src.write_bytes(b"\xff\xfe[]")
    result = CliRunner().invoke(
        app, ["run", "--sources", str(src), "--question", "q", "--model", str(model_dir)]
    )
    assert result.exit_code == 2
    assert "not UTF-8" in result.output


def test_unknown_model_is_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "r", "question": "q", "sources": [{"id": "a", "text": "t"}]}) + "\n")
    result = CliRunner().invoke(app, ["predict", str(data), "--out", str(tmp_path / "p"), "--model", "nope"])
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.output


def test_run_names_a_missing_media_file(tmp_path):
    from typer.testing import CliRunner

    from omnitrace_core.cli import app

    result = CliRunner().invoke(app, ["run", "--question", "q", "--image", str(tmp_path / "nope.png")])
    assert result.exit_code == 2
    assert "nope.png: no such file" in result.output


def test_run_needs_some_source():
    from typer.testing import CliRunner

    from omnitrace_core.cli import app

    result = CliRunner().invoke(app, ["run", "--question", "q"])
    assert result.exit_code == 2
    assert "no sources" in result.output


def test_media_paths_resolve_against_the_dataset_folder(tmp_path):
    from omnitrace_core.evaluation.bench import resolve_media_paths

    rows = [{"id": "a", "modality": "audio", "path": "audio/a.wav"}, {"id": "b", "text": "x"},
            {"id": "c", "modality": "image", "path": "/abs/c.png"}]
    got = resolve_media_paths(rows, tmp_path)
    assert got[0]["path"] == str(tmp_path / "audio/a.wav")
    assert got[1] == rows[1] and got[2]["path"] == "/abs/c.png"
