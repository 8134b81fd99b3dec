"""pytest plugin for immunity plugin authors (loaded automatically through the ``pytest11`` entry
point): fixtures for an in-memory runtime and fake runs, offline and isolated from ``$HOME``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def immunity_runtime(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A :class:`~immunity.runtime.Runtime` on an in-memory store with strict plugin loading.

    Parametrise through a marker: ``@pytest.mark.immunity(domain="coding", plugins=[my_plugin])``.
    """
    from immunity.runtime import Runtime

    marker = request.node.get_closest_marker("immunity")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    kwargs.setdefault("store", ":memory:")
    rt = Runtime(**kwargs)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def fake_run(immunity_runtime: Any) -> Any:
    """A factory: ``fake_run(task=..., domain=...)`` returns a :class:`~immunity.testing.FakeRun`."""
    from immunity.testing import FakeRun

    def make(**kw: Any) -> FakeRun:
        return FakeRun(immunity_runtime, **kw)

    return make


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "immunity(**kwargs): options for the immunity_runtime fixture")
