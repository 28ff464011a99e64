"""Faithfulness probe (issue #8): self-citation, ContextCite and OmniTrace on the same forced responses.

On the first N ``teacher_forced`` dev rows (default 20), every method attributes the row's given
``response`` with the packaged SmolLM2-135M and the same prompt layout:

- ``omnitrace``: ``Tracer.from_default().attribute(...)`` (one forward pass),
- ``self_cite``: the model's own ``[docN]`` label probability after each sentence (teacher-forced),
- ``contextcite-64`` / ``contextcite-8``: ContextCite with one part per source, default and 8
  ablations,
- ``random``: the seeded random baseline (reference for F1).

Reported per method: sentence F1 (``omnitrace_core.evaluation.metrics.score``, the reference scorer's
definition), forward passes per row, seconds per sentence, and the mean log-probability drop of
each gold sentence when the method's top-1 cited source is removed from the prompt (k=1;
``omnitrace_core.evaluation.faithfulness``), next to removing one random source and the gold source.
A sentence a method leaves uncited removes nothing (drop 0); the count is reported. Generate-mode
self-citation (the model asked to write ``[docN]`` markers) is run on the same rows and reported
as its marker rate and its sentence F1 against key-derived gold (the scorer's rule for generated
rows).

Seconds are wall-clock on a shared 2-core CPU (torch threads 1 by default); the load average is
recorded because other jobs inflate them. Per-row results are appended to ``--work`` so an
interrupted run resumes.

usage: nice -n 10 python benchmarks/faithfulness_probe.py [--rows 20] [--out benchmarks/results/faithfulness_probe.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from omnitrace_core import Tracer
from omnitrace_core.evaluation.baselines import make_baseline
from omnitrace_core.evaluation.contextcite_peer import contextcite_prediction, default_num_ablations
from omnitrace_core.evaluation.faithfulness import logp_drops_many, random_removals
from omnitrace_core.evaluation.metrics import score
from omnitrace_core.evaluation.selfcite import self_cite_generate, self_cite_prediction

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("OMNITRACE_BENCH_DIR", ROOT.parent / "shared" / "bench"))

METHODS = ("omnitrace", "self_cite", "contextcite-64", "contextcite-8", "random")
DROP_PLANS = ("omnitrace", "self_cite", "contextcite-64", "contextcite-8", "random-1", "gold-1")


def _inside(pred: dict[str, Any], gold: dict[str, Any]) -> bool:
    """The scorer's rule: a predicted sentence belongs to the gold sentence holding half of it."""
    shared = min(pred["end"], gold["end"]) - max(pred["start"], gold["start"])
    return shared > 0 and shared >= 0.5 * max(1, pred["end"] - pred["start"])


def top1(prediction: dict[str, Any], gold_sentence: dict[str, Any]) -> list[str]:
    """The best-scored citation among the predicted sentences inside a gold sentence ([] if none)."""
    cited = [c for s in prediction["sentences"] if _inside(s, gold_sentence) for c in s["citations"]]
    if not cited:
        return []
    return [max(cited, key=lambda c: c["score"])["source_id"]]


def run_row(tracer: Tracer, row: dict[str, Any], cc_default: int, gen_tokens: int) -> dict[str, Any]:
    text = row["response"]
    preds: dict[str, dict[str, Any]] = {}
    cost: dict[str, dict[str, float]] = {}

    t0 = time.perf_counter()
    preds["omnitrace"] = tracer.attribute(row["sources"], row["question"], text).to_prediction(row["id"])
    cost["omnitrace"] = {"passes": 1, "seconds": time.perf_counter() - t0}

    pred, passes, seconds = self_cite_prediction(tracer, row, text)
    preds["self_cite"], cost["self_cite"] = pred, {"passes": passes, "seconds": seconds}

    for name, n in (("contextcite-64", cc_default), ("contextcite-8", 8)):
        pred, passes, seconds = contextcite_prediction(tracer, row, text, n)
        preds[name], cost[name] = pred, {"passes": passes, "seconds": seconds}

    t0 = time.perf_counter()
    preds["random"] = make_baseline("random", chunker=tracer.chunker).predict(row, text)
    cost["random"] = {"passes": 0, "seconds": time.perf_counter() - t0}

    gold = row["response_sentences"]
    spans = [(g["start"], g["end"]) for g in gold]
    plans = {name: [top1(preds[name], g) for g in gold] for name in DROP_PLANS[:4]}
    plans["random-1"] = random_removals([s["id"] for s in row["sources"]], 1, len(gold), seed=row["id"])
    plans["gold-1"] = [g["gold_sources"][:1] for g in gold]
    drops, drop_passes = logp_drops_many(tracer, row, text, spans, plans)

    gen, gen_passes, gen_seconds = self_cite_generate(tracer, row, max_new_tokens=gen_tokens)
    return {
        "id": row["id"],
        "predictions": preds,
        "cost": cost,
        "sentences": {name: len(p["sentences"]) for name, p in preds.items()},
        "drops": drops,
        "uncited": {name: sum(1 for r in plans[name] if not r) for name in plans},
        "drop_passes": drop_passes,
        "generate": {"prediction": gen, "passes": gen_passes, "seconds": gen_seconds},
    }


