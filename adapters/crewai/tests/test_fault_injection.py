"""Fault injection through CrewAI's real runtime (Crew.kickoff): a plugin that raises, hangs or
returns garbage in each hook leaves the crew's answer unchanged, is recorded, and costs at most
its budget."""

from __future__ import annotations

from typing import Any

import pytest
from immunity.testing.faults import CASES, case_id, check_faults
from immunity_crewai.testing import ScriptedLLM, ToolCall


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_faulty_plugin_changes_nothing_but_the_record(case: tuple[str, tuple[str, ...]], kit: Any) -> None:
    def drive(rt: Any) -> Any:
        llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "The value of a is value-of-a."])
        crew = kit.crew(llm, [kit.Lookup()])
        rt.protect(crew)
        return crew.kickoff().raw

    mode, hooks = case
    clean, faulty = check_faults(drive, mode, hooks)
    assert clean.answer == "The value of a is value-of-a."
