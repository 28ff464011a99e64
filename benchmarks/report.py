"""Write docs/results-core.md from the saved benchmark JSON (dev ablations, overhead, batching).

usage: python benchmarks/report.py [--ablation benchmarks/results/dev_ablation.json]
       [--predict benchmarks/results/dev_predict_score.json] [--results benchmarks/results]
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
    """One table per overhead-*.json run: CPU-second medians, ratios, the per-token breakdown."""
    lines = [
        "| prompt tokens | plain CPU s | traced CPU s | time_ratio | memory_ratio | memory vs plain+spaCy "
        "| model step | capture | text | mapping | assembly | other | fused attention (in model step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["lengths"].values():
        t = e.get("timing") or {}
        if "median_cpu_s" not in t:
            continue
        b = t["breakdown_ms_per_token"]
        lines.append("| " + " | ".join([
            str(e["prompt_tokens"]), _f(t["median_cpu_s"]["plain"]), _f(t["median_cpu_s"]["traced"]),
            _f(e["time_ratio"]), _f(e.get("memory_ratio")), _f(e.get("memory_ratio_vs_plain_spacy")),
            *(f"{b[k]:.2f}" for k in ("model_step", "capture", "text", "mapping", "assembly", "other",
                                      "fused_attention (in model_step)")),
        ]) + " |")
    lines.append("")
    peaks = []
    for e in results["lengths"].values():
        mem = {m: v["peak_rss_mb"] for m, v in (e.get("memory") or {}).items() if "peak_rss_mb" in v}
        if mem:
            peaks.append(f"{e['prompt_tokens']} tok: " + " / ".join(f"{m} {v:.0f}" for m, v in mem.items()))
    if peaks:
        lines.append("Peak RSS (MB): " + "; ".join(peaks) + ". Breakdown columns: CPU ms per generated token.")
    return lines


def batch_table(results: dict) -> list[str]:
    lines = ["| batch size | traced rows / CPU s | untraced rows / CPU s | traced / untraced | traced vs traced batch 1 "
             "| rows with citations equal to batch 1 |", "|---|---|---|---|---|---|"]
    for size, e in results["sizes"].items():
        lines.append("| " + " | ".join([
            size, _f(e["traced_rows_per_cpu_s"]), _f(e["untraced_rows_per_cpu_s"]), _f(e["traced_vs_untraced"]),
            _f(e.get("traced_vs_traced_batch_1")), f"{e['rows_with_citations_equal_batch_1']}/{results['rows']}",
        ]) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablation", default=str(ROOT / "benchmarks/results/dev_ablation.json"))
    ap.add_argument("--predict", default=str(ROOT / "benchmarks/results/dev_predict_score.json"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results"), help="overhead-*.json, batch_throughput.json")
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
    for path in sorted(Path(args.results).glob("overhead-*.json")):
        res = json.loads(path.read_text())
        out += [f"## Capture overhead: {res['model']}, {res['new_tokens']} new tokens, capture={res['capture']} "
                f"(`{path.name}`)", "", f"Timing: {res['timing']}. Memory: {res['memory']}.", "",
                *overhead_table(res), ""]
    batch = Path(args.results) / "batch_throughput.json"
    if batch.exists():
        res = json.loads(batch.read_text())
        out += [f"## Batched traced generation (`batch_throughput.json`: {res['model']}, {res['rows']} dev rows, "
                f"at most {res['max_new_tokens']} new tokens)", "", f"Timing: {res['timing']}.", "",
                *batch_table(res), ""]
    Path(args.out).write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
