"""``omnitrace score`` and ``omnitrace eval``: score prediction files, run and compare baselines.

``omnitrace eval DATA --out DIR [--baseline NAME ...] [--pred PRED.jsonl] [--limit N]`` runs each
baseline on the same response texts as the attention predictions (a forced row's ``response``;
for a generated row the text of its row in ``--pred``), scores every method per task with
:mod:`omnitrace_core.metrics` and writes

- ``DIR/predictions-<method>.jsonl`` (the shared prediction format; ``omnitrace`` is the
  ``--pred`` file restricted to the evaluated rows),
- ``DIR/failures-<method>.jsonl`` (rows whose prediction raised, with the error),
- ``DIR/metrics.json`` and ``DIR/metrics.md`` (a table per task).

Resumable: rows already in a method's prediction file are kept (a truncated last line from an
interrupted run is dropped), so a rerun only predicts what is missing; a method whose file is
complete is not run again. A row that raises is recorded and skipped, never the whole run.
Rows without a response text (generated rows when no ``--pred`` is given) are left out of
every method's scores and counted in ``metrics.json``.

Exit codes (both commands): 0 all rows scored; 1 done, but rows were skipped, failed or
malformed (the report names them); 2 unusable input (unreadable dataset, no usable row,
unknown baseline).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omnitrace_core.baselines import BASELINES, Baseline, make_baseline
from omnitrace_core.errors import OmniTraceError
from omnitrace_core.metrics import Metrics, prediction_problems, score_by_task

console = Console()
err = Console(stderr=True, soft_wrap=True)

ATTENTION_METHOD = "omnitrace"

# (key, column title) of the markdown / terminal tables, in order; empty columns are dropped.
COLUMNS = (
    ("rows", "rows"),
    ("labelled_sentences", "sentences"),
    ("sentence_f1_micro", "sent F1 micro"),
    ("sentence_f1_macro", "sent F1 macro"),
    ("sentence_precision", "sent P"),
    ("sentence_recall", "sent R"),
    ("answer_f1", "answer F1"),
    ("option_consistency", "option cons."),
    ("unsupported_precision", "unsup P"),
    ("unsupported_recall", "unsup R"),
    ("unsupported_f1", "unsup F1"),
    ("time_f1_micro", "time F1 micro"),
    ("time_f1_macro", "time F1 macro"),
    ("missing_predictions", "missing"),
)


class EvalInputError(OmniTraceError):
    """The dataset or the arguments are unusable as a whole (exit code 2)."""


@dataclass
class Dataset:
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    all_ids: set[str] = field(default_factory=set)  # every valid row's id, also those past --limit


def load_dataset(path: Path, limit: int | None = None) -> Dataset:
    """Valid rows of a benchmark file (the first ``limit``), and a message per skipped line."""
    from omnitrace_core.bench import RowError, read_rows

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for row in read_rows(path):
        if isinstance(row, RowError):
            problems.append(row.message)
            continue
        if row["id"] in seen:
            problems.append(f"{path}: duplicate row id {row['id']!r} (later row skipped)")
            continue
        seen.add(row["id"])
        rows.append(row)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvalInputError(
            f"{path}: no usable dataset rows" + (f" ({len(problems)} malformed)" if problems else "")
        )
    return Dataset(rows, problems, seen)


def load_predictions(
    path: Path, known_ids: set[str] | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Scorable prediction rows by id, and a message for every line left out and why."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"cannot read predictions {path}: {exc}") from exc
    preds: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        issues = prediction_problems(row)
        if issues:
            problems.append(f"{path}:{number}: " + "; ".join(issues))
            continue
        if known_ids is not None and row["id"] not in known_ids:
            problems.append(f"{path}:{number}: id {row['id']!r} is not in the dataset")
            continue
        if row["id"] in preds:
            problems.append(f"{path}:{number}: duplicate prediction for {row['id']!r} (later row skipped)")
            continue
        preds[row["id"]] = row
    return preds, problems


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _columns(metrics: Sequence[Metrics]) -> list[tuple[str, str]]:
    kinds = sorted(
        {k for m in metrics for k in m if k.startswith("sentence_f1_")}
        - {"sentence_f1_micro", "sentence_f1_macro"}
    )
    cols = [*COLUMNS[:6], *((k, k.removeprefix("sentence_f1_") + " F1") for k in kinds), *COLUMNS[6:]]
    return [(k, title) for k, title in cols if any(m.get(k) is not None for m in metrics)]


def markdown_table(by_method: Mapping[str, Mapping[str, Metrics]], heading: str = "##") -> str:
    """A markdown table per task (``all`` first): one line per method."""
    tasks: list[str] = []
    for per_task in by_method.values():
        tasks += [t for t in per_task if t not in tasks]
    out = []
    for task in tasks:
        methods = [(name, per_task[task]) for name, per_task in by_method.items() if task in per_task]
        cols = _columns([m for _, m in methods])
        out.append(f"{heading} {task}\n")
        out.append("| method | " + " | ".join(title for _, title in cols) + " |")
        out.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
        for name, m in methods:
            out.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in cols) + " |")
        out.append("")
    return "\n".join(out)


def _print_tables(by_method: Mapping[str, Mapping[str, Metrics]]) -> None:
    """One terminal table per method: a line per metric, a column per task."""
    for name, per_task in by_method.items():
        tasks = list(per_task)
        table = Table(title=name)
        table.add_column("metric")
        for task in tasks:
            table.add_column(task, justify="right")
        for key, title in _columns(list(per_task.values())):
            table.add_row(title, *(_fmt(per_task[t].get(key)) for t in tasks))
        console.print(table)


# ---------------------------------------------------------------- running one method


@dataclass
class MethodRun:
    name: str
    predictions: dict[str, dict[str, Any]]
    failures: list[dict[str, str]]
    resumed_rows: int
    new_rows: int
    seconds: float


def _read_done(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Prediction rows already written by an earlier run (a torn last line is dropped)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("id") in wanted and not prediction_problems(row):
            done.setdefault(row["id"], row)
    return done


def run_method(
    name: str,
    predict: Callable[[dict[str, Any], str], dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    texts: Mapping[str, str],
    out_dir: Path,
    advance: Callable[[], None] = lambda: None,
) -> MethodRun:
    """Predict every row not yet in ``out_dir/predictions-<name>.jsonl``; record crashing rows."""
    path = out_dir / f"predictions-{name}.jsonl"
    done = _read_done(path, {r["id"] for r in rows})
    ordered = [r for r in rows if r["id"] in done]
    with path.open("w", encoding="utf-8") as f:  # rewrite what is kept (drops a torn line)
        for r in ordered:
            f.write(json.dumps(done[r["id"]]) + "\n")
    failures: list[dict[str, str]] = []
    started = time.perf_counter()
    new = 0
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            if row["id"] in done:
                advance()
                continue
            try:
                prediction = predict(row, texts[row["id"]])
            except Exception as exc:  # a crashing row is recorded and skipped, never the run
                failures.append({"id": row["id"], "error": f"{type(exc).__name__}: {exc}"})
                advance()
                continue
            done[row["id"]] = prediction
            f.write(json.dumps(prediction) + "\n")
            f.flush()
            new += 1
            advance()
    fail_path = out_dir / f"failures-{name}.jsonl"
    if failures:
        fail_path.write_text("".join(json.dumps(x) + "\n" for x in failures), encoding="utf-8")
    elif fail_path.exists():
        fail_path.unlink()
    return MethodRun(name, done, failures, len(ordered), new, time.perf_counter() - started)


def response_texts(
    rows: Sequence[dict[str, Any]], attention: Mapping[str, Mapping[str, Any]] | None
) -> tuple[dict[str, str], list[str]]:
    """The text to attribute per row id (forced response, else the ``--pred`` text), and ids without one."""
    texts: dict[str, str] = {}
    missing: list[str] = []
    for row in rows:
        if row.get("response"):
            texts[row["id"]] = row["response"]
        elif attention is not None and row["id"] in attention:
            texts[row["id"]] = str(attention[row["id"]].get("text", ""))
        else:
            missing.append(row["id"])
    return texts, missing


def evaluate(
    data: Path,
    out_dir: Path,
    baselines: Sequence[str] = BASELINES,
    pred: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run and score every method; write predictions, ``metrics.json`` and ``metrics.md`` in ``out_dir``."""
    try:
        methods: list[Baseline] = [make_baseline(b, seed=seed) for b in dict.fromkeys(baselines)]
    except ValueError as exc:
        raise EvalInputError(str(exc)) from exc
    dataset = load_dataset(data, limit)
    problems = list(dataset.problems)
    attention: dict[str, dict[str, Any]] | None = None
    if pred is not None:
        attention, pred_problems = load_predictions(pred, dataset.all_ids)
        problems += pred_problems
    texts, no_text = response_texts(dataset.rows, attention)
    rows = [r for r in dataset.rows if r["id"] in texts]
    if not rows:
        raise EvalInputError(
            f"{data}: no row has a response text to attribute (teacher_forced rows have one; "
            "pass --pred PRED.jsonl for generated rows)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    advance = progress(len(rows) * (len(methods) + (attention is not None))) if progress else (lambda: None)
    runs: list[MethodRun] = []
    if attention is not None:
        given = attention
        runs.append(
            run_method(ATTENTION_METHOD, lambda row, _text: given[row["id"]], rows, texts, out_dir, advance)
        )
    for baseline in methods:
        runs.append(run_method(baseline.name, baseline.predict, rows, texts, out_dir, advance))
    by_method = {run.name: score_by_task(rows, run.predictions) for run in runs}
    report: dict[str, Any] = {
        "dataset": str(data),
        "attention_predictions": str(pred) if pred else None,
        "rows_read": len(dataset.rows),
        "rows_evaluated": len(rows),
        "rows_without_response_text": no_text,
        "input_problems": problems,
        "methods": {
            run.name: {
                "predictions": str(out_dir / f"predictions-{run.name}.jsonl"),
                "rows_predicted": len(run.predictions),
                "rows_resumed": run.resumed_rows,
                "rows_new": run.new_rows,
                "seconds_new_rows": run.seconds,
                "failures": run.failures,
                "metrics": by_method[run.name],
            }
            for run in runs
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    header = (
        f"# Attribution metrics: {data.name}\n\n"
        f"{len(rows)} of {len(dataset.rows)} rows evaluated"
        + (f" ({len(no_text)} without a response text)" if no_text else "")
        + (f"; {len(problems)} input problems (see metrics.json)" if problems else "")
        + ". Metrics as in `omnitrace_core.metrics` (= `score.py`).\n\n"
    )
    (out_dir / "metrics.md").write_text(header + markdown_table(by_method), encoding="utf-8")
    return report


# ---------------------------------------------------------------- commands


def score_command(
    data: Annotated[Path, typer.Argument(help="Dataset in the shared benchmark format (JSONL)")],
    pred: Annotated[Path, typer.Argument(help="Prediction rows (JSONL), e.g. from omnitrace predict")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON")] = False,
) -> None:
    """Score a prediction file against a dataset, overall and per task (same metrics as score.py)."""
    try:
        dataset = load_dataset(data)
        preds, pred_problems = load_predictions(pred, {r["id"] for r in dataset.rows})
    except OmniTraceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    problems = dataset.problems + pred_problems
    if not preds:
        err.print(f"[red]error:[/red] {pred}: no usable prediction rows")
        for p in problems:
            err.print(f"[yellow]skipped:[/yellow] {p}")
        raise typer.Exit(2)
    by_task = score_by_task(dataset.rows, preds)
    for p in problems:
        err.print(f"[yellow]skipped:[/yellow] {p}")
    if as_json:
        print(json.dumps({**by_task, "input_problems": problems}, indent=1))
    else:
        _print_tables({pred.stem: by_task})
    missing = by_task["all"]["missing_predictions"]
    if missing:
        err.print(f"{missing} dataset rows have no prediction (scored as absent)")
    if problems:
        raise typer.Exit(1)


def eval_command(
    data: Annotated[Path, typer.Argument(help="Dataset in the shared benchmark format (JSONL)")],
    out: Annotated[Path, typer.Option(help="Output folder (predictions, metrics.json, metrics.md)")],
    baseline: Annotated[
        list[str] | None,
        typer.Option(help=f"Baseline to run (repeatable): {', '.join(BASELINES)}, carry_forward:<inner>"),
    ] = None,
    pred: Annotated[
        Path | None,
        typer.Option(
            help="Attention predictions (omnitrace predict) to score and whose texts the baselines attribute"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N dataset rows")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random baseline")] = 0,
) -> None:
    """Run baselines on the same responses, score every method per task, write a report."""
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:

        def progress(total: int) -> Callable[[], None]:
            task = bar.add_task("eval", total=total)
            return lambda: bar.advance(task)

        try:
            report = evaluate(data, out, baseline or list(BASELINES), pred, limit, seed, progress)
        except OmniTraceError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    for p in report["input_problems"]:
        err.print(f"[yellow]skipped:[/yellow] {p}")
    failed = 0
    for name, m in report["methods"].items():
        for f in m["failures"]:
            failed += 1
            err.print(f"[yellow]{name}: row {f['id']!r} failed:[/yellow] {f['error']}")
    _print_tables({name: m["metrics"] for name, m in report["methods"].items()})
    skipped = len(report["rows_without_response_text"])
    err.print(
        f"evaluated {report['rows_evaluated']} of {report['rows_read']} rows"
        f" ({skipped} without a response text, {failed} failed predictions); wrote {out}/metrics.json, "
        f"{out}/metrics.md"
    )
    if failed or report["input_problems"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``score`` and ``eval`` to the ``omnitrace`` command."""
    app.command("score")(score_command)
    app.command("eval")(eval_command)
