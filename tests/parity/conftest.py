"""Fixtures for the parity tests: CrewAI's process-global hooks and event handlers are cleaned up
after each test (as in the CrewAI adapter's own tests), so one framework's test never sees another's
crew."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_crewai_globals() -> Iterator[None]:
    if importlib.util.find_spec("crewai") is None:
        yield
        return
    from immunity_crewai.testing import restored_crewai_globals

    with restored_crewai_globals():
        yield
