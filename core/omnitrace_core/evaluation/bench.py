"""The shared attribution benchmark format (FMSA): reading dataset rows, answering them.

A malformed line is reported with its line number and skipped; the other rows still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omnitrace_core.errors import InvalidInputError, OmniTraceError
from omnitrace_core.results import TracedAnswer
from omnitrace_core.tracer import Tracer


@dataclass(frozen=True)
class RowError:
    """A dataset line that could not be used, with why."""

    line: int
    message: str


def read_rows(path: str | Path) -> Iterator[dict[str, Any] | RowError]:
    """Yield each dataset row, or a :class:`RowError` naming the bad line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read dataset {p}: {exc}") from exc
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RowError(number, f"{p}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RowError(number, f"{p}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        problem = _check_row(row)
        if problem:
            yield RowError(number, f"{p}:{number}: {problem}")
            continue
        yield row


def _check_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    for key in ("id", "sources", "question"):
        if key not in row:
            return f"row is missing {key!r}"
    if row.get("task") == "teacher_forced" and not row.get("response"):
        return "teacher_forced row has no 'response'"
    if not isinstance(row["sources"], list):
        return "'sources' must be a list"
    return None


def resolve_media_paths(sources: list[Any], base_dir: str | Path | None) -> list[Any]:
    """Media sources' relative ``path``s read from the dataset file's folder (as the format says)."""
    if base_dir is None:
        return sources
    out = []
    for src in sources:
        if isinstance(src, dict) and src.get("path") and src.get("modality", "text") != "text":
            path = Path(src["path"])
            if not path.is_absolute():
                src = {**src, "path": str(Path(base_dir) / path)}
        out.append(src)
    return out


def answer_row(
    tracer: Tracer, row: dict[str, Any], base_dir: str | Path | None = None, **generation_kwargs: Any
) -> TracedAnswer:
    """Answer (or, for forced rows, attribute) one dataset row.

    ``base_dir``: the dataset file's folder, against which media ``path``s are resolved.
    """
    # validate_sources keeps the known fields (not "keys") and checks the modality.
    sources = resolve_media_paths(row["sources"], base_dir)
    if row.get("response"):
        return tracer.attribute(sources, row["question"], row["response"])
    return tracer.generate(sources, row["question"], **generation_kwargs)


def predict_rows(
    tracer: Tracer,
    rows: Iterable[dict[str, Any] | RowError],
    out: TextIO,
    *,
    base_dir: str | Path | None = None,
    max_new_tokens: int = 128,
    on_row: Callable[[], None] = lambda: None,
    on_problem: Callable[[str], None] = lambda message: None,
) -> tuple[int, int]:
    """Answer each row and write its prediction line to ``out`` (flushed per row).

    A malformed line or a row the library refuses is reported through ``on_problem`` and
    skipped; the others still run. Returns ``(written, skipped)``.
    """
    written = failures = 0
    for row in rows:
        on_row()
        if isinstance(row, RowError):
            failures += 1
            on_problem(f"[yellow]skipped:[/yellow] {row.message}")
            continue
        try:
            answer = answer_row(tracer, row, base_dir=base_dir, max_new_tokens=max_new_tokens)
        except OmniTraceError as exc:
            failures += 1
            on_problem(f"[yellow]row {row['id']!r} failed:[/yellow] {exc}")
            continue
        out.write(json.dumps(answer.to_prediction(row["id"])) + "\n")
        out.flush()
        written += 1
    return written, failures
