"""Capture overhead: plain sdpa generation vs traced generation vs the naive route.

The naive route is what the paper's reference code does: eager attention with
``output_attentions=True`` (every layer's full attention matrix is materialised and kept).

``plain_spacy`` is plain decoding in a process that also loaded the spaCy sentence splitter the
tracer uses: traced / plain_spacy isolates what attention capture itself costs.

Each measurement runs in its own process so peak memory (max RSS) is its own. Per prompt length
(512 / 1k / 2k / 4k tokens) and mode, the model decodes exactly 64 new tokens (greedy,
``min_new_tokens`` = ``max_new_tokens``) three times; we report the median seconds and the
process peak RSS, and the ratios traced / plain and naive / plain.

usage: python benchmarks/overhead.py [--lengths 512,1024,2048,4096] [--new 64] [--repeats 3]
       [--naive-max 2048] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILLER = (
    "The {name} company was founded in {year} in the town of {town}. It makes {thing} and employs "
    "{n} people. Its chief executive is {ceo}, who joined in {joined}. "
)


def _sources(tokenizer, length: int):
    """Sources whose prompt is about ``length`` tokens (text is varied so it is not trivially repetitive)."""
    from omnitrace_core import TextSource, TracerConfig
    from omnitrace_core.sources import build_prompt

    towns = ["Cedar Falls", "Harlow Bay", "Glenmoor", "Port Ashby", "Riverstead", "Mistral Point"]
    things = ["water filters", "drone motors", "solar batteries", "hearing aids", "ceramic tiles"]
    sources, k = [], 0
    while True:
        text = "".join(
            FILLER.format(
                name=f"Vel{k}{j}",
                year=1900 + (k * 7 + j) % 120,
                town=towns[(k + j) % 6],
                thing=things[(k * 3 + j) % 5],
                n=100 + 37 * k + j,
                ceo=f"Ada {k}{j}",
                joined=1950 + (k + j) % 70,
            )
            for j in range(3)
        )
        sources.append(TextSource(id=f"doc{k + 1}", title=f"Company {k + 1}", text=text))
        layout = build_prompt(
            tokenizer, sources, "Which company employs the most people?", TracerConfig().system_prompt
        )
        if len(layout.input_ids) >= length:
            return sources, layout
        k += 1


def worker(mode: str, length: int, new: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from omnitrace_core import Tracer, TracerConfig
    from omnitrace_core.models import load_model
    from omnitrace_core.sources import build_prompt

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    sources, _ = _sources(tok, length)
    layout = build_prompt(
        tok, sources, "Which company employs the most people?", TracerConfig().system_prompt
    )
    ids = torch.tensor([layout.input_ids])
    gen = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "no_repeat_ngram_size": 3,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tok.eos_token_id,
    }
    tracer = None
    if mode == "plain_spacy":  # plain decoding in a process that also holds the sentence splitter
        from omnitrace_core.chunking import Chunker

        Chunker().sentences("A warm-up sentence. And another one.")
    if mode == "traced":
        tracer = Tracer(model, tok, model_name="smollm2-135m")
    elif mode == "naive":
        model.set_attn_implementation("eager")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if tracer is not None:
            answer = tracer.generate(
                sources,
                "Which company employs the most people?",
                **{k: v for k, v in gen.items() if k not in ("pad_token_id",)},
            )
            n_new = answer.generated_tokens
        else:
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    output_attentions=(mode == "naive"),
                    return_dict_in_generate=(mode == "naive"),
                    **gen,
                )
            seq = out.sequences if mode == "naive" else out
            n_new = seq.shape[1] - ids.shape[1]
            del out
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "prompt_tokens": len(layout.input_ids),
        "new_tokens": int(n_new),
        "seconds": times,
        "median_s": statistics.median(times),
        "peak_rss_mb": peak,
        "rss_after_load_mb": base_rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--naive-max",
        type=int,
        default=2048,
        help="skip the naive route above this length (eager attentions of 30 layers at 4k "
        "tokens need ~18 GB)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "LENGTH"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.new, args.repeats)))
        return
    results: dict = {"new_tokens": args.new, "repeats": args.repeats, "lengths": {}}
    print(
        f"{'prompt':>7} {'plain s':>8} {'traced s':>9} {'naive s':>8} {'time x':>7} {'mem x':>6} "
        f"{'naive time x':>12} {'naive mem x':>11}",
        flush=True,
    )
    for length in [int(x) for x in args.lengths.split(",")]:
        row: dict = {}
        for mode in ("plain", "plain_spacy", "traced", "naive"):
            if mode == "naive" and length > args.naive_max:
                row[mode] = None
                continue
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    mode,
                    str(length),
                    "--new",
                    str(args.new),
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                row[mode] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        plain, traced, naive = row["plain"], row["traced"], row.get("naive")
        entry = {
            **row,
            "prompt_tokens": plain["prompt_tokens"],
            "time_ratio": traced["median_s"] / plain["median_s"],
            "memory_ratio": traced["peak_rss_mb"] / plain["peak_rss_mb"],
        }
        if naive and "median_s" in naive:
            entry["naive_time_ratio"] = naive["median_s"] / plain["median_s"]
            entry["naive_memory_ratio"] = naive["peak_rss_mb"] / plain["peak_rss_mb"]
        results["lengths"][str(length)] = entry
        fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else "-"  # noqa: E731
        print(
            f"{plain['prompt_tokens']:>7} {plain['median_s']:>8.2f} {traced['median_s']:>9.2f} "
            f"{fmt(naive['median_s']) if naive and 'median_s' in naive else '-':>8} "
            f"{entry['time_ratio']:>7.3f} {entry['memory_ratio']:>6.3f} "
            f"{fmt(entry.get('naive_time_ratio')):>12} {fmt(entry.get('naive_memory_ratio')):>11}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
