"""Packaged models side by side: load time, plain vs traced greedy tokens/s, peak RSS.

Per model and mode (``plain``: ``model.generate``; ``traced``: ``Tracer.generate``) one process
loads the model from its safetensors cache, then decodes exactly ``--new`` tokens (greedy,
``min_new_tokens`` = ``max_new_tokens``) after a ~``--length``-token prompt (the filler sources
of ``overhead.py``) ``--repeats`` times. It reports the median wall seconds, tokens/s
(new tokens / whole call, prefill included), the process CPU seconds of each call (on a shared
machine these say more than the wall clock, with one thread), plain decoding's time to first
token, the load time and the process peak RSS. ``--convert`` first times one more load: point
``$OMNITRACE_CACHE_DIR`` at an empty folder to time the cold one (GGUF assembly and conversion).

usage: python benchmarks/packaged_models.py [--models smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b]
       [--threads 1] [--length 500] [--new 64] [--repeats 2] [--dtype float32] [--convert]
       [--out benchmarks/results/packaged_models.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Which company employs the most people?"


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker(name: str, mode: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from omnitrace_core import Tracer
    from omnitrace_core.models import load_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overhead import _sources

    kwargs = {"dtype": getattr(torch, args.dtype)} if args.dtype != "float32" else {}
    t0 = time.perf_counter()
    loaded = load_model(name, **kwargs)
    res: dict = {"model": name, "mode": mode, "dtype": args.dtype, "threads": args.threads,
                 "load_s": round(time.perf_counter() - t0, 2), "peak_rss_after_load_mb": _peak_mb()}
    if mode == "convert":
        return res
    model, tok = loaded.model, loaded.tokenizer
    sources, layout = _sources(tok, args.length)
    ids = torch.tensor([layout.input_ids])
    gen = {"max_new_tokens": args.new, "min_new_tokens": args.new, "do_sample": False,
           "no_repeat_ngram_size": 3, "temperature": None, "top_p": None, "top_k": None}
    tracer = Tracer(model, tok, model_name=name) if mode == "traced" else None
    seconds, cpu, n_new = [], [], 0
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), _cpu_s()
        if tracer is not None:
            n_new = tracer.generate(sources, QUESTION, **gen).generated_tokens
        else:
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     pad_token_id=tok.eos_token_id, **gen)
            n_new = out.shape[1] - ids.shape[1]
        seconds.append(round(time.perf_counter() - t0, 2))
        cpu.append(round(_cpu_s() - c0, 2))
    res.update({"prompt_tokens": len(layout.input_ids), "new_tokens": int(n_new), "seconds": seconds,
                "cpu_s": cpu, "tok_per_s": round(n_new / statistics.median(seconds), 2),
                "tok_per_cpu_s": round(n_new / statistics.median(cpu), 2)})
    if tracer is None:
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=tok.eos_token_id,
                           **{**gen, "max_new_tokens": 1, "min_new_tokens": 1})
        res["first_token_s"] = round(time.perf_counter() - t0, 2)
    res["peak_rss_mb"] = _peak_mb()
    res["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--length", type=int, default=500)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--convert", action="store_true", help="time a cold load in a fresh cache first")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packaged_models.json"))
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args)))
        return
    modes = (["convert"] if args.convert else []) + ["plain", "traced"]
    rows = []
    for name in args.models.split(","):
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", name, mode]
            for flag in ("threads", "length", "new", "repeats", "dtype"):
                cmd += [f"--{flag}", str(getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"model": name, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
