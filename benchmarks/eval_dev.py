"""Rerun the full dev evaluation: every default method and baseline, then faithfulness.

Runs ``omnitrace eval`` (in-process, one model load) on the shared dev set into
``benchmarks/results/eval-dev/`` and, when it exists, on ``benchmarks/data/hard_dev.jsonl``
into ``benchmarks/results/eval-hard/``, in resumable stages (rerunning the same command keeps
every finished row):

1. the default methods except ``contextcite`` (64 ablated passes per row), and every baseline;
2. ``--faithfulness`` over every method's predictions.

Two opt-in runs on a sample (the first N rows of each task) go into their own folders, seeded
with the full run's predictions so that only the new method is computed and every method is
scored on the same rows (``-1``: every row, added to the main folder):

``--contextcite N``  ContextCite with its default 64 ablations, into ``<out>-contextcite/``;
``--attgrads N``     ``omnitrace-attgrads`` (a backward pass per token), into ``<out>-attgrads/``.

usage: nice -n 10 python benchmarks/eval_dev.py [--set dev|hard|both] [--model NAME] [--methods A,B]
       [--baselines A,B] [--engine local|ray]
       [--workers N] [--threads N] [--no-faithfulness] [--contextcite N] [--attgrads N] [--per-task N]
       [--results DIR]   (a long run can write outside the checkout, then be copied in)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omnitrace_core.evaluation.baselines import BASELINES
from omnitrace_core.evaluation.methods import DEFAULT_METHODS
from omnitrace_core.evaluation.runner import EvalSettings, evaluate
from omnitrace_core.models import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETS = {
    "dev": (ROOT.parent / "shared" / "bench" / "dev.jsonl", "eval-dev"),
    "hard": (ROOT / "benchmarks" / "data" / "hard_dev.jsonl", "eval-hard"),
}


def progress(description: str, total: int) -> Callable[[], None]:
    """Print a line every 10 rows (a log file, not a terminal, is the usual reader)."""
    state = {"done": 0, "t0": time.perf_counter()}
    print(f"{description}: {total} rows", file=sys.stderr, flush=True)

    def advance() -> None:
        state["done"] += 1
        if state["done"] % 10 == 0 or state["done"] == total:
            rate = (time.perf_counter() - state["t0"]) / state["done"]
            print(f"  {description}: {state['done']}/{total} ({rate:.1f} s/row)", file=sys.stderr, flush=True)

    return advance


def sample(data: Path, per_task: int, out: Path) -> Path:
    """The first ``per_task`` rows of each task (all rows when negative), as a dataset file."""
    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["task"]] = seen.get(row["task"], 0) + 1
        if per_task < 0 or seen[row["task"]] <= per_task:
            kept.append(row)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("all-rows.jsonl" if per_task < 0 else f"sample-{per_task}-per-task.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return path


def seed_from(full: Path, target: Path) -> None:
    """Copy the full run's prediction and faithfulness files the target lacks (resumed there)."""
    target.mkdir(parents=True, exist_ok=True)
    for src in [*full.glob("predictions-*.jsonl"), full / "faithfulness.jsonl"]:
        dst = target / src.name
        if src.exists() and not dst.exists():
            shutil.copyfile(src, dst)


def run(data: Path, out: Path, args: argparse.Namespace) -> None:
    settings = EvalSettings(
        model=args.model, engine=args.engine, workers=args.workers, address=args.address, threads=args.threads
    )
    cheap = [m for m in DEFAULT_METHODS if m != "contextcite"]
    if args.methods:
        cheap = [m for m in args.methods.split(",") if m]
    stages = [("methods + baselines", data, out, cheap, False)]
    if not args.no_faithfulness:
        stages.append(("faithfulness", data, out, cheap, True))
    for flag, method in (("contextcite", "contextcite"), ("attgrads", "omnitrace-attgrads")):
        per_task = getattr(args, flag)
        if per_task < 0:  # every row: straight into the main folder
            stages.append((flag, data, out, [*cheap, method], not args.no_faithfulness))
            cheap = [*cheap, method]
        elif per_task:
            target = out.with_name(f"{out.name}-{flag}")
            seed_from(out, target)
            subset = sample(data, per_task, target)
            stages.append((flag, subset, target, [*cheap, method], not args.no_faithfulness))
    for name, dataset, target, methods, faithful in stages:
        t0 = time.perf_counter()
        print(f"== {dataset.name} -> {target}: {name}", file=sys.stderr, flush=True)
        stage = dataclasses.replace(settings, faithfulness=faithful)
        baselines = [b for b in args.baselines.split(",") if b] if args.baselines is not None else list(BASELINES)
        report = evaluate(dataset, target, baselines, None, None, 0, progress, methods, stage)
        failed = sum(len(m["failures"]) for m in report["methods"].values())
        print(f"   {name}: {time.perf_counter() - t0:.0f} s, {failed} failed predictions", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("dev", "hard", "both"), default="both")
    ap.add_argument("--engine", default="local")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--address", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="packaged model or folder (its calibration is used)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: the default methods)")
    ap.add_argument("--baselines", default=None, help="comma-separated baselines (default: all)")
    ap.add_argument("--no-faithfulness", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="parent folder of eval-dev/ and eval-hard/")
    ap.add_argument(
        "--contextcite", type=int, default=0, metavar="N", help="ContextCite-64 on N rows per task"
    )
    ap.add_argument("--attgrads", type=int, default=0, metavar="N", help="AttGrads on N rows per task")
    ap.add_argument(
        "--per-task",
        type=int,
        default=0,
        metavar="N",
        help="only the first N rows of each task (a slow model's sample), into <folder>-sample<N>/",
    )
    args = ap.parse_args()
    for key in ("dev", "hard") if args.set == "both" else (args.set,):
        data, name = SETS[key]
        out = Path(args.results) / (name if args.model == DEFAULT_MODEL else f"{name}-{args.model}")
        if not data.exists():
            print(f"{data} not found: {key} skipped", file=sys.stderr)
            continue
        if args.per_task > 0:
            out = out.with_name(f"{out.name}-sample{args.per_task}")
            data = sample(data, args.per_task, out)
        run(data, out, args)


if __name__ == "__main__":
    main()
