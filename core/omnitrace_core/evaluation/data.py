"""Reading what ``omnitrace score`` / ``omnitrace eval`` evaluate: dataset rows and prediction rows.

A bad line never stops a run: it is skipped, named (file, line, what is wrong) and counted, so
the metrics are computed on the rest and the command exits 1. Only input that leaves nothing
to evaluate (unreadable or empty file, no usable row) raises :class:`EvalInputError` (exit 2).

Beyond the generic checks of :func:`omnitrace_core.evaluation.bench.read_rows` (JSON object with ``id``,
``sources``, ``question``), a dataset row must carry what its task is scored with: every
scored field the metrics read, so a malformed row is reported here instead of crashing the
scorer half-way (:func:`row_problems`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitrace_core.errors import OmniTraceError
from omnitrace_core.evaluation.bench import TASKS
from omnitrace_core.evaluation.metrics import prediction_problems

_GOLD_TASKS = ("qa_single", "qa_multi", "mcq")


class EvalInputError(OmniTraceError):
    """The dataset, the predictions or the arguments are unusable as a whole (exit code 2)."""


@dataclass
class Dataset:
    """Valid dataset rows (after ``--limit``), and a message per skipped line."""

    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    all_ids: set[str] = field(default_factory=set)  # every valid row's id, also those past --limit


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def row_problems(row: Mapping[str, Any]) -> list[str]:
    """What is wrong with one dataset row for scoring (empty when it is usable)."""
    problems: list[str] = []
    if not isinstance(row["id"], str) or not row["id"]:
        problems.append(f"'id' must be a non-empty string, got {row['id']!r}")
    task = row.get("task")
    if task is None:
        return [*problems, "row is missing 'task'"]
    if task not in TASKS:
        return [*problems, f"unknown task {task!r} (known: {', '.join(TASKS)})"]
    sources = row["sources"]
    if not sources:
        problems.append("'sources' is empty")
    ids: list[str] = []
    for i, src in enumerate(sources):
        if not isinstance(src, dict) or not isinstance(src.get("id"), str):
            problems.append(f"source {i} has no string 'id'")
            continue
        ids.append(src["id"])
        if (
            task != "teacher_forced"
            and not src["id"].startswith("option")
            and not _is_str_list(src.get("keys"))
        ):
            problems.append(f"source {src['id']!r} has no 'keys' list (needed to score a {task} row)")
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate source ids in {ids}")
    known = set(ids)
    if task in _GOLD_TASKS:
        gold = row.get("gold_sources")
        if not isinstance(gold, list) or not _is_str_list(gold):
            problems.append(f"a {task} row needs a 'gold_sources' list")
        elif set(gold) - known:
            problems.append(f"gold_sources {sorted(set(gold) - known)} are not among the sources")
    if task == "mcq" and not _is_str_list(row.get("options")):
        problems.append("an mcq row needs an 'options' list")
    if task == "teacher_forced":
        sentences = row.get("response_sentences")
        if not isinstance(row.get("response"), str) or not row["response"].strip():
            problems.append("a teacher_forced row needs a non-empty 'response'")
        if not isinstance(sentences, list):
            problems.append("a teacher_forced row needs a 'response_sentences' list")
        else:
            for i, s in enumerate(sentences):
                if not isinstance(s, dict):
                    problems.append(f"response_sentences[{i}] is not an object")
                    continue
                missing = [k for k in ("text", "start", "end", "gold_sources") if k not in s]
                if missing:
                    problems.append(f"response_sentences[{i}] is missing {missing}")
                elif not _is_str_list(s["gold_sources"]) or set(s["gold_sources"]) - known:
                    problems.append(
                        f"response_sentences[{i}] gold_sources {s['gold_sources']!r} are not source ids"
                    )
    return problems


def load_dataset(path: Path, limit: int | None = None) -> Dataset:
    """Valid rows of a benchmark file (the first ``limit``), and a message per skipped line.

    Raises:
        EvalInputError: the file cannot be read, or has no usable row.
    """
    from omnitrace_core.evaluation.bench import RowError, read_rows

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    try:
        for row in read_rows(path):
            if isinstance(row, RowError):
                problems.append(row.message)
                continue
            issues = row_problems(row)
            if issues:
                problems.append(f"{path}: row {row['id']!r} skipped: " + "; ".join(issues))
                continue
            if row["id"] in seen:
                problems.append(f"{path}: duplicate row id {row['id']!r} (later row skipped)")
                continue
            seen.add(row["id"])
            rows.append(row)
    except OmniTraceError as exc:
        raise EvalInputError(str(exc)) from exc
    if limit is not None:
        if limit < 1:
            raise EvalInputError(f"--limit must be >= 1, got {limit}")
        rows = rows[:limit]
    if not rows:
        raise EvalInputError(
            f"{path}: no usable dataset rows"
            + (f" ({len(problems)} malformed)" if problems else " (empty file)")
        )
    return Dataset(rows, problems, seen)


def load_predictions(
    path: Path, known_ids: set[str] | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Scorable prediction rows by id, and a message for every line left out and why.

    Raises:
        EvalInputError: the file cannot be read.
    """
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark is not part of line 1
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"cannot read predictions {path}: {exc}") from exc
    preds: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        issues = prediction_problems(row)
        if issues:
            problems.append(f"{path}:{number}: " + "; ".join(issues))
            continue
        if known_ids is not None and row["id"] not in known_ids:
            problems.append(f"{path}:{number}: id {row['id']!r} is not in the dataset")
            continue
        if row["id"] in preds:
            problems.append(f"{path}:{number}: duplicate prediction for {row['id']!r} (later row skipped)")
            continue
        preds[row["id"]] = row
    return preds, problems
