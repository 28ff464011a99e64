"""Benchmark metrics for the shared attribution format (FMSA), overall and per task.

Written from the metric definitions of the reference scorer (``../shared/bench/score.py``,
docstring) and checked against it to 1e-9 on the dev set (``tests/core/test_metrics.py``).
:func:`score` returns exactly the reference scorer's keys; :func:`score_by_task` adds the same
dictionary for every task found in the dataset.

Definitions, in short:

``sentence_f1_micro`` / ``_macro`` / ``sentence_precision`` / ``sentence_recall``
    Generated rows: a predicted sentence that mentions at least one key of a non-option source
    (case-insensitive, whole words) has gold = those sources; prediction = its cited ids
    (option sources dropped). Forced rows (``response_sentences``): each gold sentence with a
    non-empty gold is predicted by the union of the citations of the predicted sentences that
    mostly lie inside it (character offsets, else text containment). Micro pools the set
    counts, macro averages the per-sentence F1.
``answer_f1``
    ``qa_single`` / ``qa_multi``: all sources cited over the response vs ``gold_sources``.
``option_consistency``
    ``mcq``: in the first sentence naming an option letter, is the option source with the most
    attribution (``source_mass``, else citation scores) the option named.
``unsupported_precision`` / ``_recall`` / ``_f1``
    Forced rows that mark any sentence ``unsupported``: a gold sentence is flagged when a
    predicted sentence inside it says ``grounded: false``, or when sentences match it and
    cite nothing.
``sentence_f1_<kind>``
    Micro F1 over forced sentences with that ``kind``.
``time_f1_micro`` / ``_macro``
    Rows with ``gold_spans``: for each (row, source) the union of cited ``seconds`` against
    the union of gold seconds; micro pools seconds, macro averages the per-(row, source) F1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]
Metrics = dict[str, Any]

_OPTION_PREFIX = "option"
_GENERATED_ANSWER_TASKS = ("qa_single", "qa_multi")
# An option letter standing alone: "B", "(B)", "[B]", "*B*", "B.", "B:" ...
_OPTION_LETTER = re.compile(r"(?:^|(?<=[\s(\[*]))([ABCD])(?=[)\].:,\s]|$)")


def _is_option(source_id: str) -> bool:
    return source_id.startswith(_OPTION_PREFIX)


def mentions(text: str, key: str) -> bool:
    """Whether ``text`` mentions ``key`` as whole words, ignoring case."""
    pattern = r"(?<!\w)" + re.escape(key.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def option_named(text: str) -> str | None:
    """The option source id (``optionA`` ... ``optionD``) whose letter ``text`` names first."""
    found = _OPTION_LETTER.search(text)
    return None if found is None else _OPTION_PREFIX + found.group(1)


def set_f1(predicted: set[str], gold: set[str]) -> float:
    """F1 of two sets; 0 when either is empty."""
    hits = len(predicted & gold)
    if not hits:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _union(spans: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """Sorted, merged non-empty intervals (touching intervals merge)."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted((float(s[0]), float(s[1])) for s in spans if s[1] > s[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _length(spans: Sequence[tuple[float, float]]) -> float:
    return sum(b - a for a, b in spans)


def _intersection(x: Sequence[tuple[float, float]], y: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in x for c, d in y)


def _inside(predicted: Row, gold: Row) -> bool:
    """A predicted sentence belongs to the gold sentence holding at least half of it."""
    if "start" in predicted and "end" in predicted:
        shared = min(predicted["end"], gold["end"]) - max(predicted["start"], gold["start"])
        length = max(1, predicted["end"] - predicted["start"])
        return shared > 0 and shared >= 0.5 * length
    text = str(predicted.get("text", "")).strip()
    return bool(text) and text in gold["text"]


def _cited(sentence: Row) -> set[str]:
    return {c["source_id"] for c in sentence.get("citations", [])}


@dataclass
class _SetCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: set[str], gold: set[str]) -> None:
        self.tp += len(predicted & gold)
        self.fp += len(predicted - gold)
        self.fn += len(gold - predicted)

    def f1(self) -> float:
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else 0.0


