"""The grounding verdict (framework-free) and the GroundingCheck runnable's three modes."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage

from omnitrace_core import TextSource
from omnitrace_core.grounding import content_words
from omnitrace_integrations.langchain import (
    ChatOmniTrace,
    GroundingCheck,
    GroundingThresholds,
    UngroundedAnswerError,
    assess_grounding,
)
from tests.langchain.conftest import FakeTracer, build_answer

SOURCES = [
    TextSource(
        id="town", text="Casethepel Harbor is a town of 21803 residents. Its mayor is Fiora Moreau."
    ),
    TextSource(id="firm", text="Valbrook Works makes water filters and employs 405 people."),
]
SUPPORTED = (
    "Fiora Moreau is mayor of Casethepel Harbor, home to 21803 residents.",
    [("town", 1.0)],
)
UNSUPPORTED = (
    "Casethepel Harbor is known for its glass museum and jazz festival.",
    [("town", 1.0)],
)


def test_content_words() -> None:
    assert content_words("The mayor of Casethepel Harbor is Fiora Moreau.") == {
        "mayor",
        "casethepel",
        "harbor",
        "fiora",
        "moreau",
    }
    assert "405" in content_words("It employs 405 people.")


def test_verdict_labels_supported_and_unsupported() -> None:
    verdict = assess_grounding(build_answer(SOURCES, [SUPPORTED, UNSUPPORTED]))
    assert [s.label for s in verdict.sentences] == ["supported", "unsupported"]
    assert verdict.sentences[0].best_source == "town"
    assert not verdict.grounded and [s.index for s in verdict.unsupported] == [1]
    assert 0 <= verdict.sentences[1].score < verdict.sentences[0].score <= 1


def test_uncited_sentence_is_unsupported_and_short_ones_pass() -> None:
    verdict = assess_grounding(
        build_answer(SOURCES, [("Fiora Moreau leads Casethepel Harbor.", []), ("Sure.", [])])
    )
    assert [s.label for s in verdict.sentences] == ["unsupported", "supported"]


def test_thresholds_are_validated_and_configurable() -> None:
    with pytest.raises(ValueError, match="weak_min"):
        GroundingThresholds(weak_min=0.8, supported_min=0.5)
    lenient = GroundingThresholds(weak_min=0.0, supported_min=0.0)
    assert assess_grounding(build_answer(SOURCES, [UNSUPPORTED]), lenient).grounded


def _llm(script: list[Any]) -> tuple[ChatOmniTrace, FakeTracer]:
    fake = FakeTracer(script)
    return ChatOmniTrace(tracer=fake), fake


def test_annotate_mode_on_a_message() -> None:
    llm, _ = _llm([[SUPPORTED, UNSUPPORTED]])
    msg = llm.invoke("q", sources=SOURCES)
    out = GroundingCheck().invoke(msg)
    g = out.response_metadata["grounding"]
    assert g["grounded"] is False and g["unsupported"] == [1] and g["attempts"] == 1
    assert out.content == msg.content


def test_raise_mode_lists_the_sentences() -> None:
    llm, _ = _llm([[SUPPORTED, UNSUPPORTED]])
    with pytest.raises(UngroundedAnswerError) as info:
        GroundingCheck(llm=llm, mode="raise").invoke({"question": "q", "sources": SOURCES})
    assert info.value.sentences == [UNSUPPORTED[0]]
    assert "glass museum" in str(info.value)
    assert info.value.message.response_metadata["grounding"]["grounded"] is False


def test_retry_mode_asks_again_naming_the_sentences_and_keeps_the_best() -> None:
    llm, fake = _llm([[SUPPORTED, UNSUPPORTED], [SUPPORTED]])
    out = GroundingCheck(llm=llm, mode="retry", max_retries=2).invoke(
        {"question": "Who leads it?", "sources": SOURCES}
    )
    g = out.response_metadata["grounding"]
    assert g["grounded"] is True and g["attempts"] == 2
    assert out.text == SUPPORTED[0]
    follow_up = fake.calls[1]["question"]
    assert "glass museum" in follow_up and "Who leads it?" in follow_up


def test_retry_is_bounded_and_returns_the_best_attempt() -> None:
    llm, fake = _llm([[SUPPORTED, UNSUPPORTED], [UNSUPPORTED, UNSUPPORTED], [UNSUPPORTED]])
    out = GroundingCheck(llm=llm, mode="retry", max_retries=2).invoke(
        {"question": "q", "sources": SOURCES}
    )
    assert len(fake.calls) == 3
    g = out.response_metadata["grounding"]
    assert (
        g["attempts"] == 3 and len(g["unsupported"]) == 1
    )  # a tie on count: the higher score wins
    assert out.text.startswith(SUPPORTED[0])


async def test_async_retry() -> None:
    llm, _ = _llm([[UNSUPPORTED], [SUPPORTED]])
    out = await GroundingCheck(llm=llm, mode="retry").ainvoke({"question": "q", "sources": SOURCES})
    assert out.response_metadata["grounding"]["grounded"] is True


def test_bad_use_is_explained() -> None:
    with pytest.raises(ValueError, match="needs llm"):
        GroundingCheck(mode="retry")
    with pytest.raises(ValueError, match="no OmniTrace attribution"):
        GroundingCheck().invoke(AIMessage("plain"))
    with pytest.raises(TypeError, match="expects an AIMessage"):
        GroundingCheck().invoke("a string")


def test_attribute_message_checks_a_given_answer() -> None:
    llm, fake = _llm([[SUPPORTED, UNSUPPORTED]])
    msg = llm.attribute_message("q", SUPPORTED[0] + " " + UNSUPPORTED[0], sources=SOURCES)
    assert fake.calls[0]["response"].startswith("Fiora")
    with pytest.raises(UngroundedAnswerError):
        GroundingCheck(mode="raise").invoke(msg)
