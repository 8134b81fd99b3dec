"""pytest plugin for immunity plugin authors (loaded automatically through the ``pytest11`` entry
point): fixtures for in-memory runtimes (``immunity_runtime``, ``make_runtime``) and fake runs."""

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
def make_runtime() -> Iterator[Any]:
    """A factory: ``make_runtime(plugins=[...], **options)`` returns a
    :class:`~immunity.runtime.Runtime` on an in-memory store (unless ``store=`` is given); every
    runtime it made is closed after the test."""
    from immunity.runtime import Runtime

    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("store", ":memory:")
        rt = Runtime(**kwargs)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def fake_run(immunity_runtime: Any) -> Any:
    """A factory: ``fake_run(task=..., domain=...)`` returns a :class:`~immunity.testing.FakeRun`."""
    from immunity.testing import FakeRun

    def make(**kw: Any) -> FakeRun:
        return FakeRun(immunity_runtime, **kw)

    return make


@pytest.fixture
def immunity_chaos() -> Iterator[Any]:
    """A factory: ``immunity_chaos(experiment)`` (an :class:`~immunity.chaos.Experiment`, a path to
    its TOML file or a dict) switches the experiment on and returns the active
    :class:`~immunity.chaos.Chaos` (wrap tools with ``.tool``/``.tools``, model callables with
    ``.model``; ``.injections`` says what was injected); it is switched off after the test."""
    from immunity import chaos

    def start(experiment: Any) -> Any:
        cm = chaos.activate(experiment)
        active = cm.__enter__()
        started.append(cm)
        return active

    started: list[Any] = []
    yield start
    for cm in reversed(started):
        cm.__exit__(None, None, None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "immunity(**kwargs): options for the immunity_runtime fixture")
