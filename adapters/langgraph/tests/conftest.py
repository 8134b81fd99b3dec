"""Fixtures for the LangGraph adapter tests: runtimes on an in-memory store, graphs built on the
real framework with the scripted model, and a check that nothing stays patched after a test."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from immunity_langgraph import patches
from immunity_langgraph.demo import build_graph
from langchain_core.tools import tool


@pytest.fixture(autouse=True)
def _nothing_left_patched() -> Iterator[None]:
    assert not patches.installed(), "a previous test left langchain-core patched"
    yield
    assert not patches.installed(), "this test left langchain-core patched (close the runtime or uninstrument)"


@pytest.fixture
def tool_graph() -> Callable[..., Any]:
    """``tool_graph(model, tools, checkpointer=None)``: a StateGraph agent <-> ToolNode."""
    return build_graph


@pytest.fixture
def react_agent() -> Callable[..., Any]:
    """``react_agent(model, tools, checkpointer=None)``: LangGraph's prebuilt create_react_agent."""

    def make(model: Any, tools: list[Any], checkpointer: Any = None) -> Any:
        from langgraph.prebuilt import create_react_agent

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_react_agent(model, tools, checkpointer=checkpointer)

    return make


class Calls:
    """Counts the real executions of the test tools."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.log if n == name)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def weather_tools(calls: Calls) -> list[Any]:
    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.log.append(("get_weather", {"city": city}))
        return f"Sunny, 21C in {city}"

    @tool
    def delete_records(table: str) -> str:
        """Delete every record of a table."""
        calls.log.append(("delete_records", {"table": table}))
        return f"deleted all rows of {table}"

    return [get_weather, delete_records]
