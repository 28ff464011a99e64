"""LangChain's standard integration tests for ChatOmniTrace on the packaged SmolLM2-135M-Instruct.

Few tokens per call (``max_tokens=128``: a complete tool call or JSON object needs them), one torch thread. Tool calling, tool choice, structured output
and JSON mode are on (grammar-constrained: the ``structured`` extra). Declared honestly: no
image / audio / PDF input, no per-call model override.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_tests.integration_tests import ChatModelIntegrationTests

from omnitrace_integrations.langchain import ChatOmniTrace

pytestmark = pytest.mark.model
torch.set_num_threads(1)


class TestChatOmniTraceIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOmniTrace]:
        return ChatOmniTrace

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m", "max_tokens": 128}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def tool_choice_value(self) -> str:
        # A 135M model rarely decides to call a tool by itself; the standard tests that need a
        # call force one (the grammar then guarantees it parses).
        return "any"

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # Every expected failure below is deterministic (greedy decoding) on the reference CPU run,
    # but not strict: another CPU's float rounding can flip a greedy token and make one pass
    # (reported as XPASS), which must not turn CI red. A pass seen in CI means: remove the mark.
    _WRONG_ARGUMENT = pytest.mark.xfail(
        reason="SmolLM2-135M calls magic_function with input=100 when asked for 3: the grammar "
        "guarantees a valid call, not the right value; see docs/agents.md",
        strict=False,
    )

    @_WRONG_ARGUMENT
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @_WRONG_ARGUMENT
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(
        reason="with tool_choice='auto' SmolLM2-135M answers in text instead of calling the tool; "
        "forced choices ('any', a name) always call (test_tool_choice)",
        strict=False,
    )
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason="JSON mode allows any object: SmolLM2-135M writes back the JSON schema it was shown "
        "('{\"properties\": {\"setup\": ...') instead of a Joke, which fails validation",
        strict=False,
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
