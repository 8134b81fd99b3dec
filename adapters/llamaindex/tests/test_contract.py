"""The guard contract (:mod:`immunity.testing.contract`) on LlamaIndex's real runtime."""

from __future__ import annotations

import asyncio
from typing import Any

from immunity.testing.contract import GuardContract
from immunity_llamaindex.testing import ScriptedLLM


class TestGuardContract(GuardContract):
    adapter_name = "llamaindex"

    def build(self, *, fail: bool) -> Any:
        from llama_index.core.agent.workflow import FunctionAgent

        return FunctionAgent(tools=[], llm=ScriptedLLM([] if fail else ["done"]))  # an empty script raises

    def run(self, target: Any) -> None:
        asyncio.run(self.arun(target))

    async def arun(self, target: Any) -> None:
        await target.run(user_msg="hi")
