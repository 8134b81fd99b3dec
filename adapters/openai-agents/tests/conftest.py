"""Fixtures for the OpenAI Agents adapter tests: a runtime on an in-memory store, plugins that
verify / intervene / recover on cue, and a check that no test leaves the SDK's default runner or
an agent patched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agents.run import get_default_agent_runner
from immunity import Intervention, Recovery, Runtime, Verdict, hookimpl


class Plugin:
    """A test plugin: ``verify(event, step)`` returns verdicts; ``intervene`` / ``recover`` decide."""

    def __init__(self, verify: Callable[..., Any] | None = None, intervene: Callable[..., Any] | None = None,
                 recover: Callable[..., Any] | None = None):
        self._verify, self._intervene, self._recover = verify, intervene, recover

    @hookimpl
    def immunity_verify(self, event: Any, step: Any) -> list[Verdict] | None:
        return self._verify(event, step) if self._verify else None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, verdicts: list[Verdict], event: Any) -> Intervention | None:
        return self._intervene(verdicts, event) if self._intervene else None

    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Any, verdicts: list[Verdict]) -> Recovery | None:
        return self._recover(event, verdicts) if self._recover else None


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def make(*plugins: Any, store: str = ":memory:", **kw: Any) -> Runtime:
        rt = Runtime(store=store, plugins=list(plugins), **kw)
        made.append(rt)
        return rt

    runner_before = get_default_agent_runner()
    yield make
    for rt in made:
        rt.close()  # uninstruments its adapters
    assert get_default_agent_runner() is runner_before, "a test left immunity's runner installed"


@pytest.fixture
def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


@pytest.fixture
def plugin() -> type[Plugin]:
    """The :class:`Plugin` class (tests build instances: ``plugin(verify=...)``)."""
    return Plugin
