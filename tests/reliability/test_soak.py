"""Soak: 300 sequential generations on one tracer, resident memory growth reported and bounded.

Generations, streams (some abandoned half way), teacher-forced attributions and refused inputs
are interleaved on the tiny random model, so every path that could hold on to per-call state
(capture sessions, observers' run contexts, assemblers, decode threads) runs many times.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from omnitrace_core import InvalidInputError, TextSource, Tracer

GENERATIONS = 300
MAX_GROWTH_MB = 50.0


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_soak_300_generations(tiny_model, tiny_tokenizer, record_property, capsys):
    class CountingObserver:
        def __init__(self) -> None:
            self.ends = self.errors = 0

        def on_generation_start(self, info): ...
        def on_sentence(self, info, sentence): ...
        def on_generation_end(self, info, answer):
            self.ends += 1

        def on_generation_error(self, info, error):
            self.errors += 1

    observer = CountingObserver()
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-soak", observers=[observer])
    words = ["Valbrook", "lighthouse", "keeper", "1905", "filters", "Cedar", "Falls", "metres"]

    def sources(k: int) -> list[TextSource]:
        return [
            TextSource(id=f"s{k % 7}", text=f"{words[k % 8]} was founded in {1900 + k % 50}. It makes {words[(k + 3) % 8]}."),
            TextSource(id="fixed", text="The lighthouse stands 42 metres tall. Its keeper lit the lamp."),
        ]

    def one(k: int) -> list[str]:
        """One decode (a generation, or every 4th a stream abandoned half way), plus every 5th
        call a teacher-forced attribution and every 7th a refused input."""
        done: list[str] = []
        question = f"What about {words[k % 8]}? ({k})"
        if k % 4 == 3:
            stream = tracer.stream(sources(k), question, max_new_tokens=8)
            for _ in zip(range(2), stream, strict=False):
                pass
            stream.close()
            done.append("abandoned stream")
        else:
            answer = tracer.generate(sources(k), question, max_new_tokens=8)
            assert answer.generated_tokens >= 1
            done.append("generated")
        if k % 5 == 0:
            tracer.attribute(sources(k), question, f"It was founded in {1900 + k % 50}. It is 42 metres tall.")
            done.append("attributed")
        if k % 7 == 0:
            try:
                tracer.generate(sources(k), question, max_new_tokens=float("nan"))
            except InvalidInputError:
                done.append("refused")
            else:
                raise AssertionError("nan max_new_tokens was accepted")
        return done

    for k in range(20):  # warm-up: allocator arenas, spaCy, tokenizer caches
        one(k)
    assert tracer.flush_observers(10.0)
    warm_ends, warm_errors = observer.ends, observer.errors
    gc.collect()
    before = _rss_mb()
    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    for k in range(GENERATIONS):
        for kind in one(k):
            kinds[kind] = kinds.get(kind, 0) + 1
    seconds = time.perf_counter() - t0
    assert tracer.flush_observers(10.0)
    gc.collect()
    after = _rss_mb()
    growth = after - before
    record_property("rss_before_mb", round(before, 1))
    record_property("rss_growth_mb", round(growth, 1))
    with capsys.disabled():
        print(
            f"\nsoak: {GENERATIONS} decodes on one tracer {kinds} in {seconds:.1f} s; RSS {before:.1f} -> "
            f"{after:.1f} MB (growth {growth:+.1f} MB); decode threads alive: "
            f"{sum(t.name == 'omnitrace-decode' for t in threading.enumerate())}"
        )
    assert kinds["generated"] + kinds["abandoned stream"] == GENERATIONS
    assert growth < MAX_GROWTH_MB
    # a cancelled (abandoned) decode stops at its next token: give the last one time to get there
    for t in [t for t in threading.enumerate() if t.name == "omnitrace-decode"]:
        t.join(timeout=5.0)
    assert sum(t.name == "omnitrace-decode" for t in threading.enumerate()) == 0
    # every finished run reached the observer; an abandoned stream is reported as abandoned
    assert observer.ends - warm_ends == kinds["generated"] + kinds["attributed"]
    assert observer.errors - warm_errors == kinds["abandoned stream"]
