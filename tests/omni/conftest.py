"""Session fixtures of the omni tests (builders in ``omni_fixtures``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from omni_fixtures import FAMILIES, Family, build_model, build_processor


@pytest.fixture(scope="session")
def family() -> Callable[[str], Family]:
    """``family(name)``: the tiny model and processor of a family, built once per session."""
    cache: dict[str, Family] = {}

    def get(name: str) -> Family:
        if name not in cache:
            spec = FAMILIES[name]
            processor = build_processor(spec)
            cache[name] = Family(spec, processor, build_model(spec, processor.tokenizer))
        return cache[name]

    return get
