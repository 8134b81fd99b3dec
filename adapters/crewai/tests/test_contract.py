"""The guard contract (:mod:`immunity.testing.contract`) on CrewAI's real runtime."""

from __future__ import annotations

from typing import Any

from immunity.testing.contract import GuardContract
from immunity_crewai.testing import ScriptedLLM


class TestGuardContract(GuardContract):
    adapter_name = "crewai"

    def build(self, *, fail: bool) -> Any:
        from crewai import Agent, Crew, Task

        llm = ScriptedLLM(script=[RuntimeError("provider down")] * 6 if fail else ["done"])
        agent = Agent(role="analyst", goal="answer", backstory="careful", llm=llm, verbose=False)
        return Crew(agents=[agent], tasks=[Task(description="Say done", expected_output="done", agent=agent)],
                    verbose=False)

    def run(self, target: Any) -> None:
        target.kickoff()

    async def arun(self, target: Any) -> None:
        await target.kickoff_async()
