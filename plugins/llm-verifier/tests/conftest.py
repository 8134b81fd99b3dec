"""Fixtures for the LLM verifier tests: runtimes closed after each test, and a fake endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from immunity.runtime import Runtime


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def make(**kwargs: Any) -> Runtime:
        kwargs.setdefault("store", ":memory:")
        rt = Runtime(**kwargs)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()
