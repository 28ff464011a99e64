"""Row engines: map a per-row function over benchmark rows, keeping order and recording failures.

An engine takes ``make_worker`` (called once per worker: it loads the model) and yields one
:class:`RowOutcome` per row, in row order. A row whose worker call raises becomes an outcome
with ``error`` set; the run goes on. ``local`` runs in this process; other engines (``ray``)
register themselves in :data:`ENGINES` and must produce the same outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from omnitrace_core.errors import UnknownNameError

Row = dict[str, Any]
Worker = Callable[[Row], Any]


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one row: its result, or the error that stopped it."""

    index: int
    row_id: str
    result: Any = None
    error: str | None = None


class Engine(Protocol):
    def __call__(
        self, rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int, address: str | None
    ) -> Iterator[RowOutcome]: ...


def _call(worker: Worker, index: int, row: Row) -> RowOutcome:
    row_id = str(row.get("id", index))
    try:
        return RowOutcome(index=index, row_id=row_id, result=worker(row))
    except Exception as exc:  # a crashing row is recorded, never the whole run
        return RowOutcome(index=index, row_id=row_id, error=f"{type(exc).__name__}: {exc}")


def local_engine(
    rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int = 1, address: str | None = None
) -> Iterator[RowOutcome]:
    """Run every row in this process with one worker (``workers`` and ``address`` are ignored)."""
    if not rows:
        return
    worker = make_worker()
    for index, row in enumerate(rows):
        yield _call(worker, index, row)


ENGINES: dict[str, Engine] = {"local": local_engine}


def map_rows(
    rows: Sequence[Row],
    make_worker: Callable[[], Worker],
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
) -> Iterator[RowOutcome]:
    """Outcomes of ``make_worker()(row)`` for every row, in row order."""
    if engine not in ENGINES:
        raise UnknownNameError(f"unknown engine {engine!r}; available: {', '.join(sorted(ENGINES))}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return ENGINES[engine](rows, make_worker, workers=workers, address=address)
