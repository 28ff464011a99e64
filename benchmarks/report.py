"""Write docs/results-core.md from the saved benchmark JSON (dev ablations + overhead).

usage: python benchmarks/report.py [--ablation benchmarks/results/dev_ablation.json]
       [--predict benchmarks/results/dev_predict_score.json] [--overhead benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["teacher_forced", "qa_single", "qa_multi", "summary", "mcq"]


def _f(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def ablation_table(results: dict) -> list[str]:
    head = "| method | F1 micro (all) | P | R | " + " | ".join(TASKS) + " | answer F1 | MCQ option consistency |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        cells = [name, _f(r["all"]["sentence_f1_micro"]), _f(r["all"]["sentence_precision"]),
                 _f(r["all"]["sentence_recall"])]
        cells += [_f(r[t]["sentence_f1_micro"]) for t in TASKS]
        cells += [_f(r["all"]["answer_f1"]), _f(r["mcq"]["option_consistency"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def overhead_table(results: dict) -> list[str]:
    lines = ["| prompt tokens | plain s | traced s | naive s | time_ratio | memory_ratio | memory vs plain+spaCy "
             "| naive time | naive memory |", "|---|---|---|---|---|---|---|---|---|"]
    for _, e in results["lengths"].items():
        naive = e.get("naive") or {}
        lines.append("| " + " | ".join([
            str(e["prompt_tokens"]), _f(e["plain"]["median_s"]), _f(e["traced"]["median_s"]),
            _f(naive.get("median_s")), _f(e["time_ratio"]), _f(e["memory_ratio"]),
            _f(e.get("capture_memory_ratio")),
            _f(e.get("naive_time_ratio")), _f(e.get("naive_memory_ratio"))]) + " |")
    lines.append("")
    lines.append("Peak RSS (MB): " + ", ".join(
        f"{e['prompt_tokens']} tok: plain {e['plain']['peak_rss_mb']:.0f} / traced {e['traced']['peak_rss_mb']:.0f}"
        + (f" / naive {e['naive']['peak_rss_mb']:.0f}" if e.get("naive") and "peak_rss_mb" in e["naive"] else "")
        for e in results["lengths"].values()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablation", default=str(ROOT / "benchmarks/results/dev_ablation.json"))
    ap.add_argument("--predict", default=str(ROOT / "benchmarks/results/dev_predict_score.json"))
    ap.add_argument("--overhead", default=str(ROOT / "benchmarks/results/overhead.json"))
    ap.add_argument("--out", default=str(ROOT / "docs/results-core.md"))
    ap.add_argument("--intro", default=str(ROOT / "benchmarks/results-intro.md"))
    args = ap.parse_args()
    out = [Path(args.intro).read_text().rstrip(), ""]
    if Path(args.predict).exists():
        pred = json.loads(Path(args.predict).read_text())
        out += ["## `omnitrace predict` on the dev set (default config, decode-time attribution)", "",
                *ablation_table({"attmean (default)": pred}), ""]
    if Path(args.ablation).exists():
        out += ["## Ablations (same responses, teacher-forced rows reused across variants)", "",
                *ablation_table(json.loads(Path(args.ablation).read_text())), ""]
    if Path(args.overhead).exists():
        out += ["## Capture overhead (`benchmarks/overhead.py`, 64 new tokens, median of 3)", "",
                *overhead_table(json.loads(Path(args.overhead).read_text())), ""]
    Path(args.out).write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
