"""Run outcomes from CrewAI's own signals (an exception, ``max_iter``, a task guardrail, a stop) and
the user's verdict (``guard.set_outcome``) rewarding the bandit, through CrewAI's real runtime."""

from __future__ import annotations

from typing import Any

import pytest
from immunity import Event, EventKind, Intervention, InterventionKind, Outcome, Severity, Verdict, hookimpl
from immunity_crewai.testing import ScriptedLLM, ToolCall, text_of


class Flag:
    """Flags every ``lookup`` result (a hint from the bandit follows); stops on ``delete_records``."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_END and event.tool == "lookup":
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING,
                           message="the key does not match the record")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, event: Event) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Intervention(kind=InterventionKind.STOP, text="deleting records ends this run")
        return None


class StopDeletes(Flag):
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="destructive", severity=Severity.ERROR, message="no deletes")
        return None


def stored(rt: Any, run_id: str) -> Any:
    rt.flush()
    return rt.store.get_run(run_id)


def test_completed_run_is_unknown_until_the_user_says(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(selector="bandit", seed=1, plugins=[Flag()])
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "The value is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    guard = rt.protect(crew)
    crew.kickoff()
    run_id = guard.run_id
    assert run_id is not None and guard.run_ids == [run_id] and run_id.startswith("crewai-")
    assert stored(rt, run_id).outcome == Outcome.UNKNOWN and stored(rt, run_id).status == "finished"
    assert any("[immunity]" in text_of(c) for c in llm.calls[1:])  # the bandit's hint reached the model

    guard.set_outcome(run_id, "success", reason="the value is right")
    run = stored(rt, run_id)
    assert run.outcome == Outcome.SUCCESS and run.metadata["outcome_reason"] == "the value is right"
    pulls = rt.store.db.execute("select reward from bandit_pulls where run_id = ?", [run_id]).fetchall()
    assert pulls and all(r[0] == 1 for r in pulls)


def test_exception_is_a_failure(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    crew = kit.crew(ScriptedLLM(script=[RuntimeError("provider down")] * 20))  # (immunity retries a transient model error, then CrewAI fails the crew)
    guard = rt.protect(crew)
    with pytest.raises(RuntimeError, match="provider down") as raised:
        crew.kickoff()
    run = stored(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_source"] == "framework"
    assert run.metadata["outcome_reason"] == f"raised RuntimeError: {raised.value}"


def test_max_iter_is_a_failure(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()

    def turn(messages: list[dict[str, Any]]) -> Any:
        forced = "best final answer" in str(messages[-1].get("content"))
        return "my best guess" if forced else ToolCall("lookup", {"key": "a"})

    crew = kit.crew(ScriptedLLM(script=[turn] * 8))
    crew.agents[0].max_iter = 2
    crew.agents[0].tools = [kit.Lookup()]
    guard = rt.protect(crew)
    assert crew.kickoff().raw == "my best guess"
    run = stored(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE
    assert run.metadata["outcome_reason"] == "max iterations reached (max_iter) by analyst"


def test_guardrail_trip_is_a_failure(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    from crewai import Agent, Crew, Task

    def must_be_a_number(output):  # type: ignore[no-untyped-def]  # CrewAI checks a real annotation
        return False, "the answer must be a number"

    agent = Agent(role="analyst", goal="answer", backstory="careful", llm=ScriptedLLM(script=["no"] * 4))
    task = Task(description="How many?", expected_output="a number", agent=agent, guardrail=must_be_a_number,
                guardrail_max_retries=0)
    crew = Crew(agents=[agent], tasks=[task], verbose=False)
    guard = rt.protect(crew)
    with pytest.raises(Exception, match="guardrail"):
        crew.kickoff()
    run = stored(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("a task guardrail failed")


def test_stop_is_a_failure(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[StopDeletes()])
    crew = kit.crew(ScriptedLLM(script=[ToolCall("delete_records", {"table": "users"}), "never"]),
                    [kit.DeleteRecords()])
    guard = rt.protect(crew)
    crew.kickoff()
    run = stored(rt, guard.run_id)
    assert run.status == "stopped" and run.outcome == Outcome.FAILURE
    assert run.metadata["outcome_reason"].startswith("stopped by immunity")


def test_every_step_of_a_two_agent_crew_carries_its_agent(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    first = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "a is value-of-a"])
    second = ScriptedLLM(script=[ToolCall("lookup", {"key": "b"}), "b is value-of-b"])
    crew = kit.crew(None, tasks=2, llms=[first, second], tools_per_task=[[kit.Lookup()], [kit.Lookup()]])
    guard = rt.protect(crew)
    crew.kickoff()
    rt.flush()
    steps = rt.store.steps(guard.run_id)
    assert steps and all(s.agent for s in steps), [(s.index, s.tool, s.agent) for s in steps]
    by_agent = [(s.agent, s.tool or s.action_type.value) for s in steps]
    # worker0: its lookup, its answer, then it delegates (a DELEGATE step) to worker1: its lookup, its answer
    assert by_agent == [("worker0", "lookup"), ("worker0", "DONE"), ("worker0", "DELEGATE"), ("worker1", "lookup"),
                        ("worker1", "DONE")]
