"""Fixtures for the CrewAI adapter tests: real crews, a scripted model, an in-memory store.

The root conftest points HOME and CREWAI_STORAGE_DIR to a temporary directory and switches CrewAI's
telemetry, tracing and version check off, so nothing here touches the network or ``$HOME``.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def clean_crewai_globals() -> Iterator[None]:
    """CrewAI's process-global hooks and handlers are put back after each test."""
    from immunity_crewai.testing import restored_crewai_globals

    with restored_crewai_globals():
        yield


@pytest.fixture
def kit() -> SimpleNamespace:
    """Tools and a crew builder. Every tool counts its real executions in ``calls``."""
    from crewai import Agent, Crew, Task
    from crewai.tools import BaseTool

    calls: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, **kw: Any) -> None:
        calls.setdefault(name, []).append(kw)

    class Lookup(BaseTool):
        name: str = "lookup"
        description: str = "Look up the value stored under a key."

        def _run(self, key: str) -> str:
            record("lookup", key=key)
            if key.startswith("bad"):
                raise KeyError(f"no such key {key!r}")
            return f"value-of-{key}"

    class DeleteRecords(BaseTool):
        name: str = "delete_records"
        description: str = "Delete every record of a table."

        def _run(self, table: str) -> str:
            record("delete_records", table=table)
            return f"deleted all rows of {table}"

    class SendEmail(BaseTool):
        name: str = "send_email"
        description: str = "Send an email."

        def _run(self, to: str, body: str) -> str:
            record("send_email", to=to, body=body)
            return f"sent to {to} (message #{len(calls['send_email'])})"

    class Flaky(BaseTool):
        name: str = "flaky"
        description: str = "A service that is down."

        def _run(self, attempt: int) -> str:
            record("flaky", attempt=attempt)
            raise ConnectionError(f"service unavailable (attempt {attempt})")

    class Publish(BaseTool):
        name: str = "publish"
        description: str = "Publish an article; needs a title."

        def _run(self, title: str = "", text: str = "") -> str:
            record("publish", title=title, text=text)
            if not title:
                raise ValueError("an article needs a title")
            return f"published {title!r}"

    def crew(llm: Any, tools: list[Any] | None = None, *, description: str = "Find the value of a",
             tasks: int = 1, llms: list[Any] | None = None, tools_per_task: list[list[Any]] | None = None,
             guardrails: dict[int, list[Any]] | None = None, **crew_kw: Any) -> Any:
        agents, task_list = [], []
        for i in range(tasks):
            model = llms[i] if llms else llm
            agent = Agent(role=f"worker{i}" if tasks > 1 else "analyst", goal="do the task well",
                          backstory="careful", llm=model,
                          tools=tools_per_task[i] if tools_per_task else (tools or []), verbose=False)
            agents.append(agent)
            task_list.append(Task(name=f"task{i}", description=description if i == 0 else f"Step {i + 1}: {description}",
                                  expected_output="a short answer", agent=agent,
                                  **({"guardrails": guardrails[i]} if guardrails and i in guardrails else {})))
        return Crew(agents=agents, tasks=task_list, verbose=False, **crew_kw)

    return SimpleNamespace(Lookup=Lookup, DeleteRecords=DeleteRecords, SendEmail=SendEmail, Flaky=Flaky,
                           Publish=Publish, calls=calls, crew=crew)
