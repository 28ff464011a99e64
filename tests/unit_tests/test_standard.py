"""LangChain's standard unit tests for ChatOmniTrace (no weights are loaded: construction is lazy)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from omnitrace_integrations.langchain import ChatOmniTrace


class TestChatOmniTraceUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatOmniTrace]:
        return ChatOmniTrace

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m"}

    @property
    def supports_model_override(self) -> bool:
        # The model is loaded once per instance; a per-call `model=` is refused with a clear error.
        return False
