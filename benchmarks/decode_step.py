"""One decode step of the packaged model: plain sdpa vs fused capture vs exact capture.

Separates the model step's share of the capture overhead from the per-token work around it.
Two measurements, process CPU seconds with one torch thread, medians of 7 batches of calls:

- **kernel**: one layer's decode attention at the model's shapes (random q / k / v, no mask):
  transformers' ``sdpa_attention_forward``, ``capture_kernels.decode_attention`` (fused) and
  sdpa + ``capture.attention_rows`` (exact);
- **step**: one full forward pass of one new token over a cache of ``K - 1`` prompt tokens
  (the cache is cropped back after every call, so each call sees the same ``K`` keys), plain
  (sdpa, no session), fused and exact (a capture session with the tracer's default signal).
  Each mode runs twice, interleaved; the minimum of the two medians is reported.

usage: python benchmarks/decode_step.py [--keys 530,1050] [--reps 200] [--signal learned]
       [--out benchmarks/results/decode_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from omnitrace_core import Tracer
from omnitrace_core.capture import CaptureSession, attention_rows, capturing, install
from omnitrace_core.capture_kernels import decode_attention

ROOT = Path(__file__).resolve().parents[1]


def cpu_per_call(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        times.append((time.process_time() - t0) / reps)
    return statistics.median(times)


class _Layer(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.layer_idx = 0
        self.is_causal = True
        self.num_key_value_groups = groups


def _kernels(
    sdpa: Any, layer: _Layer, heads: int, kv_heads: int, dim: int, k: int, reps: int
) -> dict[str, float]:
    """CPU seconds per call of one layer's decode attention over ``k`` keys, per mode."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, 1, dim, generator=g)
    key = torch.randn(1, kv_heads, k, dim, generator=g)
    val = torch.randn(1, kv_heads, k, dim, generator=g)
    scale = dim**-0.5
    with torch.no_grad():
        return {
            "sdpa": cpu_per_call(lambda: sdpa(layer, q, key, val, None, scaling=scale), reps),
            "fused": cpu_per_call(lambda: decode_attention(q, key, val, None, scale), reps),
            "exact": cpu_per_call(
                lambda: (
                    sdpa(layer, q, key, val, None, scaling=scale),
                    attention_rows(q, key, None, scale, [0], k - 1),
                ),
                reps,
            ),
        }


def main() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--keys", default="530,1050")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--signal", default=None, help="default: the tracer's configured signal")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tracer = Tracer.from_pretrained(args.model)
    model, cfg = tracer.model, tracer.model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    signal = tracer.signal_for(args.signal or tracer.config.signal)
    layer = _Layer(heads // kv_heads)
    keys = [int(k) for k in args.keys.split(",")]
    res: dict[str, Any] = {
        "model": args.model,
        "signal": signal.name,
        "layers": cfg.num_hidden_layers,
        "timing": "process CPU seconds, torch threads = 1, median of 7 batches of calls",
        "kernel_us_per_layer": {},
        "step_ms": {},
    }
    for k in keys:
        row = _kernels(sdpa_attention_forward, layer, heads, kv_heads, dim, k, args.reps * 5)
        res["kernel_us_per_layer"][str(k)] = {m: 1e6 * v for m, v in row.items()}
        print(f"kernel K={k}: " + ", ".join(f"{m} {1e6 * v:.1f} us" for m, v in row.items()), flush=True)

    text = "The harbor was built in 1897 and is 42 metres deep. " * 400
    base = tracer.tokenizer(text)["input_ids"]
    for k in keys:
        ids = torch.tensor([base[: k - 1]])
        out: dict[str, list[float]] = {}
        for mode in ("plain", "fused", "exact") * 2:
            if mode == "plain":
                model.set_attn_implementation("sdpa")
            else:
                install(model)
            with torch.no_grad():
                pre = model(input_ids=ids, use_cache=True)
                cache = pre.past_key_values
                nxt = torch.tensor([[int(pre.logits[0, -1].argmax())]])

                def step() -> None:
                    model(input_ids=nxt, past_key_values=cache, use_cache=True)  # noqa: B023
                    cache.crop(-1)  # noqa: B023

                reps = max(args.reps // 10, 5)
                if mode == "plain":
                    t = cpu_per_call(step, reps)
                else:
                    with capturing(CaptureSession(signal, cfg.num_hidden_layers, [k - 2], mode=mode)):
                        t = cpu_per_call(step, reps)
            out.setdefault(mode, []).append(1e3 * t)
        best = {m: min(v) for m, v in out.items()}
        res["step_ms"][str(k)] = {**best, "runs": out, "fused_vs_plain": best["fused"] / best["plain"]}
        print(f"step K={k} ms: " + ", ".join(f"{m} {v:.2f}" for m, v in best.items()), flush=True)
    install(model)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
