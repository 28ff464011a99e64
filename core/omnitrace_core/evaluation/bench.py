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
from omnitrace_core.validation import show

#: Task types of the shared benchmark format (``../shared/bench/README.md``).
TASKS = ("qa_single", "qa_multi", "summary", "mcq", "teacher_forced")


@dataclass(frozen=True)
class RowError:
    """A dataset line that could not be used, with why."""

    line: int
    message: str


def read_rows(path: str | Path) -> Iterator[dict[str, Any] | RowError]:
    """Yield each dataset row, or a :class:`RowError` naming the bad line."""
    for _, row in numbered_rows(path):
        yield row


def numbered_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield ``(line number, row or RowError)`` for each non-blank line of a JSONL dataset.

    Lines are split on ``\n`` only (a U+2028 inside a JSON string is part of the string), and a
    UTF-8 byte-order mark before the first line is ignored.

    Raises:
        InvalidInputError: the file cannot be read (or is a folder).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read dataset {p}: {exc.strerror or exc}") from exc
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, RowError(number, f"{p}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, RowError(number, f"{p}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield number, RowError(number, f"{p}:{number}: JSON nested too deeply")
            continue
        problem = _check_row(row)
        if problem:
            yield number, RowError(number, f"{p}:{number}: {problem}")
            continue
        yield number, row


def _check_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    for key in ("id", "sources", "question"):
        if key not in row:
            return f"row is missing {key!r}"
    if not isinstance(row["id"], str) or not row["id"].strip():
        return f"'id' must be a non-empty string, got {show(row['id'])}"
    if row.get("task") == "teacher_forced" and not row.get("response"):
        return "teacher_forced row has no 'response'"
    if not isinstance(row["sources"], list):
        return "'sources' must be a list"
    if not isinstance(row["question"], str):
        return f"'question' must be a string, got {show(row['question'])}"
    if row.get("response") is not None and not isinstance(row["response"], str):
        return f"'response' must be a string, got {show(row['response'])}"
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
    rows: Iterable[dict[str, Any] | RowError | tuple[int, dict[str, Any] | RowError]],
    out: TextIO,
    *,
    base_dir: str | Path | None = None,
    max_new_tokens: int = 128,
    on_row: Callable[[], None] = lambda: None,
    on_problem: Callable[[str], None] = lambda message: None,
    where: str = "",
    skip_ids: set[str] | None = None,
    batch_size: int = 1,
) -> tuple[int, int]:
    """Answer each row and write its prediction line to ``out`` (flushed per row).

    ``rows`` are rows or :class:`RowError`s, or ``(line, row)`` pairs from :func:`numbered_rows`
    (then a failed row is named ``{where}:{line}``). A malformed line or a row that fails (any
    exception but an interrupt) is reported through ``on_problem`` and skipped; the others
    still run. Rows whose id is in ``skip_ids`` (already written: a resumed run) are passed
    over. ``batch_size`` > 1 decodes up to that many generated rows together
    (:meth:`Tracer.generate_batch`); lines are still written in row order, and if a batch
    row fails it is answered alone so its error is reported with its id (the
    other rows keep their batched answers). Returns
    ``(written, skipped)``.
    """
    written = failures = 0
    pending: list[tuple[str, dict[str, Any]]] = []

    def flush() -> None:
        nonlocal written, failures
        batched: dict[int, TracedAnswer] = {}
        generated = [row for _, row in pending if not row.get("response")]
        if batch_size > 1 and len(generated) > 1:
            try:
                answers = tracer.generate_batch(
                    [(resolve_media_paths(r["sources"], base_dir), r["question"]) for r in generated],
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    return_exceptions=True,
                )
                # A failed row is answered alone below, where its error is reported with its id.
                batched = {
                    id(r): a
                    for r, a in zip(generated, answers, strict=True)
                    if isinstance(a, TracedAnswer)
                }
            except Exception:  # answered one by one below, where the failing row is named
                batched = {}
        for at, row in pending:
            try:
                answer = batched.get(id(row)) or answer_row(
                    tracer, row, base_dir=base_dir, max_new_tokens=max_new_tokens
                )
                line_out = json.dumps(answer.to_prediction(row["id"]), allow_nan=False) + "\n"
            except OmniTraceError as exc:
                failures += 1
                on_problem(f"[yellow]{at}row {row['id']!r} failed:[/yellow] {_one_line(exc)}")
                continue
            except Exception as exc:  # never abort the run on one row: name it and go on
                failures += 1
                on_problem(
                    f"[yellow]{at}row {row['id']!r} failed:[/yellow] {type(exc).__name__}: {_one_line(exc)}"
                )
                continue
            out.write(line_out)
            out.flush()
            written += 1
        pending.clear()

    for item in rows:
        line, row = item if isinstance(item, tuple) else (None, item)
        on_row()
        if isinstance(row, RowError):
            failures += 1
            on_problem(f"[yellow]skipped:[/yellow] {row.message}")
            continue
        if skip_ids is not None and row["id"] in skip_ids:
            continue
        at = f"{where}:{line}: " if where and line is not None else ""
        task = row.get("task")
        if task is not None and task not in TASKS:  # scoring would drop it: say so now
            failures += 1
            on_problem(
                f"[yellow]{at}row {row['id']!r} skipped:[/yellow] unknown task {show(task)} "
                f"(known: {', '.join(TASKS)})"
            )
            continue
        pending.append((at, row))
        if len(pending) >= max(batch_size, 1):
            flush()
    flush()
    return written, failures


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def completed_ids(path: Path) -> set[str]:
    """Ids of the complete prediction lines in ``path``, rewriting it without a torn last line.

    Used by ``omnitrace predict --resume`` after an interrupted run: every line that parses as
    a prediction with an id is kept; anything after the last newline (a line cut by the
    interrupt) is dropped so appending continues on a clean line.
    """
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    keep: list[bytes] = []
    ids: set[str] = set()
    complete, _, _torn = raw.rpartition(b"\n")
    for line in complete.split(b"\n") if complete else []:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            ids.add(row["id"])
            keep.append(line)
    body = b"".join(line + b"\n" for line in keep)
    if body != raw:
        path.write_bytes(body)
    return ids