@dataclass
class _Tally:
    sentences: _SetCounts = field(default_factory=_SetCounts)
    sentence_f1s: list[float] = field(default_factory=list)
    answer_f1s: list[float] = field(default_factory=list)
    option_hits: list[float] = field(default_factory=list)
    kinds: dict[str, _SetCounts] = field(default_factory=dict)
    flags: _SetCounts = field(default_factory=_SetCounts)
    time_overlap: float = 0.0
    time_cited: float = 0.0
    time_gold: float = 0.0
    time_f1s: list[float] = field(default_factory=list)
    missing: int = 0

    def sentence(self, predicted: set[str], gold: set[str]) -> None:
        self.sentences.add(predicted, gold)
        self.sentence_f1s.append(set_f1(predicted, gold))

    def time(self, row: Row, prediction: Row) -> None:
        for source_id, gold_spans in row.get("gold_spans", {}).items():
            cited = _union(
                span
                for sentence in prediction.get("sentences", [])
                for citation in sentence.get("citations", [])
                if citation["source_id"] == source_id
                for span in citation.get("seconds", [])
            )
            gold = _union(gold_spans)
            shared, cited_s, gold_s = _intersection(cited, gold), _length(cited), _length(gold)
            self.time_overlap += shared
            self.time_cited += cited_s
            self.time_gold += gold_s
            precision, recall = _ratio(shared, cited_s), _ratio(shared, gold_s)
            self.time_f1s.append(_ratio(2 * precision * recall, precision + recall))

    def forced(self, row: Row, prediction: Row) -> None:
        gold_sentences = row["response_sentences"]
        score_flags = any(g.get("unsupported") for g in gold_sentences)
        predicted_sentences = prediction.get("sentences", [])
        for gold_sentence in gold_sentences:
            inside = [s for s in predicted_sentences if _inside(s, gold_sentence)]
            predicted = set().union(*(_cited(s) for s in inside)) if inside else set()
            if score_flags:
                flagged = any(s.get("grounded") is False for s in inside) or (bool(inside) and not predicted)
                unsupported = bool(gold_sentence.get("unsupported"))
                self.flags.tp += flagged and unsupported
                self.flags.fp += flagged and not unsupported
                self.flags.fn += unsupported and not flagged
            gold = set(gold_sentence["gold_sources"])
            if not gold:
                continue
            self.sentence(predicted, gold)
            if "kind" in gold_sentence:
                self.kinds.setdefault(gold_sentence["kind"], _SetCounts()).add(predicted, gold)

    def generated(self, row: Row, prediction: Row) -> None:
        keyed = [s for s in row["sources"] if not _is_option(s["id"])]
        everything: set[str] = set()
        for sentence in prediction.get("sentences", []):
            cited = _cited(sentence)
            everything |= cited
            gold = {s["id"] for s in keyed if any(mentions(sentence["text"], k) for k in s["keys"])}
            if gold:
                self.sentence({c for c in cited if not _is_option(c)}, gold)
        if row.get("task") in _GENERATED_ANSWER_TASKS:
            self.answer_f1s.append(
                set_f1({c for c in everything if not _is_option(c)}, set(row["gold_sources"]))
            )
        if row.get("task") == "mcq":
            self.option(row, prediction)

    def option(self, row: Row, prediction: Row) -> None:
        for sentence in prediction.get("sentences", []):
            named = option_named(sentence["text"])
            if named is None:
                continue
            mass = sentence.get("source_mass") or {
                c["source_id"]: c["score"] for c in sentence.get("citations", [])
            }
            weights = [(o, mass.get(o, 0.0)) for o in row["options"]]
            top = None
            if any(w for _, w in weights):
                best = max(w for _, w in weights)
                top = next(o for o, w in weights if w == best)
            self.option_hits.append(1.0 if top == named else 0.0)
            return

    def result(self, rows: int) -> Metrics:
        s = self.sentences
        precision = _ratio(s.tp, s.tp + s.fp)
        recall = _ratio(s.tp, s.tp + s.fn)
        f = self.flags
        flagged_any = f.tp + f.fp + f.fn
        time_den = self.time_cited + self.time_gold
        out: Metrics = {
            "rows": rows,
            "missing_predictions": self.missing,
            "labelled_sentences": len(self.sentence_f1s),
            "sentence_precision": precision,
            "sentence_recall": recall,
            "sentence_f1_micro": _ratio(2 * precision * recall, precision + recall),
            "sentence_f1_macro": _mean(self.sentence_f1s),
            "answer_f1": _mean(self.answer_f1s),
            "answer_rows": len(self.answer_f1s),
            "option_consistency": _mean(self.option_hits),
            "option_rows": len(self.option_hits),
            "time_f1_micro": (2 * self.time_overlap / time_den if time_den else None)
            if self.time_f1s
            else None,
            "time_f1_macro": _mean(self.time_f1s),
            "time_rows": len(self.time_f1s),
            "unsupported_precision": f.tp / (f.tp + f.fp) if f.tp + f.fp else None,
            "unsupported_recall": f.tp / (f.tp + f.fn) if f.tp + f.fn else None,
            "unsupported_f1": f.f1() if flagged_any else None,
        }
        for kind in sorted(self.kinds):
            out[f"sentence_f1_{kind}"] = self.kinds[kind].f1()
        return out


