"""Rows per CPU second: traced ``Tracer.generate_batch`` vs untraced batched ``model.generate``.

The first ``--rows`` rows of the dev set (tasks qa_single, qa_multi, summary, mcq in turn) are
answered at batch sizes 1, 4, 8 (greedy, ``--new`` new tokens at most, the tracer's default
generation settings), traced and untraced, in one process with one torch thread. Untraced is
``model.generate`` on the same left-padded prompts with transformers' own sdpa. Throughput is
rows per **process CPU second** (the machine is a shared 2-core box under load, where
wall-clock rates swing; CPU seconds of one thread are steadier). Traced and untraced runs are
interleaved. We also check that every traced row's text and citations equal batch size 1.

usage: python benchmarks/batch_throughput.py [--rows 16] [--new 48] [--sizes 1,4,8] [--repeats 1]
       [--out benchmarks/results/batch_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from omnitrace_core import Tracer
from omnitrace_core.capture import install

ROOT = Path(__file__).resolve().parents[1]
DEV = Path("/work/shared/bench/dev.jsonl")
if not DEV.is_file():
    DEV = ROOT.parent / "shared" / "bench" / "dev.jsonl"


def _dev_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DEV.read_text().splitlines()]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        if r["task"] in ("qa_single", "qa_multi", "summary", "mcq"):
            by_task.setdefault(r["task"], []).append(r)
    out: list[dict] = []
    k = 0
    while len(out) < n:
        for task in ("qa_single", "qa_multi", "summary", "mcq"):
            if len(out) < n:
                out.append(by_task[task][k])
        k += 1
    return out


def _cited(answer) -> list:
    return [
        answer.text,
        [(s.text, [(c.source_id, c.unit_id) for c in s.citations]) for s in answer.sentences],
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tracer = Tracer.from_pretrained(args.model)
    model, tok = tracer.model, tracer.tokenizer
    rows = _dev_rows(args.rows)
    reqs = [(r["sources"], r["question"]) for r in rows]
    layouts = [tracer.layout(s, q) for s, q in reqs]
    gen = tracer._generation_kwargs(tracer.config, {"max_new_tokens": args.new})
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def untraced(size: int) -> int:
        model.set_attn_implementation("sdpa")
        n_tokens = 0
        try:
            for start in range(0, len(layouts), size):
                chunk = layouts[start : start + size]
                width = max(len(x.input_ids) for x in chunk)
                ids = torch.tensor([[pad] * (width - len(x.input_ids)) + x.input_ids for x in chunk])
                mask = torch.tensor(
                    [[0] * (width - len(x.input_ids)) + [1] * len(x.input_ids) for x in chunk]
                )
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **gen)
                n_tokens += int(out.shape[0] * (out.shape[1] - width))
        finally:
            install(model)
        return n_tokens

    def traced(size: int) -> list:
        if size == 1:
            return [tracer.generate(s, q, max_new_tokens=args.new) for s, q in reqs]
        return tracer.generate_batch(reqs, batch_size=size, max_new_tokens=args.new)

    traced(1)[:1]  # warm-up (spaCy, allocations)
    sizes = [int(x) for x in args.sizes.split(",")]
    results: dict = {
        "model": args.model,
        "rows": len(rows),
        "max_new_tokens": args.new,
        "timing": "process CPU seconds, torch threads = 1, traced / untraced interleaved; shared 2-core "
        "machine under load (load average 4-8)",
        "sizes": {},
    }
    reference = None
    for size in sizes:
        cpu = {"traced": [], "untraced": []}
        answers = None
        for _ in range(args.repeats):
            t0 = time.process_time()
            untraced(size)
            cpu["untraced"].append(time.process_time() - t0)
            t0 = time.process_time()
            answers = traced(size)
            cpu["traced"].append(time.process_time() - t0)
        assert answers is not None
        cited = [_cited(a) for a in answers]
        if reference is None:
            reference = cited
        same = sum(a == b for a, b in zip(cited, reference, strict=True))
        med = {k: statistics.median(v) for k, v in cpu.items()}
        entry = {
            "cpu_s": cpu,
            "traced_rows_per_cpu_s": len(rows) / med["traced"],
            "untraced_rows_per_cpu_s": len(rows) / med["untraced"],
            "traced_vs_untraced": med["untraced"] / med["traced"],
            "rows_with_citations_equal_batch_1": same,
        }
        results["sizes"][str(size)] = entry
        print(
            f"batch {size:>2}: traced {entry['traced_rows_per_cpu_s']:.3f} rows/CPU-s, untraced "
            f"{entry['untraced_rows_per_cpu_s']:.3f} rows/CPU-s, traced/untraced {entry['traced_vs_untraced']:.3f}, "
            f"citations equal to batch 1: {same}/{len(rows)}",
            flush=True,
        )
    b1 = results["sizes"].get("1")
    for entry in results["sizes"].values():
        if b1:
            entry["traced_vs_traced_batch_1"] = entry["traced_rows_per_cpu_s"] / b1["traced_rows_per_cpu_s"]
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
