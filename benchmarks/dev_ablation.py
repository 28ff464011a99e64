"""Dev-set ablations: signals, mapping rule, bias correction, curation, per task.

Each response is attributed teacher-forced once per signal (forced rows for ``teacher_forced``
rows; for generated rows, the text the default model generated, read from a prediction file
made by ``omnitrace predict``; forced rows over generated text equal the decode-time rows, see
``tests/core/test_capture.py``). Every mapping / curation variant then reuses the cached rows,
so the whole grid costs one forward pass per row and signal. Scores use the shared reference
scorer. Also runs a plain word-match baseline on the same responses.

usage: python benchmarks/dev_ablation.py --pred out/dev-pred.jsonl [--out benchmarks/results/dev_ablation.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.signals import get_signal
from omnitrace_core.sources import build_prompt, validate_sources

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"


def load_scorer() -> Any:
    spec = importlib.util.spec_from_file_location("fmsa_score", BENCH / "score.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_match(row: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
    """Baseline: cite the source sharing the most distinctive words with the sentence."""
    stop = {"the", "a", "an", "is", "was", "in", "of", "and", "its", "it", "to", "at", "by", "every", "on"}

    def words(text: str) -> set[str]:
        return {w for w in re.findall(r"\w+", text.lower()) if w not in stop}

    sources = [s for s in row["sources"]]
    out = []
    for sent in pred["sentences"]:
        sw = words(sent["text"])
        overlaps = {s["id"]: len(sw & words(s["text"])) for s in sources}
        best = max(overlaps.values()) if overlaps else 0
        cited = [sid for sid, n in overlaps.items() if best > 0 and n == best]
        out.append(
            {
                **sent,
                "citations": [{"source_id": sid, "score": 1.0} for sid in cited],
                "source_mass": {sid: n / max(1, sum(overlaps.values())) for sid, n in overlaps.items()},
            }
        )
    return {**pred, "sentences": out}


def score_by_task(
    scorer: Any, rows: list[dict[str, Any]], preds: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    result = {"all": scorer.score(rows, preds)}
    for task in sorted({r["task"] for r in rows}):
        result[task] = scorer.score([r for r in rows if r["task"] == task], preds)
    return result


def variants() -> dict[str, TracerConfig]:
    base = TracerConfig()
    m, c = base.mapping, base.curation

    def with_mapping(**kw: Any) -> TracerConfig:
        return base.model_copy(update={"mapping": m.model_copy(update=kw)})

    def with_curation(**kw: Any) -> TracerConfig:
        return base.model_copy(update={"curation": c.model_copy(update=kw)})

    return {
        "default": base,
        "correction=none": with_mapping(bias_correction="none"),
        "correction=prompt": with_mapping(bias_correction="prompt"),
        "correction=running": with_mapping(bias_correction="running"),
        "rule=peak": with_mapping(rule="peak"),
        "rule=peak,correction=none": with_mapping(rule="peak", bias_correction="none"),
        "paper-curation(min_relative=0)": with_curation(min_relative=0.0),
        "curation=off": with_curation(enabled=False),
        "no-pos-weights": with_curation(pos_weights={}, other_pos_weight=1.0),
        "gamma=0": with_curation(gamma=0.0),
        "no-run-coherence(alpha=0)": with_curation(alpha=0.0),
        "p_min=0": with_curation(p_min=0.0),
        "coverage=1.0": with_curation(coverage=1.0),
        "min_relative=0.7": with_curation(min_relative=0.7),
        "top-1": with_curation(max_citations=1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pred", required=True, help="predictions from `omnitrace predict` (generated texts)")
    ap.add_argument("--data", default=str(BENCH / "dev.jsonl"))
    ap.add_argument("--signals", default="attmean,rawatt")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dev_ablation.json"))
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--cache-dir", default=None, help="keep forced rows here between runs")
    ap.add_argument("--score-only", action="store_true",
                    help="only score --pred per task with the reference scorer and write --out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    scorer = load_scorer()
    if args.score_only:
        data = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
        preds = {json.loads(line)["id"]: json.loads(line) for line in Path(args.pred).read_text().splitlines() if line.strip()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(score_by_task(scorer, data, preds), indent=1))
        return
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    generated = {
        json.loads(line)["id"]: json.loads(line) for line in Path(args.pred).read_text().splitlines() if line.strip()
    }
    tracer = Tracer.from_default()
    results: dict[str, Any] = {}
    wanted = set(args.only.split(",")) if args.only else None
    baseline_preds: dict[str, dict[str, Any]] = {}
    for signal_name in args.signals.split(","):
        signal = get_signal(signal_name)
        cached = []
        t0 = time.perf_counter()
        cache_file = Path(args.cache_dir) / f"rows-{signal_name}.pt" if args.cache_dir else None
        saved = torch.load(cache_file, weights_only=False) if cache_file and cache_file.exists() else {}
        for row in rows:
            response = row.get("response") or generated[row["id"]]["text"]
            srcs = validate_sources(
                [{k: s[k] for k in ("id", "text", "title") if k in s} for s in row["sources"]]
            )
            layout = build_prompt(tracer.tokenizer, srcs, row["question"], TracerConfig().system_prompt)
            if row["id"] in saved:
                forced = saved[row["id"]]
            else:
                forced = tracer.forced_rows(layout, response, signal) if response.strip() else None
                saved[row["id"]] = forced
            cached.append((row, srcs, layout, forced))
            if len(cached) % 25 == 0:
                print(f"  {signal_name}: {len(cached)}/{len(rows)} rows", file=sys.stderr, flush=True)
        print(f"{signal_name}: forward passes {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if cache_file:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(saved, cache_file)
        for name, cfg in variants().items():
            if wanted and name not in wanted:
                continue
            cfg = cfg.model_copy(update={"signal": signal_name})
            preds = {}
            for row, srcs, layout, forced in cached:
                if forced is None:
                    preds[row["id"]] = {"id": row["id"], "text": "", "sentences": []}
                    continue
                answer = tracer.assemble_forced(srcs, layout, forced, cfg)
                preds[row["id"]] = answer.to_prediction(row["id"])
                if name == "default" and signal_name == "attmean":
                    baseline_preds[row["id"]] = word_match(row, preds[row["id"]])
            key = f"{signal_name}/{name}"
            results[key] = score_by_task(scorer, rows, preds)
            s = results[key]
            print(
                f"{key:32s} all {s['all']['sentence_f1_micro']:.3f} (P {s['all']['sentence_precision']:.3f} "
                f"R {s['all']['sentence_recall']:.3f}) forced {s['teacher_forced']['sentence_f1_micro']:.3f} "
                f"qa1 {s['qa_single']['sentence_f1_micro']:.3f} qa2 {s['qa_multi']['sentence_f1_micro']:.3f} "
                f"sum {s['summary']['sentence_f1_micro']:.3f} mcq {s['mcq']['sentence_f1_micro']:.3f} "
                f"opt {s['mcq']['option_consistency']}",
                flush=True,
            )
    if baseline_preds:
        results["baseline/word-match"] = score_by_task(scorer, rows, baseline_preds)
        s = results["baseline/word-match"]
        print(
            f"{'baseline/word-match':32s} all {s['all']['sentence_f1_micro']:.3f} forced "
            f"{s['teacher_forced']['sentence_f1_micro']:.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
