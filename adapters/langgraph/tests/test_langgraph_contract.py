"""The guard contract (:mod:`immunity.testing.contract`) on LangGraph's real runtime."""

from __future__ import annotations

import warnings
from typing import Any

from immunity.testing.contract import GuardContract
from immunity_langgraph.testing import ScriptedChatModel


class TestGuardContract(GuardContract):
    adapter_name = "langgraph"

    def build(self, *, fail: bool) -> Any:
        from langgraph.prebuilt import create_react_agent

        model = ScriptedChatModel(script=[] if fail else ["done"])  # an empty script raises
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_react_agent(model, [])

    def run(self, target: Any) -> None:
        target.invoke({"messages": [("user", "hi")]})

    async def arun(self, target: Any) -> None:
        await target.ainvoke({"messages": [("user", "hi")]})
