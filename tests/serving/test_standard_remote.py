"""LangChain's standard integration tests for ChatOmniTrace talking to ``omnitrace serve``.

The same suite as ``tests/integration_tests/test_standard.py`` (same declared capabilities, tools
and structured output included, and the same expected failures), with ``base_url`` pointing at a
real uvicorn server over the packaged SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import atexit
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from tests.integration_tests import test_standard as in_process

pytestmark = pytest.mark.model

_URL: list[str] = []


def _server_url() -> str:
    """One server per test process over the shared packaged model (stopped at exit)."""
    if not _URL:
        from omnitrace_integrations.langchain.engine import shared_tracer
        from omnitrace_integrations.serving.app import create_app
        from omnitrace_integrations.serving.runner import ServerThread
        from omnitrace_integrations.serving.settings import ServeSettings

        server = ServerThread(create_app(shared_tracer("smollm2-135m"), ServeSettings()))
        _URL.append(server.start())
        atexit.register(server.stop)
    return _URL[0]


class TestChatOmniTraceRemoteIntegration(in_process.TestChatOmniTraceIntegration):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # As in-process: a complete tool call or JSON object needs up to 128 tokens. Tool calling,
        # tool choice, structured output and JSON mode are served (docs/serving.md), so the
        # in-process declarations and expected failures apply unchanged.
        return {"base_url": _server_url(), "max_tokens": 128}
