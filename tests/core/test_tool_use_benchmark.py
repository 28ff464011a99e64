"""The tool-use benchmark's generator and scoring (benchmarks/tool_use.py): no model."""

from __future__ import annotations

from collections import Counter

from benchmarks.tool_use import TOOL_BY_NAME, make_prompts, score


def test_fifty_seeded_requests_ten_per_tool_with_their_values_in_the_text():
    rows = make_prompts()
    assert rows == make_prompts() and rows != make_prompts(seed=15)
    assert Counter(r["tool"] for r in rows) == {name: 10 for name in TOOL_BY_NAME}
    for r in rows:  # definite arguments: every value is spelled out in the request
        assert set(r["arguments"]) == set(TOOL_BY_NAME[r["tool"]].parameters["required"])
        for value in r["arguments"].values():
            assert str(value) in r["request"], (r["request"], value)


def test_scoring_strict_lenient_wrong_values_and_invalid_arguments():
    row = {"tool": "add", "arguments": {"a": 4, "b": 5}}
    right = score(row, '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5.0}}\n</tool_call>')
    assert (right["valid"], right["right_tool"], right["right_args"]) == (True, True, True)
    wrong = score(row, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert (wrong["valid"], wrong["right_tool"], wrong["right_args"]) == (True, True, False)
    invalid = score(row, '<tool_call>\n{"name": "add", "arguments": {"a": "4"}}\n</tool_call>')
    assert not invalid["valid"] and not invalid["lenient_valid"]
    fenced = score(row, '```json\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n```')
    assert not fenced["valid"] and fenced["lenient_right_args"] and fenced["call"] is None
    prose = score(row, "The sum is 9.")
    assert not any(v for k, v in prose.items() if k != "call")
