"""Fixtures for the LlamaIndex adapter tests: an in-memory runtime, and a check that every test
leaves LlamaIndex's global instrumentation exactly as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _dispatcher_left_clean() -> Iterator[None]:
    from llama_index.core.instrumentation import get_dispatcher

    root = get_dispatcher()
    spans, events = list(root.span_handlers), list(root.event_handlers)
    yield
    leftover = [h for h in root.span_handlers if h not in spans] + [h for h in root.event_handlers if h not in events]
    for h in leftover:  # clean up so one failure does not cascade, then fail the test
        if h in root.span_handlers:
            root.span_handlers.remove(h)
        if h in root.event_handlers:
            root.event_handlers.remove(h)
    assert not leftover, f"handlers left on the root dispatcher: {leftover}"



@pytest.fixture
def rt(make_runtime: Any) -> Any:
    return make_runtime()
