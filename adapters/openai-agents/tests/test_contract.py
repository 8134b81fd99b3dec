"""The guard contract (:mod:`immunity.testing.contract`) on the OpenAI Agents SDK's real runner."""

from __future__ import annotations

from typing import Any

from agents import Agent, Runner
from immunity.testing.contract import GuardContract
from immunity_openai_agents.testing import ScriptedModel


class TestGuardContract(GuardContract):
    adapter_name = "openai-agents"

    def build(self, *, fail: bool) -> Any:
        return Agent(name="assistant", model=ScriptedModel([] if fail else ["done"]))  # an empty script raises

    def run(self, target: Any) -> None:
        Runner.run_sync(target, "hi")

    async def arun(self, target: Any) -> None:
        await Runner.run(target, "hi")
