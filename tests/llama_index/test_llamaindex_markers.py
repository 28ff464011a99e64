"""Markers follow sentences, never name an unknown source, and stream to the same text."""

from __future__ import annotations

import pytest
from llamaindex_fakes import FakeTracer

from omnitrace_core import FinalEvent, SentenceEvent, TextDelta, TextSource
from omnitrace_integrations.llama_index.markers import MarkerPlacer

SOURCES = [
    TextSource(id="a", text="Alpha makes filters. Alpha is old."),
    TextSource(id="b", text="Beta makes motors."),
    TextSource(id="c", text="Gamma makes pumps."),
]


def _script(plan):  # type: ignore[no-untyped-def]
    return FakeTracer(script=lambda srcs, q: plan)


def test_markers_follow_each_sentence_numbered_by_first_citation() -> None:
    plan = [("Beta makes motors.", ["b"]), ("Alpha makes filters.", ["a", "b"]), ("It rains.", [])]
    answer = _script(plan).generate(SOURCES, "q?")
    placer = MarkerPlacer({"a", "b", "c"})
    assert placer.mark(answer) == "Beta makes motors. [1] Alpha makes filters. [2][1] It rains."
    assert placer.numbers == {"b": 1, "a": 2}
    assert placer.sentence_markers == [[1], [2, 1], []]


def test_a_citation_of_an_unknown_source_gets_no_marker() -> None:
    answer = _script([("Beta makes motors.", ["b"]), ("Alpha.", ["a"])]).generate(SOURCES, "q?")
    placer = MarkerPlacer({"a"})  # "b" was not retrieved
    assert placer.mark(answer) == "Beta makes motors. Alpha. [1]"
    assert placer.dropped == ["b"] and placer.numbers == {"a": 1}


@pytest.mark.parametrize(
    "plan",
    [
        [("Beta makes motors.", ["b"]), ("Alpha makes 3.5 filters!", ["a"]), ("Why?", [])],
        [("One.", ["a"])],
        [("No terminator at the end", ["c"])],
    ],
)
def test_streamed_marked_text_equals_the_whole_answer(plan) -> None:  # type: ignore[no-untyped-def]
    tracer = _script(plan)
    whole = MarkerPlacer({"a", "b", "c"}).mark(tracer.generate(SOURCES, "q?"))
    placer = MarkerPlacer({"a", "b", "c"})
    pieces: list[str] = []
    for event in tracer.stream(SOURCES, "q?"):
        if isinstance(event, TextDelta):
            pieces.append(placer.feed_text(event.text))
        elif isinstance(event, SentenceEvent):
            pieces.append(placer.feed_sentence(event.sentence))
        elif isinstance(event, FinalEvent):
            pieces.append(placer.finish(event.answer.text))
    assert "".join(pieces) == whole
    assert placer.late_markers == 0
