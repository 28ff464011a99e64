"""Greedy tokens and logits: plain sdpa decoding vs traced decoding (fused and exact capture).

For the first rows of each task of the dev set, the packaged model decodes greedily three ways
from the tracer's prompt: plain (no capture session: sdpa), traced with ``capture="fused"``
(decode-step attention computed once, probabilities kept) and traced with ``capture="exact"``
(sdpa output, row recomputed). We report whether the tokens are identical and the largest
absolute difference of the logits over the steps both decodings share.

usage: python benchmarks/capture_identity.py [--rows-per-task 5] [--new 48] [--model smollm2-135m]
       [--dtype float32] [--out benchmarks/results/capture_identity.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omnitrace_core import Tracer
from omnitrace_core.capture import CaptureSession, capturing

ROOT = Path(__file__).resolve().parents[1]
DEV = Path("/work/shared/bench/dev.jsonl")
if not DEV.is_file():
    DEV = ROOT.parent / "shared" / "bench" / "dev.jsonl"


def decode(tracer: Tracer, ids: torch.Tensor, gen: dict, session: CaptureSession | None):
    import contextlib

    ctx = capturing(session) if session is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        out = tracer.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            return_dict_in_generate=True,
            output_logits=True,
            **gen,
        )
    return out.sequences[0, ids.shape[1] :].tolist(), [x[0].float() for x in out.logits]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows-per-task", type=int, default=5)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capture_identity.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tracer = Tracer.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    rows, per_task = [], {}
    for line in DEV.read_text().splitlines():
        row = json.loads(line)
        if per_task.get(row["task"], 0) < args.rows_per_task:
            per_task[row["task"]] = per_task.get(row["task"], 0) + 1
            rows.append(row)
    gen = tracer._generation_kwargs(tracer.config, {"max_new_tokens": args.new})
    gen["pad_token_id"] = tracer.tokenizer.pad_token_id or tracer.tokenizer.eos_token_id
    signal = tracer.signal_for(tracer.config.signal)
    results = []
    for row in rows:
        layout = tracer.layout(row["sources"], row["question"])
        ids = torch.tensor([layout.input_ids])
        plain_toks, plain_logits = decode(tracer, ids, gen, None)
        entry: dict = {"id": row["id"], "task": row["task"], "prompt_tokens": ids.shape[1]}
        for mode in ("fused", "exact"):
            session = CaptureSession(signal, tracer.loaded.num_layers, [ids.shape[1] - 1], mode=mode)
            toks, logits = decode(tracer, ids, gen, session)
            shared = min(len(logits), len(plain_logits))
            diff = max(float((logits[i] - plain_logits[i]).abs().max()) for i in range(shared))
            entry[mode] = {
                "tokens_identical": toks == plain_toks,
                "logits_max_abs_diff": diff,
                "steps": shared,
            }
        results.append(entry)
        print(
            f"{row['id']:>24} {entry['prompt_tokens']:>5} fused same={entry['fused']['tokens_identical']} "
            f"diff={entry['fused']['logits_max_abs_diff']:.2e}  exact same={entry['exact']['tokens_identical']} "
            f"diff={entry['exact']['logits_max_abs_diff']:.2e}",
            flush=True,
        )
    summary = {
        mode: {
            "rows": len(results),
            "rows_tokens_identical": sum(r[mode]["tokens_identical"] for r in results),
            "logits_max_abs_diff": max(r[mode]["logits_max_abs_diff"] for r in results),
        }
        for mode in ("fused", "exact")
    }
    out = {
        "model": args.model,
        "dtype": args.dtype,
        "new_tokens": args.new,
        "summary": summary,
        "rows": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
