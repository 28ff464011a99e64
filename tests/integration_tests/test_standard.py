"""LangChain's standard integration tests for ChatOmniTrace on the packaged SmolLM2-135M-Instruct.

Few tokens per call (``max_tokens=12``), one torch thread. Declared honestly: no tool calling,
no structured output / JSON mode, no image / audio / PDF input, no per-call model override.
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
        return {"model": "smollm2-135m", "max_tokens": 12}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
