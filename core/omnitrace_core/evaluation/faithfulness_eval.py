"""``omnitrace eval --faithfulness``: do a method's citations name sources the model used?

Agreement with gold says whether citations match the labels; it does not say whether the model
relied on the cited sources. For every method and every sentence of its prediction, its top-1
and top-3 sources are taken out of the prompt and the drop in the sentence's log-probability
is measured (:func:`omnitrace_core.evaluation.faithfulness.logp_drops`); the same for ``k`` random sources
(the control: a method is informative only if removing what it cites hurts more than that).

Which sources a method "names" for a sentence: its citations by score, best first; when it
cited fewer than ``k``, filled from its ``source_mass`` ranking (positive mass only). A
sentence that names nothing (no citation, no positive mass) is left out of that method's mean
(counted under ``abstained``): there is nothing to remove. Random removals are drawn per row
(seeded by the row id) over the sentences of the first method, ``min(k, number of sources)``
each.

One worker call per row evaluates every method: identical ``(sentence, removed set)`` pairs
are asked once, one forward pass per distinct removed set (plus one over the full prompt)
serves every sentence and method that removes it (:func:`pair_drops`), so methods that agree
cost nothing extra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omnitrace_core.evaluation.methods import DEFAULT_MAX_NEW_TOKENS, load_tracer
from omnitrace_core.models import DEFAULT_MODEL

KS = (1, 3)
#: Key of the random-removal control in plans, records and summaries. Not ``random``: that is
#: the random *baseline*, a method whose own citations are measured like any other.
CONTROL = "random-sources"


def named_sources(sentence: Mapping[str, Any], k: int) -> list[str]:
    """Up to ``k`` source ids a predicted sentence names: citations by score, then ``source_mass``."""
    cited = sorted((c for c in sentence.get("citations", [])), key=lambda c: -float(c.get("score", 0.0)))
    out: list[str] = []
    for c in cited:
        if c["source_id"] not in out:
            out.append(c["source_id"])
    mass = sentence.get("source_mass") or {}
    for sid, _ in sorted(((s, float(v)) for s, v in mass.items() if float(v) > 0), key=lambda kv: -kv[1]):
        if sid not in out:
            out.append(sid)
    return out[:k]


def sentence_spans(prediction: Mapping[str, Any], text: str) -> list[tuple[int, int]]:
    """Character spans of a prediction's sentences in ``text`` (offsets, else located by text)."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for s in prediction.get("sentences", []):
        if isinstance(s.get("start"), int) and isinstance(s.get("end"), int):
            spans.append((s["start"], s["end"]))
            cursor = s["end"]
            continue
        at = text.find(s["text"], cursor)
        if at < 0:
            at = text.find(s["text"])
        if at < 0:
            spans.append((0, 0))  # not in the text: no token, no drop, left out below
            continue
        spans.append((at, at + len(s["text"])))
        cursor = at + len(s["text"])
    return spans


