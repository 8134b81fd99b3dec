"""Model errors in a real CrewAI crew: a transient error is retried with the recovery policy's
backoff, and after repeated failures the call goes to the ``fallback_model`` (scripted models,
offline)."""

from __future__ import annotations

import asyncio
from typing import Any

from immunity import EventKind
from immunity_crewai.testing import ScriptedLLM, ToolCall


def overloaded() -> ConnectionError:
    return ConnectionError("Error code: 503 - the model is overloaded, please retry later")


def test_transient_model_error_is_retried_in_the_same_step(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(recovery={"base_delay": 0.0})
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), overloaded(), "a is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    guard = rt.protect(crew)
    out = crew.kickoff()
    assert out.raw == "a is value-of-a." and llm.position == 3
    rt.flush()
    run_id = guard.run_id
    assert [r.kind.value for r in rt.store.recoveries(run_id)] == ["retry"]
    ends = [e for e in rt.store.events(run_id) if e.kind == EventKind.MODEL_END]
    assert [bool(e.error) for e in ends] == [False, True, False]
    assert [c["key"] for c in kit.calls["lookup"]] == ["a"]  # the step was retried, not the whole task
    assert crew.agents[0].llm is llm and "call" not in llm.__dict__  # the model is given back untouched when the run ends


def test_fallback_model_answers_when_the_model_keeps_failing(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(recovery={"base_delay": 0.0})
    down = ScriptedLLM(script=[overloaded() for _ in range(9)])
    backup = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "from the backup: a is value-of-a."],
                         model="backup")
    crew = kit.crew(down, [kit.Lookup()])
    guard = rt.protect(crew, fallback_model=backup)
    out = crew.kickoff()
    assert out.raw == "from the backup: a is value-of-a."
    assert down.position == 2  # one retry, then the fallback
    assert [c["key"] for c in kit.calls["lookup"]] == ["a"]
    rt.flush()
    run_id = guard.run_id
    assert [r.kind.value for r in rt.store.recoveries(run_id)] == ["retry", "fallback"]
    ends = [e for e in rt.store.events(run_id) if e.kind == EventKind.MODEL_END]
    assert [(e.model, bool(e.error)) for e in ends] == [("scripted", True), ("scripted", True),
                                                         ("backup", False), ("backup", False)]
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == out.raw
    assert crew.agents[0].llm is down and "call" not in down.__dict__  # the crew keeps its own model
    guard.uninstrument()


def test_fallback_with_native_async_kickoff(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(recovery={"base_delay": 0.0})
    down = ScriptedLLM(script=[overloaded() for _ in range(9)])
    crew = kit.crew(down, [kit.Lookup()])
    guard = rt.protect(crew, fallback_model=ScriptedLLM(script=["from the backup"], model="backup"))
    out = asyncio.run(crew.akickoff())
    assert out.raw == "from the backup"
    rt.flush()
    assert [r.kind.value for r in rt.store.recoveries(guard.run_id)][-1] == "fallback"
    guard.uninstrument()


def test_without_a_fallback_the_error_goes_on_to_crewai(make_runtime: Any, kit: Any) -> None:
    """Retries used up and no fallback model: the error goes on to CrewAI, and the crew fails."""
    rt = make_runtime(recovery={"base_delay": 0.0})
    down = ScriptedLLM(script=[overloaded() for _ in range(30)])
    crew = kit.crew(down, [kit.Lookup()])
    guard = rt.protect(crew)
    try:
        crew.kickoff()
    except Exception as exc:
        assert "overloaded" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("the crew should fail")
    rt.flush()
    assert rt.store.get_run(guard.run_id).status == "error"
