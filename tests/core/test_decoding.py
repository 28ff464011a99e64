"""Stop strings and grammar-constrained decoding in the tracer (tiny random model)."""

from __future__ import annotations

import json
import re

import pytest

from omnitrace_core import FinalEvent, InvalidInputError, SentenceEvent, TextDelta
from omnitrace_core.decoding import Grammar, StopMatcher, validate_stops

llguidance = pytest.importorskip("llguidance", reason="constrained decoding needs the structured extra")


def test_validate_stops_names_the_problem():
    assert validate_stops(None) == []
    assert validate_stops("Observation:") == ["Observation:"]
    assert validate_stops(["a", "a", "b"]) == ["a", "b"]
    with pytest.raises(InvalidInputError, match=r"stop\[1\]=.*empty string"):
        validate_stops(["x", ""])
    with pytest.raises(InvalidInputError, match=r"stop\[0\]=3: must be a string, got int"):
        validate_stops([3])
    with pytest.raises(InvalidInputError, match="at most 16"):
        validate_stops([str(i) for i in range(17)])


def test_stop_matcher_holds_back_a_possible_stop_prefix():
    m = StopMatcher(["Observation:", "\n\n"])
    assert m.find("Thought: x\nObservation: y") == 11
    assert m.find("nothing here") is None
    assert m.safe_end("Thought: x Obser") == len("Thought: x ")
    assert m.safe_end("ends with newline\n") == len("ends with newline")
    assert m.safe_end("plain") == 5


def _run(tracer, sources, **kw):
    events = list(tracer.stream(sources, "When was Valbrook Works founded?", max_new_tokens=24, **kw))
    answer = next(e.answer for e in events if isinstance(e, FinalEvent))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    sentences = [e.sentence for e in events if isinstance(e, SentenceEvent)]
    return answer, streamed, sentences


def test_stop_string_trims_the_answer_and_reports_stop(tiny_tracer, sources):
    plain, _, _ = _run(tiny_tracer, sources)
    assert len(plain.text) > 8
    cut = len(plain.text) // 2
    stop = plain.text[cut : cut + 3]
    at = plain.text.find(stop)
    answer, streamed, sentences = _run(tiny_tracer, sources, stop=[stop])
    assert answer.text == plain.text[:at]
    assert streamed == answer.text  # the stop string never reached the stream
    assert answer.finish_reason == "stop"
    assert plain.finish_reason == "length"
    # citations cover the kept text only, and stream and result agree
    assert all(s.char_end <= len(answer.text) for s in answer.sentences)
    assert [s.text for s in sentences] == [s.text for s in answer.sentences]
    assert all(t.char_end <= len(answer.text) for t in answer.tokens)
    # the same through generate()
    again = tiny_tracer.generate(sources, "When was Valbrook Works founded?", max_new_tokens=24, stop=stop)
    assert again.text == answer.text and again.finish_reason == "stop"


def test_stop_validation_in_the_tracer(tiny_tracer, sources):
    with pytest.raises(InvalidInputError, match="empty string"):
        tiny_tracer.generate(sources, "q?", stop=[""])


def test_grammar_constrains_a_traced_answer(tiny_tracer, sources):
    schema = {
        "type": "object",
        "properties": {"year": {"type": "integer", "minimum": 1000, "maximum": 2999}, "ok": {"type": "boolean"}},
        "required": ["year", "ok"],
        "additionalProperties": False,
    }
    answer = tiny_tracer.generate(
        sources, "When?", max_new_tokens=40, grammar=Grammar.json_schema(schema)
    )
    data = json.loads(answer.text)  # a random model, yet always valid
    assert set(data) == {"year", "ok"} and isinstance(data["year"], int)
    assert answer.finish_reason == "stop"
    assert answer.config["generation"]["no_repeat_ngram_size"] == 3  # config untouched


def test_grammar_regex_and_invalid_grammar(tiny_tracer, sources):
    answer = tiny_tracer.generate(sources, "When?", max_new_tokens=12, grammar=Grammar.regex(r"(yes|no)"))
    assert re.fullmatch(r"yes|no", answer.text)
    with pytest.raises(InvalidInputError, match="grammar"):
        tiny_tracer.generate(sources, "When?", grammar=Grammar.lark("start: ((("))
    with pytest.raises(InvalidInputError, match=r"must be an omnitrace_core\.Grammar"):
        tiny_tracer.generate(sources, "When?", grammar={"type": "object"})


def test_parse_tool_calls_text_calls_repeats_and_cut_calls():
    from omnitrace_core.tools import parse_tool_calls

    call = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    parsed = parse_tool_calls(f"{call}\n{call}")
    assert [(c.name, c.arguments) for c in parsed.calls] == [("f", {"x": 1})]  # a repeat counts once
    assert parsed.text == "" and not parsed.invalid
    cut = parse_tool_calls('<tool_call>\n{"name": "f", "argu')
    assert not cut.calls and cut.text == "" and "token limit" in cut.invalid[0][1]
    # cut inside the opening tag: under the call grammar a reply starting with '<' is a call
    tag = parse_tool_calls("<tool_")
    assert not tag.calls and tag.text == "" and tag.invalid == [("<tool_", tag.invalid[0][1])]
    assert parse_tool_calls("Plain answer.").text == "Plain answer."


def test_response_format_constraint_reads_openai_formats():
    from omnitrace_core.decoding import close_objects, json_instruction, response_format_constraint

    assert response_format_constraint({"type": "text"}) is None
    grammar, instruction = response_format_constraint({"type": "json_object"})
    assert json.loads(grammar.text) == {"type": "object"} and instruction == json_instruction(None)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    grammar, instruction = response_format_constraint(
        {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    )
    assert json.loads(grammar.text) == close_objects(schema) and instruction == json_instruction(schema)
    for bad, named in [
        ({"type": "xml"}, "'xml'"),
        ({"type": "json_schema", "json_schema": {"name": "n"}}, "schema"),
        ("json", "response_format must be an object"),
    ]:
        with pytest.raises(InvalidInputError, match=re.escape(named)):
            response_format_constraint(bad)


def test_chat_tool_choice_decodes_under_the_call_grammar(tiny_tracer):
    pytest.importorskip("llguidance")
    from omnitrace_core.tools import ToolSpec, parse_tool_calls

    spec = ToolSpec("shout", "Shout.", {"type": "object", "properties": {"w": {"enum": ["hi", "yo"]}}, "required": ["w"]})
    turns = [{"role": "user", "content": "Say hi"}]
    events = list(tiny_tracer.chat(turns, tools=[spec], tool_choice="required", max_new_tokens=60))
    final = events[-1]
    assert isinstance(final, FinalEvent)
    calls = parse_tool_calls(final.answer.text).calls
    assert calls and all(c.name == "shout" and c.arguments["w"] in ("hi", "yo") for c in calls)
    assert calls[0].openai()["function"]["arguments"] == json.dumps(calls[0].arguments)
    with pytest.raises(InvalidInputError, match="not both"):
        list(tiny_tracer.chat(turns, tools=[spec], tool_choice="shout", grammar=Grammar.regex("x")))
    with pytest.raises(InvalidInputError, match="'fly'"):
        list(tiny_tracer.chat(turns, tools=[spec], tool_choice={"type": "function", "function": {"name": "fly"}}))
