"""Fault injection through LlamaIndex's real runtime (FunctionAgent.run): a plugin that raises,
hangs or returns garbage in each hook leaves the agent's answer unchanged, is recorded, and costs
at most its budget."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from immunity.testing.faults import CASES, case_id, check_faults
from immunity_llamaindex.testing import ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_faulty_plugin_changes_nothing_but_the_record(case: tuple[str, tuple[str, ...]]) -> None:
    def drive(rt: Any) -> Any:
        files = {"a.txt": "alpha"}

        def read_file(path: str) -> str:
            """Read a file."""
            return files[path]

        agent = FunctionAgent(tools=[read_file], llm=ScriptedLLM([tool_call("read_file", {"path": "a.txt"}), "alpha."]))
        guard = rt.protect(agent)

        async def go() -> str:
            return str(await agent.run(user_msg="Read a.txt"))

        try:
            return asyncio.run(go())
        finally:
            guard.uninstrument()

    mode, hooks = case
    clean, faulty = check_faults(drive, mode, hooks)
    assert clean.answer == "alpha."
