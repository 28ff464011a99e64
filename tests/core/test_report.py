"""`omnitrace report`: tables (best in bold), prose from the numbers, plots, the HTML gallery and its hover state."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from omnitrace_core.cli import app
from omnitrace_core.evaluation.report import (
    GallerySection,
    ReportInputError,
    baseline_summary,
    build_report,
    dump_dom,
    find_chromium,
    load_eval,
    per_kind_plot,
    per_task_plot,
    pick_rows,
    quality_cost_plot,
    render_gallery,
    task_tables,
    write_gallery,
    write_results,
)
from omnitrace_core.evaluation.report.gallery import sentence_gold
from omnitrace_core.evaluation.report.plots import MissingExtraError
from omnitrace_core.evaluation.report.tables import cost_table, faithfulness_table, fmt, table

SOURCES = [
    {"id": "doc1", "modality": "text", "title": "Valbrook <Works>", "text": "Valbrook Works was founded in 1905 in Cedar Falls.",
     "keys": ["Valbrook Works", "1905", "Cedar Falls"]},
    {"id": "doc2", "modality": "text", "title": "Lunia & Co", "text": "Lunia Labs makes <script>alert(1)</script> tiles in Port Ashby.",
     "keys": ["Lunia Labs", "Port Ashby"]},
]
DATASET = [
    {"id": "g1", "task": "qa_single", "sources": SOURCES, "question": "When was \"Valbrook\" founded?", "gold_sources": ["doc1"]},
    {"id": "f1", "task": "teacher_forced", "sources": SOURCES, "question": "Facts?",
     "response": "Lunia Labs is in Port Ashby. Valbrook Works is in Cedar Falls.",
     "response_sentences": [
         {"text": "Lunia Labs is in Port Ashby.", "start": 0, "end": 28, "gold_sources": ["doc2"], "kind": "extractive"},
         {"text": "Valbrook Works is in Cedar Falls.", "start": 29, "end": 62, "gold_sources": ["doc1"]}]},
]
OURS = [
    {"id": "g1", "text": "Valbrook Works was founded in 1905. <b>Really</b>.",
     "sentences": [
         {"text": "Valbrook Works was founded in 1905.", "start": 0, "end": 35,
          "citations": [{"source_id": "doc1", "score": 0.8, "char_start": 0, "char_end": 34}]},
         {"text": "<b>Really</b>.", "start": 36, "end": 50, "citations": [], "grounded": False}]},
    {"id": "f1", "text": "Lunia Labs is in Port Ashby. Valbrook Works is in Cedar Falls.",
     "sentences": [
         {"text": "Lunia Labs is in Port Ashby.", "start": 0, "end": 28,
          "citations": [{"source_id": "doc2", "score": 0.7, "cited_text": "Lunia Labs makes"}]},
         {"text": "Valbrook Works is in Cedar Falls.", "start": 29, "end": 62,
          "citations": [{"source_id": "doc2", "score": 0.6}, {"source_id": "doc1", "score": 0.4}]}]},
]
LEXICAL = [
    {"id": "g1", "text": OURS[0]["text"],
     "sentences": [{"text": "Valbrook Works was founded in 1905.", "start": 0, "end": 35,
                    "citations": [{"source_id": "doc1", "score": 1.0}]}]},
    {"id": "f1", "text": OURS[1]["text"],
     "sentences": [{"text": "Lunia Labs is in Port Ashby.", "start": 0, "end": 28, "citations": [{"source_id": "doc2", "score": 1.0}]},
                   {"text": "Valbrook Works is in Cedar Falls.", "start": 29, "end": 62,
                    "citations": [{"source_id": "doc1", "score": 1.0}]}]},
]


def _m(f1: float, n: int = 3, **extra: Any) -> dict[str, Any]:
    return {"rows": 2, "missing_predictions": 0, "labelled_sentences": n, "sentence_precision": f1, "sentence_recall": 1.0,
            "sentence_f1_micro": f1, "sentence_f1_macro": f1, "answer_f1": None, "option_consistency": None,
            "time_f1_micro": None, "time_f1_macro": None, "unsupported_precision": None, "unsupported_recall": None,
            "unsupported_f1": None, **extra}


METRICS = {
    "dataset": "data.jsonl",
    "attention_predictions": "pred.jsonl",
    "rows_read": 2,
    "rows_evaluated": 2,
    "methods": {
        "omnitrace": {"predictions": "elsewhere/predictions-omnitrace.jsonl", "failures": [],
                      "metrics": {"all": _m(0.75, sentence_f1_extractive=0.5), "qa_single": _m(1.0, 1), "teacher_forced": _m(0.667, 25)},
                      "cost": {"forward_passes": 4, "backward_passes": 0, "seconds": 2.0, "sentences": 4,
                               "forward_passes_per_sentence": 1.0, "seconds_per_sentence": 0.5},
                      "faithfulness": {"logp_drop_k1": 1.25, "logp_drop_k3": 2.0, "sentences": 4}},
        "random": {"predictions": "x", "failures": [],
                   "metrics": {"all": _m(0.25, sentence_f1_extractive=0.0), "qa_single": _m(0.0, 1), "teacher_forced": _m(0.4, 25)},
                   "cost": {"forward_passes": 0, "backward_passes": 0, "seconds": 0.0001, "sentences": 4,
                            "forward_passes_per_sentence": 0.0, "seconds_per_sentence": 0.000025}},
        "lexical": {"predictions": "x", "failures": [{"id": "g9", "error": "boom"}],
                    "metrics": {"all": _m(0.9, sentence_f1_extractive=1.0), "qa_single": _m(1.0, 1), "teacher_forced": _m(1.0, 25)},
                    "cost": {"forward_passes": 0, "backward_passes": 0, "seconds": 0.004, "sentences": 4,
                             "forward_passes_per_sentence": 0.0, "seconds_per_sentence": 0.001}},
    },
    # a control recorded only at the top level
    "faithfulness": {"random": {"logp_drop_k1": 0.25, "logp_drop_k3": 0.5, "sentences": 4}},
}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    d = tmp_path / "eval-dev"
    d.mkdir()
    _jsonl(tmp_path / "data.jsonl", DATASET)  # found next to the eval folder, not via the cwd
    _jsonl(d / "predictions-omnitrace.jsonl", OURS)
    _jsonl(d / "predictions-lexical.jsonl", LEXICAL)
    (d / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    return d


# ---------------------------------------------------------------- tables and prose


def test_load_eval_reads_methods_and_resolves_paths(eval_dir: Path) -> None:
    run = load_eval(eval_dir)
    assert run.label == "dev"
    assert run.dataset_path == eval_dir / "data.jsonl" or run.dataset_path == eval_dir.parent / "data.jsonl"
    assert run.dataset_path is not None and run.dataset_path.exists()
    assert run.methods["omnitrace"].predictions == eval_dir / "predictions-omnitrace.jsonl"
    assert run.methods["lexical"].failures == 1
    assert run.tasks == ["all", "qa_single", "teacher_forced"]
    assert set(run.faithfulness()) == {"omnitrace", "random"}  # the top-level control is kept
    assert set(run.costs()) == {"omnitrace", "random", "lexical"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "missing"),
        (lambda d: (d / "metrics.json").write_text("{not json"), "unreadable"),
        (lambda d: (d / "metrics.json").write_text('{"methods": {}}'), "no 'methods'"),
        (lambda d: (d / "metrics.json").write_text('{"methods": {"a": {}}}'), "'a' has no 'metrics'"),
    ],
)
def test_load_eval_errors_name_the_problem(tmp_path: Path, setup: Any, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(ReportInputError, match=re.escape(message)) as info:
        load_eval(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ReportInputError, match="not a folder"):
        load_eval(tmp_path / "nope")


def test_task_tables_bold_the_best_per_column(eval_dir: Path) -> None:
    md = task_tables(load_eval(eval_dir))
    assert "#### all (2 rows)" in md and "#### teacher_forced (2 rows)" in md
    all_table = md.split("#### qa_single")[0]
    assert "extractive F1" in all_table  # per-kind column
    assert "answer F1" not in all_table and "time F1" not in all_table and "missing" not in all_table  # no values
    lexical = next(line for line in all_table.splitlines() if line.startswith("| lexical"))
    assert "**0.900**" in lexical and "**1.000**" in lexical.split("|")[-2]  # F1 micro and extractive F1
    ours = next(line for line in all_table.splitlines() if line.startswith("| omnitrace"))
    assert "**" not in ours.split("|")[3]  # sent F1 micro column not bold for ours
    # "sent R" is 1.0 for every method: a tie, so nothing is bold in that column
    rows = [line.split("|") for line in all_table.splitlines() if line.startswith("| ")][2:]
    header = all_table.splitlines()[2].split("|")
    r_col = [c.strip() for c in header].index("sent R")
    assert all("**" not in r[r_col] for r in rows)
    # qa_single: ours and lexical tie at the top, both bold
    qa = md.split("#### qa_single")[1].split("####")[0]
    assert qa.count("**1.000**") >= 2


def test_table_compares_values_as_shown() -> None:
    md = table([("a", {"x": 0.0004}), ("b", {"x": 0.00001}), ("c", {"x": 0.5})], [("x", "x", -1)])
    assert "**1e-05**" in md and "**0.0004**" not in md
    assert fmt(None) == "-" and fmt(float("nan")) == "nan" and fmt(3) == "3"


def test_cost_and_faithfulness_tables(eval_dir: Path) -> None:
    run = load_eval(eval_dir)
    cost = cost_table(run)
    assert cost is not None and "seconds / sentence" in cost
    assert "| random | 4 | **0.000** |" in cost  # fewest forward passes (tied with lexical)
    faith = faithfulness_table(run)
    assert faith is not None and "| omnitrace | 4 | **1.250** | **2.000** |" in faith and "| random |" in faith
    run.methods["lexical"].faithfulness = {
        "logp_drop_k1": 2.0,
        "sentences": 3,
        "paired_k1": {"reference": "omnitrace", "diff": 0.5, "ci95": [-0.25, 1.0], "sentences": 3},
    }
    paired = faithfulness_table(run)
    assert paired is not None and "top-1 minus omnitrace, paired [95% CI] (sentences)" in paired
    assert "+0.50 [-0.25, +1.00] (3)" in paired  # the interval holds 0: a tie, nothing bold
    for m in run.methods.values():
        m.cost = m.faithfulness = None
    run.extra_faithfulness = {}
    assert cost_table(run) is None and faithfulness_table(run) is None


def test_baseline_summary_quotes_the_numbers(eval_dir: Path) -> None:
    text = "\n".join(baseline_summary(load_eval(eval_dir)))
    assert "teacher_forced lexical 1.000 vs 0.667 (n=25)" in text
    assert "qa_single lexical 1.000 vs 1.000 (n=1*)" in text and "fewer than 20 labelled sentences" in text
    assert "a baseline is ahead on teacher_forced" in text and "they tie (within 0.005) on qa_single" in text
    assert "omnitrace is ahead on no task" in text
    assert "extractive: lexical 1.000 vs omnitrace 0.500" in text
    assert "random baseline (chance level) scores 0.250" in text
    assert "0.500 s per sentence for omnitrace vs 0.001 for lexical" in text
    assert "1.250 for omnitrace vs 0.250" in text and "matter more to the model than chance" in text
    assert "word-matching baseline scores 1.0 on teacher_forced (lexical): those" in text  # not qa_single: n=1


# ---------------------------------------------------------------- plots


def test_plots_are_written(eval_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = load_eval(eval_dir)
    for path in (quality_cost_plot(run, tmp_path / "img" / "qc.png"), per_task_plot(run, tmp_path / "img" / "tasks.png"),
                 per_kind_plot(run, tmp_path / "img" / "kinds.png")):
        assert path is not None and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for m in run.methods.values():
        m.cost = None
    assert quality_cost_plot(run, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_plots_without_matplotlib_name_the_extra(eval_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'omnitrace-integrations[eval]'")):
        per_task_plot(load_eval(eval_dir), tmp_path / "x.png")


# ---------------------------------------------------------------- gallery


def _section(compare: bool = True) -> GallerySection:
    return GallerySection(label="dev <set>", rows=DATASET, predictions={p["id"]: p for p in OURS}, method="omnitrace",
                          compare={p["id"]: p for p in LEXICAL} if compare else None,
                          compare_method="lexical" if compare else None, dataset="data.jsonl")


def test_gallery_escapes_text_and_names_sentences_and_sources() -> None:
    page = render_gallery([_section()], title="T <&>").html
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>Really</b>" not in page and "&lt;b&gt;Really&lt;/b&gt;" in page
    assert "Valbrook &lt;Works&gt;" in page and "Lunia &amp; Co" in page and "T &lt;&amp;&gt;" in page
    assert "&quot;Valbrook&quot;" in page and "dev &lt;set&gt;" in page
    for element_id in ("row0", "row0-s0", "row0-s1", "row0-src0", "row0-src1", "row1-s1"):
        assert f'id="{element_id}"' in page
    assert 'data-row-id="g1"' in page and 'data-source="doc2"' in page
    assert "http" not in page.replace("http-equiv", "")  # nothing external
    # row1-s1 cites doc2 then doc1 (coloured by doc2), lexical cites doc1, gold is doc1
    s = re.search(r'<tr class="sent" id="row1-s1"[^>]*>', page)
    assert s is not None
    assert 'data-cites="row1-src1 row1-src0"' in s.group(0) and 'data-alt="row1-src0"' in s.group(0)
    assert 'data-gold="row1-src0"' in s.group(0)
    # ungrounded sentence is marked; cited spans (offsets, cited text) become segments
    assert re.search(r'<tr class="sent unsup" id="row0-s1"', page)
    assert '<span class="seg" data-by="row0-s0">Valbrook Works was founded in 1905</span> in Cedar Falls.' in page
    assert '<span class="seg" data-by="row1-s0">Lunia Labs makes</span>' in page
    plain = render_gallery([_section(compare=False)]).html
    assert plain.count("<th>") == 2 * 4 and "<th>lexical</th>" not in plain  # no second-method column


def test_sentence_gold_forced_and_generated() -> None:
    forced, generated = DATASET[1], DATASET[0]
    assert sentence_gold(forced, OURS[1]["sentences"][1], OURS[1]["text"]) == (["doc1"], False)
    assert sentence_gold(generated, OURS[0]["sentences"][0], OURS[0]["text"]) == (["doc1"], False)
    assert sentence_gold(generated, OURS[0]["sentences"][1], OURS[0]["text"]) == (None, False)  # unlabelled


def test_pick_rows_spreads_over_tasks() -> None:
    rows = [{"id": f"{t}{i}", "task": t} for t in ("a", "b", "c") for i in range(10)]
    preds = {r["id"]: {"id": r["id"], "text": "x", "sentences": [{"text": "x", "citations": []}]} for r in rows}
    picked = pick_rows(rows, preds, examples=5)
    assert [r["task"] for r in picked] == ["a", "a", "b", "b", "c"]
    assert [r["id"] for r in picked][:2] == ["a0", "a9"]  # spread, not the first two
    assert pick_rows(rows, preds, ids=["b3"]) == [rows[13]]
    with pytest.raises(ReportInputError, match="nope"):
        pick_rows(rows, preds, ids=["nope"])


@pytest.mark.skipif(find_chromium() is None, reason="needs a Chromium on PATH (Debian: apt-get install chromium)")
def test_hover_from_url_applies_highlight_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "gallery.html"
    write_gallery([_section()], page)
    dom = dump_dom(page, hover="row1-s1")
    assert re.search(r'<body[^>]*data-hover="row1-s1"', dom)
    assert re.search(r'<tr class="sent hl" id="row1-s1"', dom)
    assert re.search(r'<div class="src cited cited-alt gold-now" id="row1-src0"', dom)  # cited by both, gold
    assert re.search(r'<div class="src cited" id="row1-src1"', dom)
    assert re.search(r'<section class="row hovering" id="row1"', dom)
    dom = dump_dom(page, hover="row0-s0")
    assert '<span class="seg span-hl" data-by="row0-s0">' in dom
    plain = dump_dom(page)  # no fragment: nothing hovered
    assert 'class="seg span-hl"' not in plain and not re.search(r"<body[^>]*data-hover", plain)


# ---------------------------------------------------------------- whole report and CLI


def test_write_results_page(eval_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    docs = tmp_path / "docs"
    path = write_results([eval_dir], docs, title="Results", commands=["omnitrace eval X --out Y", "make results"],
                         compare="lexical", take_screenshot=False)
    md = path.read_text()
    assert path == docs / "results.md"
    assert "```bash\nomnitrace eval X --out Y\nmake results\n```" in md
    assert "[gallery.html](gallery.html)" in md and (docs / "gallery.html").exists()
    assert "![dev: quality vs cost](images/dev-quality-cost.png)" in md and (docs / "images/dev-quality-cost.png").exists()
    assert "(images/dev-per-task.png)" in md and "(images/dev-per-kind.png)" in md
    assert "### What the baselines are good at" in md and "### Cost" in md and "### Faithfulness" in md
    assert "1 failed predictions" in md
    assert "**0.900**" in md


@pytest.mark.skipif(find_chromium() is None, reason="needs a Chromium on PATH (Debian: apt-get install chromium)")
def test_report_screenshot(eval_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = build_report([eval_dir], tmp_path / "docs", compare="lexical")
    assert out.notes == [] and out.screenshot is not None
    assert out.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.screenshot.stat().st_size > 10_000
    assert "![gallery, one sentence hovered](images/gallery.png)" in out.results.read_text()


def test_report_command(eval_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    docs = tmp_path / "docs"
    result = CliRunner().invoke(app, ["report", str(eval_dir), "--docs", str(docs), "--no-screenshot",
                                      "--compare", "lexical", "--examples", "2"])
    assert result.exit_code == 0, result.output
    md = (docs / "results.md").read_text()
    assert f"omnitrace eval data.jsonl --out {eval_dir} --pred pred.jsonl --baseline random --baseline lexical" in md
    assert f"omnitrace report {eval_dir} --docs {docs}" in md
    assert (docs / "gallery.html").exists()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--docs", str(docs)])
    assert bad.exit_code == 2 and "not a folder" in bad.output


def test_gallery_shows_media_sources_and_cited_seconds() -> None:
    row = {"id": "a1", "task": "qa_single", "question": "When?", "gold_sources": ["rec"], "gold_spans": {"rec": [[0.5, 3.98]]},
           "sources": [{"id": "rec", "modality": "audio", "title": "Voicemail", "path": "bridge<1>.wav"}]}
    pred = {"id": "a1", "text": "It opened in 1987.", "sentences": [
        {"text": "It opened in 1987.", "start": 0, "end": 18,
         "citations": [{"source_id": "rec", "score": 0.9, "seconds": [[0.5, 4.0]]}]}]}
    page = render_gallery([GallerySection("audio", [row], {"a1": pred}, "omnitrace", dataset="audio.jsonl")]).html
    assert '<span class="badge">audio</span>' in page and "<code>bridge&lt;1&gt;.wav</code>" in page
    assert "gold 0.5\u20134.0 s" in page and "rec @0.5\u20134.0 s" in page
    assert 'title="score 0.90; seconds 0.5\u20134.0 s' in page


def test_single_task_run_without_ours(tmp_path: Path) -> None:
    methods = {
        "random": {"metrics": {"all": _m(0.2, 30, sentence_f1_paraphrase=0.1), "teacher_forced": _m(0.2, 30, sentence_f1_paraphrase=0.1)}},
        "lexical": {"metrics": {"all": _m(0.5, 30, sentence_f1_paraphrase=0.0), "teacher_forced": _m(0.5, 30, sentence_f1_paraphrase=0.0)}},
        "embedding": {"metrics": {"all": _m(0.7, 30, sentence_f1_paraphrase=0.6), "teacher_forced": _m(0.7, 30, sentence_f1_paraphrase=0.6)}},
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"dataset": "hard.jsonl", "methods": methods}))
    run = load_eval(tmp_path)
    md = task_tables(run)
    assert "#### all (2 rows, every row teacher_forced)" in md and "#### teacher_forced" not in md
    text = "\n".join(baseline_summary(run))
    assert "No `omnitrace` predictions in this run; best baseline overall: embedding (0.700" in text
    assert "paraphrase: best embedding 0.600, worst lexical 0.000" in text
    assert "extractive" not in text  # no such kind here
