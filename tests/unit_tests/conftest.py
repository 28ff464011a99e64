"""Run the ``async def`` standard tests with pytest-asyncio (the project uses its strict mode)."""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import pytest

# Without the langchain extra and langchain-tests, these tests are not collected at all.
collect_ignore_glob = (
    []
    if importlib.util.find_spec("langchain_tests") and importlib.util.find_spec("langchain_core")
    else ["test_*.py"]
)


def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> None:
    if inspect.iscoroutinefunction(obj) and not any(
        m.name == "asyncio" for m in getattr(obj, "pytestmark", [])
    ):
        pytest.mark.asyncio(obj)
