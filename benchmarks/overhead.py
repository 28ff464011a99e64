"""Capture overhead: plain sdpa generation vs traced generation, with a per-token breakdown.

**Time** is process CPU seconds (``time.process_time``) with one torch thread, plain and traced
repeats interleaved in one process (plain, traced, plain, traced, ...), median per mode. The
machine this was written on is a shared 2-core box whose load average sits near 4 from other
jobs: wall-clock ratios there swing by 10-20% between runs, CPU seconds of a single-threaded
process much less (contention still shows up as cache / memory-bandwidth pressure).

**Memory** is the peak RSS of one process per mode, one generation each: traced / plain is
what a user sees when they trace instead of calling ``model.generate``; the traced process also
holds the spaCy sentence splitter (~80 MB), so traced / ``plain_spacy`` (plain decoding with
spaCy loaded) is what capture itself costs.

**Breakdown**: one extra traced generation is instrumented (not timed with the others) and
split into CPU seconds per generated token: model step (``model.generate`` minus capture),
capture (reducing and storing the rows; in ``exact`` mode also recomputing them; the fused
kernel's own attention is part of the model step and shown separately as ``fused_attention``),
text (incremental detokenization), mapping (token -> units), assembly (sentence splitting,
chunking, curation) and other (prompt building, validation, the result object).

Models: ``smollm2-135m`` (packaged, fp32), or ``random:<shape>`` -- a random-init model of a
named shape in bf16 (``random:llama-1b``: 16 layers, 2048 hidden, 32 / 8 heads; shapes decide
the cost, not the weights) with the SmolLM2 tokenizer.

usage: python benchmarks/overhead.py [--model smollm2-135m] [--lengths 512,1024,2048,4096]
       [--new 64] [--repeats 3] [--capture fused|exact] [--out benchmarks/results/overhead.json]
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Which company employs the most people?"
FILLER = (
    "The {name} company was founded in {year} in the town of {town}. It makes {thing} and employs "
    "{n} people. Its chief executive is {ceo}, who joined in {joined}. "
)
SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B-like (the vocabulary is the SmolLM2 tokenizer's)
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
    ),
    # Qwen2.5-3B-like
    "qwen-3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=128,
    ),
}


def _sources(tokenizer: Any, length: int) -> list[Any]:
    """Sources whose prompt is about ``length`` tokens (varied text, not trivially repetitive)."""
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
        layout = build_prompt(tokenizer, sources, QUESTION, TracerConfig().system_prompt)
        if len(layout.input_ids) >= length:
            return sources
        k += 1


def load(name: str) -> tuple[Any, Any]:
    import torch

    from omnitrace_core.models import load_model

    if not name.startswith("random:"):
        loaded = load_model(name)
        return loaded.model, loaded.tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_model("smollm2-135m").tokenizer  # only the tokenizer is used
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=16384,
        attn_implementation="sdpa",
        tie_word_embeddings=True,
        **SHAPES[name.split(":", 1)[1]],
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: no fp32 copy inflating the peak
    try:
        model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


class Breakdown:
    """CPU seconds spent in each stage of one traced generation (monkeypatched timers)."""

    STAGES = ("generate_call", "capture", "fused_attention", "text", "mapping", "assembly")

    def __init__(self) -> None:
        self.s = dict.fromkeys(self.STAGES, 0.0)
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        orig = getattr(owner, attr)
        acc = self.s

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.process_time()
            try:
                return orig(*a, **k)
            finally:
                acc[stage] += time.process_time() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def install(self) -> None:
        from omnitrace_core import assembly, capture, mapping, tracer

        self.wrap(tracer._Decoding, "_run", "generate_call")
        self.wrap(capture.CaptureSession, "observe", "capture")
        self.wrap(capture.CaptureSession, "observe_decode", "capture")
        self.wrap(capture.BatchCaptureSession, "observe", "capture")
        self.wrap(capture.BatchCaptureSession, "observe_decode", "capture")
        self.wrap(capture, "decode_attention", "fused_attention")
        self.wrap(tracer._TextSoFar, "add", "text")
        self.wrap(mapping.TokenMapper, "map", "mapping")
        self.wrap(assembly.SentenceAssembler, "add", "assembly")
        self.wrap(assembly.SentenceAssembler, "finish", "assembly")

    def uninstall(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()

    def per_token_ms(self, total: float, tokens: int) -> dict[str, float]:
        s = self.s
        stages = {
            "model_step": s["generate_call"] - s["capture"],
            "capture": s["capture"],
            "text": s["text"],
            "mapping": s["mapping"],
            "assembly": s["assembly"],
            "other": total - s["generate_call"] - s["text"] - s["mapping"] - s["assembly"],
            "fused_attention (in model_step)": s["fused_attention"],
        }
        return {k: 1000 * v / max(tokens, 1) for k, v in stages.items()}


def _gen_kwargs(new: int) -> dict[str, Any]:
    return {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "no_repeat_ngram_size": 3,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }


def time_worker(model_name: str, length: int, new: int, repeats: int, capture: str) -> dict:
    """Interleaved plain / traced repeats in one process (CPU seconds), then one instrumented run."""
    import torch

    torch.set_num_threads(1)
    from omnitrace_core import Tracer, TracerConfig

    model, tok = load(model_name)
    sources = _sources(tok, length)
    tracer = Tracer(model, tok, config=TracerConfig(capture=capture), model_name=model_name)
    layout = tracer.layout(sources, QUESTION)
    ids = torch.tensor([layout.input_ids])
    gen = _gen_kwargs(new)
    pad = tok.pad_token_id or tok.eos_token_id

    from omnitrace_core.capture import install

    def plain() -> int:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, **gen)
        return int(out.shape[1] - ids.shape[1])

    def traced() -> int:
        return tracer.generate(sources, QUESTION, **gen).generated_tokens

    traced()  # warm-up (spaCy, first-call allocations), not timed
    times: dict[str, list[float]] = {"plain": [], "traced": []}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for mode, fn in (("plain", plain), ("traced", traced)):
            # plain decoding runs transformers' own sdpa, not the capturing function
            model.set_attn_implementation("sdpa") if mode == "plain" else install(model)
            t0 = time.process_time()
            tokens[mode] = fn()
            times[mode].append(time.process_time() - t0)
    install(model)
    bd = Breakdown()
    bd.install()
    try:
        t0 = time.process_time()
        n = traced()
        total = time.process_time() - t0
    finally:
        bd.uninstall()
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "prompt_tokens": len(layout.input_ids),
        "new_tokens": tokens,
        "cpu_seconds": times,
        "median_cpu_s": med,
        "time_ratio": med["traced"] / med["plain"],
        "breakdown_ms_per_token": bd.per_token_ms(total, n),
        "breakdown_total_cpu_s": total,
        "plain_ms_per_token": 1000 * med["plain"] / max(tokens["plain"], 1),
    }


def memory_worker(model_name: str, mode: str, length: int, new: int, capture: str) -> dict:
    """Peak RSS of one process doing one plain or traced generation."""
    import torch

    torch.set_num_threads(1)
    from omnitrace_core import Tracer, TracerConfig

    model, tok = load(model_name)
    sources = _sources(tok, length)
    gen = _gen_kwargs(new)
    if mode == "plain_spacy":  # plain decoding in a process that also holds the sentence splitter
        from omnitrace_core.chunking import Chunker

        Chunker().sentences("A warm-up sentence. And another one.")
        Chunker().words("A warm-up sentence.")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if mode == "traced":
        tracer = Tracer(model, tok, config=TracerConfig(capture=capture), model_name=model_name)
        n = tracer.generate(sources, QUESTION, **gen).generated_tokens
    else:
        from omnitrace_core.sources import build_prompt

        layout = build_prompt(tok, sources, QUESTION, TracerConfig().system_prompt)
        ids = torch.tensor([layout.input_ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
                **gen,
            )
        n = int(out.shape[1] - ids.shape[1])
    return {
        "mode": mode,
        "new_tokens": n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": base,
    }


def _sub(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-3:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_ratios(entry: dict[str, Any]) -> None:
    mem = entry.get("memory", {})
    peak = {m: v["peak_rss_mb"] for m, v in mem.items() if "peak_rss_mb" in v}
    if "traced" in peak and "plain" in peak:
        entry["memory_ratio"] = peak["traced"] / peak["plain"]
    if "traced" in peak and "plain_spacy" in peak:
        entry["memory_ratio_vs_plain_spacy"] = peak["traced"] / peak["plain_spacy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--capture", default="fused", choices=["fused", "exact"])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    ap.add_argument(
        "--memory-modes",
        default="plain,plain_spacy,traced",
        help="peak-RSS processes to run (plain_spacy: plain decoding with spaCy loaded, as the tracer has it)",
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="only run the memory processes, adding them to an existing --out file",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "LENGTH"))
    args = ap.parse_args()
    if args.worker:
        kind, length = args.worker[0], int(args.worker[1])
        if kind == "time":
            res = time_worker(args.model, length, args.new, args.repeats, args.capture)
        else:
            res = memory_worker(args.model, kind, length, args.new, args.capture)
        print(json.dumps(res))
        return
    tag = args.model.replace(":", "-")
    out = Path(
        args.out or ROOT / "benchmarks" / "results" / f"overhead-{tag}-{args.new}new-{args.capture}.json"
    )
    common = [
        "--model",
        args.model,
        "--new",
        str(args.new),
        "--repeats",
        str(args.repeats),
        "--capture",
        args.capture,
    ]
    results: dict[str, Any] = {
        "model": args.model,
        "new_tokens": args.new,
        "repeats": args.repeats,
        "capture": args.capture,
        "timing": "process CPU seconds, torch threads = 1, plain/traced repeats interleaved in one process, "
        "medians; shared 2-core machine under load (load average ~4)",
        "memory": "peak RSS of one process per mode, one generation",
        "lengths": {},
    }
    if args.memory_only:
        results = json.loads(out.read_text())
        for length in [int(x) for x in args.lengths.split(",")]:
            entry = results["lengths"][str(length)]
            mem = entry.setdefault("memory", {})
            for m in args.memory_modes.split(","):
                mem[m] = _sub(["--worker", m, str(length), *common])
                print(length, m, mem[m].get("peak_rss_mb"), flush=True)
            _memory_ratios(entry)
            out.write_text(json.dumps(results, indent=1))
        return
    print(f"model {args.model}, {args.new} new tokens, capture={args.capture}", flush=True)
    print(
        f"{'prompt':>7} {'plain s':>8} {'traced s':>9} {'time x':>7} {'mem x':>6} | per token ms: "
        "model capture text mapping assembly other (fused attn)",
        flush=True,
    )
    for length in [int(x) for x in args.lengths.split(",")]:
        timing = _sub(["--worker", "time", str(length), *common])
        entry: dict[str, Any] = {"timing": timing}
        if "error" in timing:
            print(f"{length:>7} time worker failed: {timing['error']}", flush=True)
            results["lengths"][str(length)] = entry
            continue
        entry["prompt_tokens"] = timing["prompt_tokens"]
        entry["time_ratio"] = timing["time_ratio"]
        if not args.no_memory:
            entry["memory"] = {
                m: _sub(["--worker", m, str(length), *common]) for m in args.memory_modes.split(",")
            }
            _memory_ratios(entry)
        results["lengths"][str(length)] = entry
        bd = timing["breakdown_ms_per_token"]
        med = timing["median_cpu_s"]
        mem_x = f"{entry['memory_ratio']:.3f}" if "memory_ratio" in entry else "-"
        print(
            f"{entry['prompt_tokens']:>7} {med['plain']:>8.2f} {med['traced']:>9.2f} {entry['time_ratio']:>7.3f} "
            f"{mem_x:>6} | {bd['model_step']:.1f} {bd['capture']:.2f} {bd['text']:.3f} {bd['mapping']:.2f} "
            f"{bd['assembly']:.2f} {bd['other']:.2f} ({bd['fused_attention (in model_step)']:.2f})",
            flush=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