def summarise(
    rows: list[dict[str, Any]], results: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    by_id = {r["id"]: r for r in results}
    data = [row for row in rows if row["id"] in by_id]
    methods: dict[str, Any] = {}
    for name in METHODS:
        metrics = score(data, {rid: res["predictions"][name] for rid, res in by_id.items()})
        n_sent = sum(res["sentences"][name] for res in results)
        methods[name] = {
            "sentence_f1_micro": metrics["sentence_f1_micro"],
            "sentence_f1_macro": metrics["sentence_f1_macro"],
            "sentence_precision": metrics["sentence_precision"],
            "sentence_recall": metrics["sentence_recall"],
            "passes_per_row": statistics.mean(res["cost"][name]["passes"] for res in results),
            "seconds_per_sentence": sum(res["cost"][name]["seconds"] for res in results) / max(1, n_sent),
        }
    drops: dict[str, Any] = {}
    for plan in DROP_PLANS:
        values = [d for res in results for d in res["drops"][plan]]
        drops[plan] = {
            "mean_logp_drop_k1": statistics.mean(values),
            "median": statistics.median(values),
            "sentences": len(values),
            "uncited": sum(res["uncited"][plan] for res in results),
        }
    generated_rows = [
        {k: v for k, v in row.items() if k not in ("response", "response_sentences")} for row in data
    ]
    gen_preds = {res["id"]: res["generate"]["prediction"] for res in results}
    gen_metrics = score(generated_rows, gen_preds)
    gen_sentences = [s for p in gen_preds.values() for s in p["sentences"]]
    n_gen = max(1, len(gen_sentences))
    generate = {
        "sentences": len(gen_sentences),
        "marker_rate": sum(1 for s in gen_sentences if s["citations"]) / n_gen,
        "rows_with_a_marker": sum(
            1 for p in gen_preds.values() if any(s["citations"] for s in p["sentences"])
        ),
        "key_gold_sentence_f1_micro": gen_metrics["sentence_f1_micro"],
        "key_labelled_sentences": gen_metrics["labelled_sentences"],
        "passes_per_row": statistics.mean(res["generate"]["passes"] for res in results),
        "seconds_per_sentence": sum(res["generate"]["seconds"] for res in results) / n_gen,
    }
    return {"meta": meta, "methods": methods, "logp_drop_k1": drops, "self_cite_generate": generate}


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\n{'method':16} {'F1 micro':>9} {'F1 macro':>9} {'passes/row':>11} {'s/sentence':>11} {'drop k=1':>9}"
    )
    for name, m in summary["methods"].items():
        drop = summary["logp_drop_k1"].get(name, {}).get("mean_logp_drop_k1")
        drop_s = f"{drop:9.2f}" if drop is not None else f"{'':9}"
        print(
            f"{name:16} {m['sentence_f1_micro']:9.3f} {m['sentence_f1_macro']:9.3f} "
            f"{m['passes_per_row']:11.1f} {m['seconds_per_sentence']:11.2f} {drop_s}"
        )
    for plan in ("random-1", "gold-1"):
        print(
            f"{plan:16} {'':9} {'':9} {'':11} {'':11} {summary['logp_drop_k1'][plan]['mean_logp_drop_k1']:9.2f}"
        )
    print("self_cite_generate:", json.dumps(summary["self_cite_generate"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=BENCH / "dev.jsonl")
    parser.add_argument("--rows", type=int, default=20, help="first N teacher_forced rows")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "faithfulness_probe.json"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/faithfulness_probe_rows.jsonl"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--gen-tokens", type=int, default=96, help="max new tokens for generate-mode self-cite"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(0)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("task") == "teacher_forced"][: args.rows]
    done: dict[str, dict[str, Any]] = {}
    if args.work.exists():
        for line in args.work.read_text().splitlines():
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                continue  # a truncated last line from an interrupted run
            done[res["id"]] = res
    tracer = Tracer.from_default()
    cc_default = default_num_ablations()
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    with args.work.open("a") as fh:
        for k, row in enumerate(rows):
            if row["id"] in done:
                continue
            t0 = time.perf_counter()
            res = run_row(tracer, row, cc_default, args.gen_tokens)
            done[row["id"]] = res
            fh.write(json.dumps(res) + "\n")
            fh.flush()
            print(
                f"[{k + 1}/{len(rows)}] {row['id']} {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    meta = {
        "data": str(args.data),
        "rows": len(rows),
        "model": tracer.loaded.name,
        "torch_threads": args.threads,
        "contextcite_default_ablations": cc_default,
        "generate_max_new_tokens": args.gen_tokens,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_seconds_this_run": time.perf_counter() - t_start,
        "command": "nice -n 10 python " + " ".join(sys.argv),
    }
    summary = summarise(rows, [done[r["id"]] for r in rows], meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
