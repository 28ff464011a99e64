"""Write docs/results.md, its plots, docs/gallery.html and docs/images/gallery.png from the eval folders.

usage: python benchmarks/make_results.py [--eval benchmarks/results/eval-dev ...] [--docs docs]
       [--compare lexical] [--examples 10] [--no-screenshot] [--command "..." ...]

By default it reports benchmarks/results/eval-dev and, when present, benchmarks/results/eval-hard
(both written by `omnitrace eval`). The page lists the commands that regenerate it: the
`omnitrace eval` commands reconstructed from each folder's metrics.json (pass the real ones with
--command if the runs used --limit or --seed), then this script.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omnitrace_core.evaluation.report import build_report
from omnitrace_core.evaluation.report.page import eval_command
from omnitrace_core.evaluation.report.tables import load_eval

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVALS = [Path("benchmarks/results/eval-dev"), Path("benchmarks/results/eval-hard")]
INTRO = (
    "Every method attributes the same response texts (a forced row's `response`; for a generated "
    "row the text the model generated), so the rows differ only in which sources each method "
    "cites. `omnitrace` is the attention-based tracer (the packaged SmolLM2-135M-Instruct, CPU); "
    "`random`, `lexical`, `embedding` and `carry_forward` are the model-free baselines of "
    "[evaluation.md](evaluation.md), whose thresholds were picked on the dev set. The tables below "
    "predate the learned heads and the reading-row mapping; per packaged model and with the current "
    "defaults see [results-models.md](results-models.md)."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, action="append", help="an `omnitrace eval --out` folder (repeatable)")
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--compare", default="lexical", help="second method shown in the gallery ('' for none)")
    ap.add_argument("--examples", type=int, default=10, help="gallery rows per eval folder")
    ap.add_argument("--no-screenshot", action="store_true")
    ap.add_argument("--command", action="append", default=[], help="a command to list under 'Regenerate'")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # paths in metrics.json and on the page are relative to the repository
    evals = args.eval or [d for d in DEFAULT_EVALS if d == DEFAULT_EVALS[0] or d.exists()]
    missing = [d for d in evals if not (d / "metrics.json").exists()]
    if missing:
        print(f"error: no metrics.json in {', '.join(map(str, missing))}; run `omnitrace eval DATA --out DIR` "
              "first (see docs/evaluation.md)", file=sys.stderr)
        return 2
    this = ".venv/bin/python benchmarks/make_results.py" + "".join(f" --eval {d}" for d in args.eval or [])
    commands = args.command or [f".venv/bin/{eval_command(load_eval(d))}" for d in evals]
    out = build_report(evals, args.docs, commands=[*commands, this], compare=args.compare or None,
                       examples=args.examples, take_screenshot=not args.no_screenshot, intro=INTRO)
    for note in out.notes:
        print(f"left out: {note}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in [out.results, *out.images, out.gallery, out.screenshot] if p))
    return 1 if out.notes else 0


if __name__ == "__main__":
    sys.exit(main())