def plan_row(
    row: Mapping[str, Any], text: str, predictions: Mapping[str, Mapping[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """The worker task for one row: for each method and ``k``, a removed set per sentence.

    Methods whose prediction is for another text are skipped (their spans would not match).
    """
    from omnitrace_core.evaluation.faithfulness import random_removals

    plan: dict[str, dict[str, Any]] = {}
    first: list[tuple[int, int]] | None = None
    for method, prediction in predictions.items():
        if prediction.get("text") != text:
            continue
        spans = sentence_spans(prediction, text)
        if first is None:
            first = spans
        plan[method] = {
            "spans": spans,
            **{f"k{k}": [named_sources(s, k) for s in prediction.get("sentences", [])] for k in KS},
        }
    ids = [s["id"] for s in row["sources"]]
    if first is not None:
        plan[CONTROL] = {
            "spans": first,
            **{
                f"k{k}": random_removals(ids, min(k, len(ids)), len(first), f"{seed}:{row['id']}:{k}")
                for k in KS
            },
        }
    return {"id": row["id"], "row": row, "text": text, "plan": plan}


def pair_drops(
    tracer: Any, row: Mapping[str, Any], text: str, pairs: Sequence[tuple[int, int, tuple[str, ...]]]
) -> tuple[list[float | None], int]:
    """Log-prob drop of each ``(start, end, removed ids)`` pair: one base pass + one per removed set.

    :func:`omnitrace_core.evaluation.faithfulness.logp_drops` measures one removed set per sentence (each
    token belongs to one sentence span). Here the same sentence is asked under many removed
    sets (every method's top-1 and top-3, the random control), so the pairs go through the same
    building blocks (prompt layout, forced tokenisation, :func:`token_logprobs`) with the same
    definition: the drop of the sentence's summed token log-probabilities; a token belongs to
    the span holding its last character. A pair whose span holds no token gets None.

    Raises:
        InvalidInputError: a removed id that is not one of the row's sources.
    """
    from omnitrace_core.errors import InvalidInputError
    from omnitrace_core.evaluation.faithfulness import (
        prompt_ids,
        response_tokens,
        text_sources,
        token_logprobs,
    )

    srcs = text_sources(row)
    known = {s.id for s in srcs}
    for _, _, removed in pairs:
        if set(removed) - known:
            raise InvalidInputError(
                f"removed ids {sorted(set(removed) - known)} are not sources of {row['id']!r}"
            )
    ids, offsets = response_tokens(tracer.tokenizer, text)
    tokens: dict[tuple[int, int], list[int]] = {}
    for start, end, _ in pairs:
        if (start, end) not in tokens:
            tokens[(start, end)] = [k for k, (a, b) in enumerate(offsets) if b > a and start <= b - 1 < end]
    drops: list[float | None] = [None] * len(pairs)
    groups: dict[frozenset[str], list[int]] = {}
    for n, (start, end, removed) in enumerate(pairs):
        if removed and tokens[(start, end)]:
            groups.setdefault(frozenset(removed), []).append(n)
    if not groups:
        return drops, 0
    question = str(row["question"])
    base = token_logprobs(tracer, prompt_ids(tracer, srcs, question), ids)
    passes = 1
    for gone, members in groups.items():
        ablated = token_logprobs(
            tracer, prompt_ids(tracer, [s for s in srcs if s.id not in gone], question), ids
        )
        passes += 1
        for n in members:
            at = tokens[(pairs[n][0], pairs[n][1])]
            drops[n] = float(base[at].sum() - ablated[at].sum())
    return drops, passes


def run_plan(tracer: Any, task: Mapping[str, Any]) -> dict[str, Any]:
    """Log-prob drops for every (method, k, sentence) of a planned row; identical pairs asked once."""
    t0 = time.perf_counter()
    pairs: dict[tuple[int, int, tuple[str, ...]], int] = {}
    for entry in task["plan"].values():
        for k in KS:
            for span, removed in zip(entry["spans"], entry[f"k{k}"], strict=True):
                if removed and span[1] > span[0]:
                    pairs.setdefault((span[0], span[1], tuple(sorted(removed))), len(pairs))
    drops, passes = pair_drops(tracer, task["row"], task["text"], list(pairs))
    out: dict[str, dict[str, list[float | None]]] = {}
    for method, entry in task["plan"].items():
        out[method] = {}
        for k in KS:
            values: list[float | None] = []
            for span, removed in zip(entry["spans"], entry[f"k{k}"], strict=True):
                key = (span[0], span[1], tuple(sorted(removed)))
                values.append(drops[pairs[key]] if key in pairs else None)
            out[method][f"k{k}"] = values
    return {"id": task["id"], "drops": out, "forward_passes": passes, "seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class FaithfulnessWorkerFactory:
    """Builds the faithfulness worker in its own process (picklable: settings only)."""

    model: str = DEFAULT_MODEL
    threads: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # unused; keeps the factories' fields alike
    tracer: Any = field(default=None, compare=False, repr=False)

    def __call__(self) -> Any:
        tracer = self.tracer if self.tracer is not None else load_tracer(self.model, self.threads)
        return lambda task: run_plan(tracer, task)

    def __reduce__(self) -> Any:
        if self.tracer is not None:
            raise TypeError(
                "a FaithfulnessWorkerFactory holding a loaded tracer cannot be shipped to another process"
            )
        return (FaithfulnessWorkerFactory, (self.model, self.threads, self.max_new_tokens))


def summarize(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean drop per method and ``k`` over the sentences that named something, plus the control.

    Each method's mean is over its own sentences, so two means can cover different sentences
    (a word matcher abstains where it finds no shared word). Every method other than the
    reference (``omnitrace`` if evaluated, else the first method) therefore also gets a paired
    comparison on the sentences both named something for (:func:`paired_difference`).
    """
    out: dict[str, dict[str, Any]] = {}
    reference = PAIRED_REFERENCE if PAIRED_REFERENCE in methods else (methods[0] if methods else None)
    for method in [*methods, CONTROL]:
        sums = {k: 0.0 for k in KS}
        counts = {k: 0 for k in KS}
        total = 0
        for record in records:
            entry = record["drops"].get(method)
            if entry is None:
                continue
            total += len(entry[f"k{KS[0]}"])
            for k in KS:
                for value in entry[f"k{k}"]:
                    if value is not None:
                        sums[k] += value
                        counts[k] += 1
        out[method] = {
            **{f"logp_drop_k{k}": (sums[k] / counts[k] if counts[k] else None) for k in KS},
            "sentences": counts[KS[0]],
            "abstained": total - counts[KS[0]],
        }
        if reference is not None and method != reference:
            for k in KS:
                paired = paired_difference(records, method, reference, k)
                if paired is not None:
                    out[method][f"paired_k{k}"] = paired
    return out


#: The method every other one is compared with, sentence by sentence, when it was evaluated.
PAIRED_REFERENCE = "omnitrace"


def paired_difference(
    records: Sequence[Mapping[str, Any]],
    method: str,
    reference: str,
    k: int,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """``method``'s drop minus ``reference``'s on the sentences both named sources for.

    Sentences are paired by their index in the row (every method attributes the same
    response, split the same way; a row whose two lists differ in length is skipped). The
    95% interval is a bootstrap over rows, not sentences: the sentences of one answer share
    its sources and are not independent draws. Seeded, so a report is reproducible.
    Returns None when no sentence pairs up.
    """
    import torch  # the core's own dependency; keeps the module import light

    sums: list[float] = []
    counts: list[int] = []
    for record in records:
        drops = record.get("drops", {})
        a, b = drops.get(method), drops.get(reference)
        if a is None or b is None or len(a[f"k{k}"]) != len(b[f"k{k}"]):
            continue
        pairs = zip(a[f"k{k}"], b[f"k{k}"], strict=True)
        diffs = [x - y for x, y in pairs if x is not None and y is not None]
        if diffs:
            sums.append(sum(diffs))
            counts.append(len(diffs))
    n = sum(counts)
    if n == 0:
        return None
    s = torch.tensor(sums, dtype=torch.float64)
    c = torch.tensor(counts, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(sums), (resamples, len(sums)), generator=gen)
    means = (s[pick].sum(dim=1) / c[pick].sum(dim=1)).sort().values
    lo, hi = means[int(0.025 * resamples)].item(), means[int(0.975 * resamples) - 1].item()
    diff = float(s.sum() / n)
    return {"reference": reference, "sentences": n, "rows": len(sums), "diff": diff, "ci95": [lo, hi]}
