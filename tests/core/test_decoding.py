"""Stop strings and grammar-constrained decoding in the tracer (tiny random model)."""

from __future__ import annotations

import json
import re

import pytest
import torch

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


# -- the repetition guard under a grammar ------------------------------------------------------
class _Vocab:
    """A fake tokenizer: token id -> text."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


_PIECES = ['{"', "joke", '":"', "the", " cat", " was", '","', "x", '"}', "\\", '"', ",", "<eos>", '{"a":"', "b"]
_ID = {p: i for i, p in enumerate(_PIECES)}


def _guard_scores(guard, written: list[str], allowed: list[str] | None = None):
    import torch

    prompt = [_ID["<eos>"]] * 2
    ids = torch.tensor([prompt + [_ID[p] for p in written]])
    scores = torch.zeros(1, len(_PIECES))
    if allowed is not None:
        scores[:] = float("-inf")
        scores[0, [_ID[p] for p in allowed]] = 0.0
    guard(ids[:, : len(prompt)], scores.clone())  # the first call sees the prompt only
    out = guard(ids, scores.clone())
    return {p for p in _PIECES if out[0, _ID[p]] == float("-inf")}


def test_string_repeat_guard_bans_a_repeated_ngram_inside_a_string_only():
    from omnitrace_core.decoding import StringRepeatGuard

    vocab = _Vocab(_PIECES)
    loop = ['{"', "joke", '":"', "the", " cat", " was", "the", " cat"]
    assert _guard_scores(StringRepeatGuard(vocab, 3), loop) == {" was"}  # "the cat was" again
    # the same words outside a string (keys, structure) never count, and a string can close
    assert _guard_scores(StringRepeatGuard(vocab, 3), ['{"', "joke", '":"', "joke"]) == set()
    # a new string starts afresh: its first tokens have no (n-1)-gram yet
    two = ['{"', "joke", '":"', "the", " cat", '","', "joke", '":"', "the"]
    assert _guard_scores(StringRepeatGuard(vocab, 3), two) == set()
    # ... but an n-gram of an earlier string's content is banned in a later one
    assert _guard_scores(StringRepeatGuard(vocab, 3), [*two, " cat"]) == set()
    earlier = ['{"', "joke", '":"', "the", " cat", " was", '","', "joke", '":"', "the", " cat"]
    assert _guard_scores(StringRepeatGuard(vocab, 3), earlier) == {" was"}
    # after the closing quote the text is outside any string: nothing is banned
    assert _guard_scores(StringRepeatGuard(vocab, 3), [*loop, '"}']) == set()


def test_string_repeat_guard_follows_escapes_and_never_leaves_nothing_allowed():
    from omnitrace_core.decoding import StringRepeatGuard

    vocab = _Vocab(_PIECES)
    # an escaped quote does not end the string: the repeat is still inside it
    escaped = ['{"a":"', "b", "\\", '"', "b", "\\"]
    assert _guard_scores(StringRepeatGuard(vocab, 3), escaped) == {'"'}
    loop = ['{"', "joke", '":"', "the", " cat", " was", "the", " cat"]
    # the grammar allows only the banned token: the guard steps aside rather than fail
    assert _guard_scores(StringRepeatGuard(vocab, 3), loop, allowed=[" was"]) == {
        p for p in _PIECES if p != " was"
    }
    assert _guard_scores(StringRepeatGuard(vocab, 3), loop, allowed=[" was", '"}']) == {
        p for p in _PIECES if p != '"}'
    }
    with pytest.raises(InvalidInputError, match="size=1"):
        StringRepeatGuard(vocab, 1)


def test_tracer_runs_the_guard_under_json_grammars_only(tiny_tracer):
    from omnitrace_core import TracerConfig
    from omnitrace_core.config import GenerationConfig
    from omnitrace_core.decoding import AnswerRepeatGuard, GrammarLogitsProcessor, StringRepeatGuard

    def processors(cfg, **kw):
        gen = tiny_tracer._generation_kwargs(cfg, kw)
        assert gen["no_repeat_ngram_size"] == 0 or "grammar" not in kw
        return [type(p) for p in gen.get("logits_processor") or []]

    cfg = TracerConfig()
    schema = Grammar.json_schema({"type": "object"})
    assert processors(cfg, grammar=schema) == [GrammarLogitsProcessor, StringRepeatGuard]
    assert processors(cfg, grammar=Grammar.lark("start: %json {}")) == [GrammarLogitsProcessor, StringRepeatGuard]
    assert processors(cfg, grammar=Grammar.regex("(yes|no)")) == [GrammarLogitsProcessor]
    off = cfg.model_copy(update={"generation": GenerationConfig(no_repeat_ngram_size=0)})
    assert processors(off, grammar=schema) == [GrammarLogitsProcessor]
    assert processors(cfg, grammar=schema, no_repeat_ngram_size=0) == [GrammarLogitsProcessor]
    # no grammar: the n-gram guard counts the answer only (transformers' would count the prompt)
    assert processors(cfg) == [AnswerRepeatGuard]
    assert processors(off) == [] and processors(cfg, no_repeat_ngram_size=0) == []


def test_guarded_json_string_has_no_repeated_content_ngram(tiny_tracer, sources):
    schema = {
        "type": "object",
        "properties": {"story": {"type": "string"}},
        "required": ["story"],
        "additionalProperties": False,
    }
    tok = tiny_tracer.tokenizer

    def content_trigrams(text: str) -> list[tuple[int, ...]]:
        assert text.startswith('{"story":"')
        ids = tok(text[len('{"story":"') :].split('"')[0], add_special_tokens=False)["input_ids"]
        return [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]

    grammar = Grammar.json_schema(schema)
    answer = tiny_tracer.generate(sources, "Tell.", max_new_tokens=60, grammar=grammar)
    trigrams = content_trigrams(answer.text)
    assert trigrams and len(trigrams) == len(set(trigrams))
    # the plain (untraced) path runs the same processors
    events = list(tiny_tracer.chat([{"role": "user", "content": "Tell."}], max_new_tokens=60, grammar=grammar))
    plain = "".join(e.text for e in events if isinstance(e, TextDelta))
    trigrams = content_trigrams(plain)
    assert trigrams and len(trigrams) == len(set(trigrams))


def test_tool_tags_that_are_added_tokens_can_be_written_as_one_token():
    """Qwen2.5 has ``<tool_call>`` as one added token: llguidance proposes it when the tag is
    forced but refused it on consumption (found on the real qwen2.5-0.5b); the grammar now also
    matches the token itself, and the spelled-out tag still works."""
    from omnitrace_core.decoding import GrammarLogitsProcessor, bind_added_tokens
    from omnitrace_core.tools import ToolSpec, tool_call_grammar
    from tests.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    open_id, close_id = tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    spec = ToolSpec("f", "", {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
    grammar = tool_call_grammar([spec], "required", parallel=False)
    bound = bind_added_tokens(grammar.text, tok)
    assert f'("<tool_call>" | <[{open_id}]>)' in bound and f'("</tool_call>" | <[{close_id}]>)' in bound
    assert bind_added_tokens('x: "plain"', tok) == 'x: "plain"'
    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    body = ids('\n{"name":"f","arguments":{"x":1}}\n')
    spelled = [*ids("<"), *ids("tool_call>"), *body, *ids("</"), *ids("tool_call>")]
    assert open_id not in spelled and close_id not in spelled
    for sequence in ([open_id, *body, close_id], spelled):
        proc = GrammarLogitsProcessor(tok, grammar, len(tok))
        for token in sequence:
            assert proc.matcher.consume_token(token), proc.matcher.get_error()
        assert proc.matcher.is_accepting()
    # without the binding llguidance refuses the added token it would itself propose
    import llguidance

    from omnitrace_core.decoding import _ll_tokenizer, grammar_source

    raw = llguidance.LLMatcher(_ll_tokenizer(tok, len(tok)), grammar_source(grammar), log_level=0)
    assert not raw.consume_token(open_id)


def test_answer_repeat_guard_bans_repeats_of_the_answer_not_of_the_prompt():
    from omnitrace_core.decoding import AnswerRepeatGuard

    guard = AnswerRepeatGuard(2)
    vocab = 6

    def banned(ids):
        out = guard(torch.tensor(ids), torch.zeros(len(ids), vocab))
        return [sorted(int(i) for i in torch.nonzero(row == float("-inf"))) for row in out]

    # prompt "1 2 3 1" (two rows of a batch); the answer may copy "1 2" from the prompt
    assert banned([[1, 2, 3, 1], [1, 2, 3, 1]]) == [[], []]
    assert banned([[1, 2, 3, 1, 1], [1, 2, 3, 1, 4]]) == [[], []]
    assert banned([[1, 2, 3, 1, 1, 2], [1, 2, 3, 1, 4, 5]]) == [[], []]
    # row 0 answered "1 2 1": the bigram "1 2" is in its answer, so 2 is banned; row 1 apart
    assert banned([[1, 2, 3, 1, 1, 2, 1], [1, 2, 3, 1, 4, 5, 4]]) == [[2], [5]]
    # a new generate call (the sequence did not grow by one) starts afresh
    assert banned([[1, 2, 1]]) == [[]]
    one = AnswerRepeatGuard(1)
    one(torch.tensor([[3, 3]]), torch.zeros(1, vocab))
    assert one(torch.tensor([[3, 3, 4]]), torch.zeros(1, vocab))[0, 4] == float("-inf")  # size 1: no token twice
    for bad in (0, 1.5, True):
        with pytest.raises(InvalidInputError, match="AnswerRepeatGuard"):
            AnswerRepeatGuard(bad)


@pytest.mark.model
def test_an_answer_can_copy_a_source_verbatim_on_the_packaged_model(default_tracer):
    # transformers' no_repeat_ngram_size=3 counts the prompt: this answer said 43, not 42
    from omnitrace_core.cli import DEMO_QUESTION, DEMO_SOURCES

    answer = default_tracer.generate(DEMO_SOURCES, DEMO_QUESTION, max_new_tokens=24)
    assert "42 meters" in answer.text or "42 metres" in answer.text
    assert "Veltra lighthouse" in answer.text


def test_an_auto_turn_may_write_a_bound_tools_call_as_bare_or_fenced_json():
    from omnitrace_core.tools import parse_tool_calls

    fenced = '```json\n{\n  "name": "get_population",\n  "arguments": {"city": "Oslo"}\n}\n```'
    for reply in (fenced, ' {"name": "get_population", "arguments": "{\\"city\\": \\"Oslo\\"}"} '):
        parsed = parse_tool_calls(reply, ["get_population"])
        assert [(c.name, c.arguments) for c in parsed.calls] == [("get_population", {"city": "Oslo"})]
        assert parsed.text == "" and not parsed.invalid
        assert not parse_tool_calls(reply).calls  # without bound names it stays text
    # not a bound tool, not the whole reply, or not a call: text
    for reply in (fenced.replace("get_population", "rm_rf"), "Sure: " + fenced, '{"city": "Oslo"}', "```json\n{bad}\n```"):
        parsed = parse_tool_calls(reply, ["get_population"])
        assert not parsed.calls and parsed.text == reply.strip()