def score(dataset: Sequence[Row], predictions: Mapping[str, Row]) -> Metrics:
    """Score prediction rows (by id) against dataset rows; the reference scorer's keys."""
    tally = _Tally()
    for row in dataset:
        prediction = predictions.get(row["id"])
        if prediction is None:
            tally.missing += 1
            continue
        tally.time(row, prediction)
        if "response_sentences" in row:
            tally.forced(row, prediction)
        else:
            tally.generated(row, prediction)
    return tally.result(len(dataset))


def score_by_task(dataset: Sequence[Row], predictions: Mapping[str, Row]) -> dict[str, Metrics]:
    """``{"all": score(...), "<task>": score(rows of that task), ...}`` (tasks in first-seen order)."""
    tasks: dict[str, list[Row]] = {}
    for row in dataset:
        tasks.setdefault(str(row.get("task", "unknown")), []).append(row)
    out = {"all": score(dataset, predictions)}
    for task, rows in tasks.items():
        out[task] = score(rows, predictions)
    return out


def prediction_problems(prediction: Any) -> list[str]:
    """What is wrong with one prediction row (empty when it is scorable)."""
    if not isinstance(prediction, dict):
        return ["a prediction row must be a JSON object"]
    problems = []
    if not isinstance(prediction.get("id"), str):
        problems.append("missing or non-string 'id'")
    sentences = prediction.get("sentences", [])
    if not isinstance(sentences, list):
        return [*problems, "'sentences' must be a list"]
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or not isinstance(sentence.get("text"), str):
            problems.append(f"sentence {i} has no 'text'")
            continue
        for citation in sentence.get("citations", []):
            if not isinstance(citation, dict) or "source_id" not in citation:
                problems.append(f"sentence {i}: a citation has no 'source_id'")
                continue
            value = citation.get("score", 0.0)
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                problems.append(f"sentence {i}: citation of {citation['source_id']!r} has score {value!r}")
        for source_id, value in (sentence.get("source_mass") or {}).items():
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                problems.append(f"sentence {i}: source_mass of {source_id!r} is {value!r}")
    return problems


# -- image regions ------------------------------------------------------------------------
# Not part of the reference scorer: image citations carry pixel boxes (``Citation.boxes``),
# scored here against gold boxes of the same image.

Box = Sequence[float]
"""A pixel box ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``."""


def box_hits(box: Box, gold: Box) -> bool:
    """Whether a cited box hits a gold box: they share area (IoU > 0) or its centre is inside.

    The centre rule keeps a degenerate (zero-area) cited box from always missing.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    g0, h0, g1, h1 = (float(v) for v in gold)
    if min(x1, g1) - max(x0, g0) > 0 and min(y1, h1) - max(y0, h0) > 0:
        return True
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return g0 <= cx <= g1 and h0 <= cy <= h1


def region_hit_rate(predicted_boxes: Sequence[Box], gold_boxes: Sequence[Box]) -> float | None:
    """Share of a sentence's cited boxes that hit some gold box; None when it cites no box."""
    if not predicted_boxes:
        return None
    hits = sum(any(box_hits(p, g) for g in gold_boxes) for p in predicted_boxes)
    return hits / len(predicted_boxes)


def region_gold_coverage(predicted_boxes: Sequence[Box], gold_boxes: Sequence[Box]) -> float | None:
    """Share of the gold boxes hit by at least one cited box; None when there is no gold box."""
    if not gold_boxes:
        return None
    covered = sum(any(box_hits(p, g) for p in predicted_boxes) for g in gold_boxes)
    return covered / len(gold_boxes)


def region_scores(pairs: Iterable[tuple[Sequence[Box], Sequence[Box]]]) -> Metrics:
    """Pooled region metrics over ``(cited boxes, gold boxes)`` pairs (one per sentence).

    ``region_hit_rate``: hitting cited boxes / cited boxes; ``region_gold_coverage``: gold
    boxes hit / gold boxes (both None when there is nothing to divide by); ``region_pairs``:
    how many pairs were scored.
    """
    hits = cited = covered = gold = pairs_seen = 0
    for predicted, golden in pairs:
        pairs_seen += 1
        cited += len(predicted)
        gold += len(golden)
        hits += sum(any(box_hits(p, g) for g in golden) for p in predicted)
        covered += sum(any(box_hits(p, g) for p in predicted) for g in golden)
    return {
        "region_hit_rate": hits / cited if cited else None,
        "region_gold_coverage": covered / gold if gold else None,
        "region_pairs": pairs_seen,
    }
