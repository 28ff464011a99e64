"""The evaluation room's commands: ``omnitrace predict``, ``score``, ``eval``, ``report``, ``calibrate``.

Thin: each command parses its options, calls :mod:`omnitrace_core.evaluation` and maps the
library's errors to exit codes (0 all done; 1 done, something named was skipped; 2 unusable
input).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from omnitrace_core.cli.tracing import make_tracer
from omnitrace_core.errors import InvalidInputError, OmniTraceError
from omnitrace_core.evaluation.baselines import BASELINES
from omnitrace_core.evaluation.bench import completed_ids, numbered_rows, predict_rows
from omnitrace_core.evaluation.data import load_dataset, load_predictions
from omnitrace_core.evaluation.methods import DEFAULT_METHODS, METHODS
from omnitrace_core.evaluation.metrics import score_by_task
from omnitrace_core.evaluation.report.page import DEFAULT_TITLE, build_report
from omnitrace_core.evaluation.report.tables import OURS
from omnitrace_core.evaluation.runner import DEFAULT_MAX_NEW_TOKENS, EvalSettings, evaluate
from omnitrace_core.evaluation.summary import print_summary, print_tables
from omnitrace_core.models import DEFAULT_MODEL

app = typer.Typer()
console = Console()
err = Console(stderr=True, soft_wrap=True)


@app.command()
def predict(
    data: Annotated[Path, typer.Argument(help="Dataset in the shared benchmark format (JSONL)")],
    out: Annotated[Path, typer.Option(help="Where to write prediction rows (JSONL)")],
    model: Annotated[str, typer.Option()] = DEFAULT_MODEL,
    signal: Annotated[
        str | None, typer.Option(help="Signal (default: the model's: learned where calibrated, else attmean)")
    ] = None,
    correction: Annotated[str | None, typer.Option(help="Bias correction: none|prompt|running|both")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    asr: Annotated[
        bool, typer.Option("--asr", help="Transcribe audio sources offline (text models)")
    ] = False,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Re-rank attention votes by embedding similarity (opt-in)")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the rows already in OUT (interrupted run), do the rest")
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Decode up to N generated rows together (Tracer.generate_batch); 1: one at a time",
        ),
    ] = 1,
) -> None:
    """Answer every dataset row and write one prediction row each (scorable by score.py).

    Media sources' ``path``s are read relative to the dataset file. A bad row is named
    (file:line) and skipped, and the exit code is then 1. Interrupted (Ctrl-C)? Rerun with
    ``--resume``: rows already in OUT are kept and not answered again.
    """
    from rich.progress import Progress

    try:
        if limit is not None and limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {limit}")
        _check_output_file(out, "--out")
        numbered = list(numbered_rows(data))
        if not numbered:
            raise InvalidInputError(f"{data}: no rows (the file is empty)")
        tracer = make_tracer(
            model,
            signal,
            correction,
            threads or _env_threads(),
            asr=asr,
            rerank=rerank,
        )
    except OmniTraceError as exc:
        err.print(f"[red]error:[/red] {_one_line(exc)}")
        raise typer.Exit(2) from exc
    if limit is not None:
        numbered = numbered[:limit]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        done = completed_ids(out) if resume else set()
        handle = out.open("a" if resume else "w", encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write {out}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc
    written = failures = 0
    try:
        with handle as f, Progress(console=err) as progress:
            task = progress.add_task("predict", total=len(numbered))
            written, failures = predict_rows(
                tracer,
                numbered,
                f,
                base_dir=data.parent,
                max_new_tokens=max_new_tokens,
                on_row=lambda: progress.advance(task),
                on_problem=err.print,
                where=str(data),
                skip_ids=done,
                batch_size=batch_size,
            )
    except KeyboardInterrupt as exc:
        kept = len(completed_ids(out))
        err.print(f"interrupted: {kept} predictions in {out}; rerun with --resume to continue")
        raise typer.Exit(130) from exc
    resumed = f", {len(done)} kept from the interrupted run" if done else ""
    err.print(f"wrote {written} predictions to {out} ({failures} rows skipped{resumed})")
    if failures:
        raise typer.Exit(1)


def _env_threads() -> int:
    value = os.environ.get("OMNITRACE_THREADS", "0")
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidInputError(f"OMNITRACE_THREADS={value!r}: must be a whole number") from exc


def _check_output_file(path: Path, option: str) -> None:
    """An output file path: not a folder, and its parent (if it exists) a folder."""
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder: give a file path (e.g. {path}/pred.jsonl)")
    if path.parent.exists() and not path.parent.is_dir():
        raise InvalidInputError(f"{option} {path}: {path.parent} is not a folder")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@app.command("score")
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
        print_tables({pred.stem: by_task}, console)
    missing = by_task["all"]["missing_predictions"]
    if missing:
        err.print(f"{missing} dataset rows have no prediction (scored as absent)")
    if problems:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    data: Annotated[Path, typer.Argument(help="Dataset in the shared benchmark format (JSONL)")],
    out: Annotated[Path, typer.Option(help="Output folder (predictions, metrics.json, metrics.md)")],
    method: Annotated[
        list[str] | None,
        typer.Option(help=f"Model-based method (repeatable, or 'all'): {', '.join(METHODS)}"),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(help=f"Baseline to run (repeatable): {', '.join(BASELINES)}, carry_forward:<inner>"),
    ] = None,
    pred: Annotated[
        Path | None,
        typer.Option(
            help="Default-method predictions (omnitrace predict): scored, and their texts attributed"
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Packaged model name or local folder")] = DEFAULT_MODEL,
    limit: Annotated[int | None, typer.Option(help="Only the first N dataset rows")] = None,
    engine: Annotated[str, typer.Option(help="Row engine for the model work: local or ray")] = "local",
    workers: Annotated[int, typer.Option(help="Workers (ray: actors, each loading the model)")] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray)")] = None,
    faithfulness: Annotated[
        bool, typer.Option("--faithfulness", help="Measure log-prob drops when cited sources are removed")
    ] = False,
    max_new_tokens: Annotated[
        int, typer.Option(help="Decoding budget of generated rows")
    ] = DEFAULT_MAX_NEW_TOKENS,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random baseline and random control")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Decode up to N generated rows together per worker (Tracer.generate_batch); "
            "1: one at a time",
        ),
    ] = 1,
) -> None:
    """Attribute the same responses with every method and baseline, score them per task, write a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if out.exists() and not out.is_dir():
        err.print(f"[red]error:[/red] --out {out} is a file: eval writes a folder (predictions, metrics)")
        raise typer.Exit(2)
    if method is None and baseline is None:
        method, baseline = list(DEFAULT_METHODS), list(BASELINES)
    settings = EvalSettings(
        model=model,
        engine=engine,
        workers=workers,
        address=address,
        max_new_tokens=max_new_tokens,
        threads=threads,
        faithfulness=faithfulness,
        batch_size=batch_size,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:

        def progress(description: str, total: int) -> Callable[[], None]:
            task = bar.add_task(description, total=total)
            return lambda: bar.advance(task)

        try:
            report = evaluate(data, out, baseline or [], pred, limit, seed, progress, method or [], settings)
        except (OmniTraceError, ImportError, ConnectionError, OSError) as exc:
            err.print(f"[red]error:[/red] {_one_line(exc)}")
            raise typer.Exit(2) from exc
    for p in report["input_problems"]:
        err.print(f"[yellow]skipped:[/yellow] {p}")
    failed = 0
    for name, m in report["methods"].items():
        for f in m["failures"]:
            failed += 1
            err.print(f"[yellow]{name}: row {f['id']!r} failed:[/yellow] {f['error']}")
    for f in report.get("faithfulness", {}).get("failures", []):
        failed += 1
        err.print(f"[yellow]faithfulness: row {f['id']!r} failed:[/yellow] {f['error']}")
    methods = report["methods"]
    if len(methods) > 3:
        print_summary(
            {n: m["metrics"] for n, m in methods.items()}, {n: m["cost"] for n, m in methods.items()}, console
        )
    else:
        print_tables({name: m["metrics"] for name, m in methods.items()}, console)
    skipped = len(report["rows_without_response_text"])
    err.print(
        f"evaluated {report['rows_evaluated']} of {report['rows_read']} rows"
        f" ({skipped} without a response text, {report['rows_skipped']} dataset rows skipped, "
        f"{failed} failed predictions); wrote {out}/metrics.json, {out}/metrics.md"
    )
    if failed or report["input_problems"]:
        raise typer.Exit(1)


@app.command("report")
def report_command(
    eval_dirs: Annotated[list[Path], typer.Argument(help="Folders written by `omnitrace eval --out`")],
    docs: Annotated[Path, typer.Option(help="Where results.md, gallery.html and images/ go")] = Path("docs"),
    title: Annotated[str, typer.Option(help="Page title")] = DEFAULT_TITLE,
    label: Annotated[
        list[str] | None, typer.Option(help="Section name per eval folder (repeat, in order)")
    ] = None,
    method: Annotated[str, typer.Option(help="Whose answers the gallery shows")] = OURS,
    compare: Annotated[
        str | None, typer.Option(help="A second method whose citations the gallery shows beside")
    ] = None,
    examples: Annotated[int, typer.Option(help="Gallery rows per eval folder")] = 10,
    screenshot: Annotated[bool, typer.Option(help="Render images/gallery.png with headless Chromium")] = True,
    command: Annotated[
        list[str] | None,
        typer.Option(
            help="A command to list under 'Regenerate' (repeat; default: the eval commands "
            "reconstructed from metrics.json, then this report command)"
        ),
    ] = None,
) -> None:
    """Write results.md (tables per task, cost, faithfulness, plots) and an HTML example gallery."""
    this = ["omnitrace", "report", *map(str, eval_dirs), "--docs", str(docs)]
    for name in label or []:
        this += ["--label", name]
    if method != OURS:
        this += ["--method", method]
    if compare:
        this += ["--compare", compare]
    if examples != 10:
        this += ["--examples", str(examples)]
    commands = [*command, shlex.join(this)] if command else []
    try:
        out = build_report(
            eval_dirs,
            docs,
            title,
            commands,
            label,
            method,
            compare,
            examples,
            screenshot,
            report_command=shlex.join(this),
        )
    except (OmniTraceError, ImportError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for note in out.notes:
        err.print(f"[yellow]left out:[/yellow] {note}")
    written = [out.results, *out.images, *(p for p in (out.gallery, out.screenshot) if p)]
    err.print("wrote " + ", ".join(str(p) for p in written))
    if out.notes:
        raise typer.Exit(1)


@app.command("calibrate")
def calibrate_command(
    data: Annotated[Path, typer.Option(help="Prompts (JSONL: id, sources, question[, response])")],
    out: Annotated[Path, typer.Option(help="Where to write the calibration (JSON)")],
    model: Annotated[str, typer.Option(help="Packaged model name or local folder")] = DEFAULT_MODEL,
    k: Annotated[int, typer.Option(help="Random source-ablation masks per prompt", min=2)] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the masks and the held-out split")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Decoding budget when a prompt has no response")] = 48,
    limit: Annotated[int | None, typer.Option(help="Only the first N prompts", min=1)] = None,
    engine: Annotated[str, typer.Option(help="Row engine for collection: local or ray")] = "local",
    workers: Annotated[int, typer.Option(help="Workers (ray: actors, each loading the model)")] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    note: Annotated[str, typer.Option(help="What the prompts are (stored in the calibration)")] = "",
) -> None:
    """Learn this model's head weights and defaults from its own source ablations (no labels).

    Resumable: finished prompts are kept in OUT.parts/ and reused by a rerun.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from omnitrace_core.evaluation.calibrate import CalibrationSettings, calibrate, read_prompts

    try:
        rows = read_prompts(data)[:limit]
        tracer = make_tracer(model, threads=threads, calibrated=False)
    except OmniTraceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings = CalibrationSettings(k=k, seed=seed, max_new_tokens=max_new_tokens)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("calibrate: ablations", total=len(rows))
        try:
            cal, problems = calibrate(
                tracer,
                rows,
                out,
                settings,
                data_note=note or str(data),
                engine=engine,
                workers=workers,
                address=address,
                threads=threads,
                progress=lambda: bar.advance(task),
            )
        except (OmniTraceError, ImportError, ConnectionError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    for p in problems:
        err.print(f"[yellow]skipped:[/yellow] {p}")
    fit = cal.fit
    console.print(
        f"{cal.model}: {fit['prompts']} prompts, {fit['forward_passes']} forward passes, "
        f"{fit['total_seconds']} s; held-out correlation learned {fit['heldout_corr_learned']} vs "
        f"uniform (AttMean) {fit['heldout_corr_uniform']} vs last layer {fit['heldout_corr_last_layer']}"
    )
    if cal.mapping and cal.curation:
        console.print(
            f"defaults: bias correction {cal.mapping.bias_correction}, "
            f"min_relative {cal.curation.min_relative}"
            + (f", grounding weak_min {cal.grounding.weak_min}" if cal.grounding else "")
        )
    err.print(f"wrote {out}")
    if problems:
        raise typer.Exit(1)
