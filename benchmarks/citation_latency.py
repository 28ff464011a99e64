"""Per-sentence citation latency while streaming: time from the text delta that completes a
sentence to that sentence's citation event, on the packaged model.

Baseline in the same run: the latency if a sentence were only closed when the next token
arrives (the time between the completing delta and the next delta), which is what a splitter
that waits for the next sentence to begin would give.

usage: python benchmarks/citation_latency.py [--out benchmarks/results/citation_latency.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from omnitrace_core import SentenceEvent, TextDelta, Tracer
from omnitrace_core.cli import DEMO_QUESTION, DEMO_SOURCES

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    DEMO_QUESTION,
    "Describe Port Veltra in three sentences.",
    "What happens at the fish market, and when was the harbor dredged?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/citation_latency.json"))
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tracer = Tracer.from_default()
    latencies, next_token_gaps = [], []
    for q in QUESTIONS:
        text, deltas = "", []  # (time, text length after the delta)
        for event in tracer.stream(DEMO_SOURCES, q, max_new_tokens=args.max_new_tokens):
            now = time.perf_counter()
            if isinstance(event, TextDelta):
                text += event.text
                deltas.append((now, len(text)))
            elif isinstance(event, SentenceEvent):
                end = event.sentence.char_end
                done_at = next(t for t, n in deltas if n >= end)
                latencies.append((now - done_at) * 1000)
                later = [t for t, n in deltas if t > done_at]
                if later:
                    next_token_gaps.append((later[0] - done_at) * 1000)
    result = {
        "sentences": len(latencies),
        "citation_latency_ms": {"median": statistics.median(latencies), "max": max(latencies)},
        "wait_for_next_token_ms": {"median": statistics.median(next_token_gaps)} if next_token_gaps else None,
        "all_latencies_ms": latencies,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "all_latencies_ms"}, indent=1))


if __name__ == "__main__":
    main()
