"""Fixtures of the reliability suite: a fresh tiny tracer per module where state could leak."""

from __future__ import annotations

import pytest

from omnitrace_core import TextSource


@pytest.fixture()
def good_sources():
    return [
        TextSource(id="doc1", title="Valbrook Works", text="Valbrook Works was founded in 1905 in Cedar Falls."),
        TextSource(id="doc2", text="The lighthouse stands 42 metres tall."),
    ]


def named(exc: BaseException, *fragments: str) -> None:
    """Assert an error message names every fragment (the field, the value...)."""
    message = str(exc)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not named in: {message}"
