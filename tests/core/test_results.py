"""Result objects: frozen, JSON round-trip lossless, prediction format."""

from __future__ import annotations

import pytest

from omnitrace_core.results import TracedAnswer
from tests.factories import make_answer, make_citation


def _answer() -> TracedAnswer:
    cite = make_citation("doc1", 0.9, "Hello there.", title="T", metadata={"k": [1, 2]})
    return make_answer(
        [("Hi.", [cite], {"token_end": 2, "source_mass": {"doc1": 0.9, "doc2": 0.1}})], model="m"
    )


def test_json_round_trip_is_lossless():
    a = _answer()
    assert TracedAnswer.model_validate_json(a.model_dump_json()) == a


def test_results_are_frozen():
    with pytest.raises(Exception, match="frozen"):
        _answer().text = "x"  # type: ignore[misc]


def test_prediction_row_format():
    row = _answer().to_prediction("r1")
    assert row == {
        "id": "r1",
        "text": "Hi.",
        "sentences": [
            {
                "text": "Hi.",
                "start": 0,
                "end": 3,
                "citations": [{"source_id": "doc1", "score": 0.9}],
                "source_mass": {"doc1": 0.9, "doc2": 0.1},
                "grounded": True,
            }
        ],
    }


def test_views():
    a = _answer()
    assert a.cited_source_ids == ["doc1"]
    assert a.source_view() == pytest.approx({"doc1": 0.9, "doc2": 0.1})
