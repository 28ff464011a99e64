from __future__ import annotations

import pytest

pytest.importorskip(
    "fastapi", reason='the server needs the serve extra: pip install "omnitrace-integrations[serve]"'
)
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

DOCS = [
    {"id": "doc1", "title": "Valbrook Works", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
    {"id": "doc2", "title": "Lighthouse", "text": "The lighthouse stands 42 metres tall."},
]
QUESTION = "How many people work there?"


def chat_body(**extra):
    return {"messages": [{"role": "user", "content": QUESTION}], "documents": DOCS, "max_tokens": 8, **extra}


@pytest.fixture()
def serve_app():
    """``serve_app(tracer, **settings)`` -> base URL of a uvicorn server on a free port (stopped after the test)."""
    from omnitrace_integrations.serving.app import create_app
    from omnitrace_integrations.serving.runner import ServerThread
    from omnitrace_integrations.serving.settings import ServeSettings

    threads: list[ServerThread] = []

    def start(tracer, **settings):
        server = ServerThread(create_app(tracer, ServeSettings(**settings)))
        threads.append(server)
        return server.start()

    yield start
    for server in threads:
        server.stop()


def pytest_pycollect_makeitem(collector, name, obj):
    """Run ``async def`` tests (the standard LangChain suite's too) with pytest-asyncio."""
    import inspect

    if inspect.iscoroutinefunction(obj) and not any(
        m.name == "asyncio" for m in getattr(obj, "pytestmark", [])
    ):
        pytest.mark.asyncio(obj)
