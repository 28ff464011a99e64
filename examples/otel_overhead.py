"""Overhead of OpenTelemetry instrumentation on generation time (in-memory exporter, content off).

    python examples/otel_overhead.py [--runs 5] [--max-new-tokens 48] [--json out.json]

Alternates plain and instrumented ``generate`` calls on the packaged model (one torch thread,
greedy, so both produce the same tokens), reports the median wall time of each and the ratio,
and the observer's own cost per generation (spans built and exported on its delivery thread,
off the decoding path). Target from issue 6: at most 2% extra generation time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omnitrace_core import TextSource, Tracer
from omnitrace_integrations.otel import OTelObserver

SOURCES = [
    TextSource(id="harbor", text="Port Veltra's harbor was dredged in 1911 so that steamships could dock."),
    TextSource(id="lighthouse", text="The Veltra lighthouse stands 42 metres tall on Gannet Point."),
    TextSource(id="keeper", text="Its keeper, Ilse Marrow, lit the lamp every night for thirty years."),
]
QUESTION = "How tall is the Veltra lighthouse and who was its keeper?"


class TimedObserver(OTelObserver):
    """Measures the time spent in the observer's callbacks (its delivery thread)."""

    busy_s = 0.0

    def on_generation_start(self, info):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().on_generation_start(info)
        TimedObserver.busy_s += time.perf_counter() - t

    def on_sentence(self, info, sentence):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().on_sentence(info, sentence)
        TimedObserver.busy_s += time.perf_counter() - t

    def on_generation_end(self, info, answer):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().on_generation_end(info, answer)
        TimedObserver.busy_s += time.perf_counter() - t


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tracer = Tracer.from_default()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = TimedObserver(tracer_provider=provider, capture_content=False)

    def once() -> tuple[float, str]:
        t = time.perf_counter()
        answer = tracer.generate(SOURCES, QUESTION, max_new_tokens=args.max_new_tokens)
        return time.perf_counter() - t, answer.text

    once()  # warm-up
    off: list[float] = []
    on: list[float] = []
    texts: set[str] = set()
    for _ in range(args.runs):
        seconds, text = once()
        off.append(seconds)
        texts.add(text)
        tracer.add_observer(observer)  # what OmniTraceInstrumentor attaches, with a stopwatch
        seconds, text = once()
        on.append(seconds)
        texts.add(text)
        tracer.flush_observers(10.0)
        tracer.remove_observer(observer)
    spans = len(exporter.get_finished_spans())
    result = {
        "runs": args.runs,
        "max_new_tokens": args.max_new_tokens,
        "median_off_s": statistics.median(off),
        "median_on_s": statistics.median(on),
        "time_ratio": statistics.median(on) / statistics.median(off),
        "observer_ms_per_generation": 1000 * TimedObserver.busy_s / args.runs,
        "spans_per_generation": spans / args.runs,
        "same_text_on_and_off": len(texts) == 1,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
