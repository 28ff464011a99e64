"""The local row engine: order kept, failures recorded per row, the run goes on."""

from __future__ import annotations

import pytest

from omnitrace_core.engines import map_rows
from omnitrace_core.errors import UnknownNameError


def _make_worker():
    def work(row):
        if row["id"] == "bad":
            raise ValueError("row is broken")
        return row["x"] * 2

    return work


def test_local_engine_keeps_order_and_records_failures():
    rows = [{"id": "a", "x": 1}, {"id": "bad", "x": 0}, {"id": "c", "x": 3}]
    outcomes = list(map_rows(rows, _make_worker))
    assert [o.row_id for o in outcomes] == ["a", "bad", "c"]
    assert [o.result for o in outcomes] == [2, None, 6]
    assert outcomes[1].error == "ValueError: row is broken"


def test_unknown_engine_is_named():
    with pytest.raises(UnknownNameError, match="unknown engine 'spark'"):
        map_rows([{"id": "a"}], _make_worker, engine="spark")


def test_no_rows_builds_no_worker():
    built = []
    assert list(map_rows([], lambda: built.append(1) or (lambda r: r))) == []
    assert built == []
