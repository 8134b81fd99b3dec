"""The benchmark's tasks, faults and scripted agent without any framework: a plain loop plays the
framework (the agent sees the prompt, its tool calls and their results)."""

from __future__ import annotations

import random

import pytest
from immunity.bench.tasks import (
    FAULT_TYPES,
    LOOP_REPEATS,
    TASKS,
    Answer,
    FaultyTools,
    ModelCallError,
    Observation,
    ScriptedAgent,
    ToolCallAction,
    compliance,
    hint_features,
    make_task,
    plan_fault,
)


def drive(task_name: str, fault: str, seed: int, p: float = 0.0, *, notes: dict[int, str] | None = None,
          max_turns: int = 60, compliance: str = "content") -> tuple[object, ScriptedAgent, FaultyTools, str | None]:
    """Run the scripted agent in a plain loop. ``notes``: immunity texts to show on given turns."""
    task = make_task(task_name, seed)
    plan = plan_fault(task, fault, seed)
    faulty = FaultyTools(task, plan)
    agent = ScriptedAgent(task, plan, p, seed, compliance=compliance)
    tools = {spec.name: faulty.wrap(spec) for spec in task.tools()}
    history: list[tuple[ToolCallAction, str]] = []
    for turn in range(max_turns):
        obs = Observation()
        obs.add_text("user", task.prompt, "0")
        for i, (call, result) in enumerate(history):
            obs.add_call(call.name, call.args, f"c{i}")
            obs.add_result(result, f"c{i}", i)
        if notes and turn in notes:
            obs.add_text("user", notes[turn], f"n{turn}")
        action = agent(obs)
        if isinstance(action, Answer):
            return task, agent, faulty, action.text
        try:
            result = tools[action.name](**action.args)
        except Exception as exc:
            result = f"Error: {exc}"
        history.append((action, result))
    return task, agent, faulty, None


@pytest.mark.parametrize("task_name", sorted(TASKS))
@pytest.mark.parametrize("seed", range(4))
def test_fault_free_runs_succeed(task_name: str, seed: int) -> None:
    task, agent, faulty, answer = drive(task_name, "none", seed)
    assert task.judge(answer), answer  # type: ignore[attr-defined]
    assert [name for name, _ in faulty.executions] == task.procedure  # type: ignore[attr-defined]
    assert agent.hints_seen == 0


@pytest.mark.parametrize("kind", FAULT_TYPES)
def test_fault_plans_depend_on_the_seed_only(kind: str) -> None:
    for seed in range(5):
        a, b = make_task("coding", seed), make_task("coding", seed)
        assert (a.bugs, a.code) == (b.bugs, b.code)
        assert plan_fault(a, kind, seed) == plan_fault(b, kind, seed)
    plans = {plan_fault(make_task("research", s), "tool_error", s) for s in range(30)}
    assert len(plans) > 1  # the fault lands in different places for different seeds


def test_tool_error_fires_once_on_its_target() -> None:
    for seed in range(10):
        task, agent, faulty, answer = drive("research", "tool_error", seed)
        plan = plan_fault(make_task("research", seed), "tool_error", seed)
        assert faulty.fired_at is not None
        calls = [n for n, _ in faulty.executions]
        assert calls.count(plan.tool) >= plan.occurrence + 1
        if plan.tool == "search_facts":
            # without a hint the agent does not retry: the missing figure is estimated, the answer is wrong
            assert not task.judge(answer)  # type: ignore[attr-defined]
        else:
            # with both figures and no calculator, it adds them itself
            assert task.judge(answer)  # type: ignore[attr-defined]


def test_a_wrong_output_is_a_wrong_answer_presented_as_success() -> None:
    for seed in range(6):
        task, _, faulty, answer = drive("research", "wrong_output", seed)
        assert faulty.fired_at is not None and answer is not None
        assert not task.judge(answer) and not task.admits_failure(answer)  # type: ignore[attr-defined]


def test_support_refunds_are_the_ground_truth() -> None:
    task, _, _, answer = drive("support", "none", 1)
    assert task.refunds == [(task.order_id, task.total)]  # type: ignore[attr-defined]
    # the same answer with no refund made is not a success
    task2 = make_task("support", 1)
    assert not task2.judge(answer)


def test_a_followed_hint_makes_the_agent_retry() -> None:
    seed = next(s for s in range(20) if plan_fault(make_task("support", s), "tool_error", s).tool == "refund")
    _, _, _, answer0 = drive("support", "tool_error", seed, p=0.0)
    task, agent, faulty, answer1 = drive("support", "tool_error", seed, p=1.0,
                                         notes={2: "[immunity] refund failed (tool_error). Retry it."})
    assert agent.hints_seen == agent.hints_followed == 1
    assert [n for n, _ in faulty.executions].count("refund") == 2
    assert task.judge(answer1)  # type: ignore[attr-defined]
    assert answer0 is not None


def test_follow_coins_are_paired_across_arms() -> None:
    note = {1: "[immunity] something", 2: "[immunity] something else", 3: "[immunity] a third"}
    runs = [drive("coding", "none", 7, p=0.5, notes=note)[1] for _ in range(2)]
    assert runs[0].hints_followed == runs[1].hints_followed  # type: ignore[attr-defined]
    # p = 0 never follows; with flat compliance p = 1 always does
    assert drive("coding", "none", 7, p=0.0, notes=note)[1].hints_followed == 0  # type: ignore[attr-defined]
    assert drive("coding", "none", 7, p=1.0, notes=note, compliance="flat")[1].hints_followed == 3  # type: ignore[attr-defined]


def test_compliance_depends_on_what_the_hint_says() -> None:
    called = {"refund", "get_order_details"}
    generic = "[immunity] Something went wrong in the last step."
    named = "[immunity] refund failed. Read the error and fix the call."
    both = "[immunity] refund failed. Call refund again with the same arguments now."
    assert hint_features(generic, called) == {"names_call": False, "action": False}
    assert hint_features(named, called) == {"names_call": True, "action": False}
    assert hint_features(both, called) == {"names_call": True, "action": True}
    assert hint_features(both, {"search_facts"})["names_call"] is False  # a tool the agent never called
    assert compliance(generic, called) == 0.5 and compliance(named, called) == 0.75 and compliance(both, called) == 1.0
    for action in ("Stop calling it with these arguments.", "Do not submit yet.", "Use the results you already have.",
                   "Retry it.", "Run the tests, then finish."):
        assert hint_features(f"[immunity] {action}", called)["action"], action
    # at p = 1 a specific hint is always followed and a generic one about half the time (same coins)
    specific = {t: f"[immunity] run_tests failed. Call run_tests again now. ({t})" for t in range(2, 7)}
    vague = {t: f"{generic} ({t})" for t in range(2, 7)}
    _, agent, _, _ = drive("coding", "none", 7, p=1.0, notes=specific)
    assert agent.hints_seen == agent.hints_followed == 5
    _, agent, _, _ = drive("coding", "none", 7, p=1.0, notes=vague)
    coins = random.Random("follow:coding:none:7")
    assert agent.hints_seen == 5 and agent.hints_followed == sum(coins.random() < 0.5 for _ in range(5))
    with pytest.raises(ValueError):
        ScriptedAgent(make_task("coding", 0), plan_fault(make_task("coding", 0), "none", 0), 1.0, 0, compliance="x")


def test_loop_repeats_then_gives_up() -> None:
    seed = next(s for s in range(20) if plan_fault(make_task("support", s), "loop", s).after == 1)
    task, agent, faulty, answer = drive("support", "loop", seed)
    names = [n for n, _ in faulty.executions]
    assert names == ["get_order_details"] * (1 + LOOP_REPEATS)
    assert answer is not None and not task.judge(answer)  # type: ignore[attr-defined]


def test_premature_done_submits_unfixed_code() -> None:
    task, _, faulty, answer = drive("coding", "premature_done", 0)
    assert "submit" in [n for n, _ in faulty.executions]
    assert not task.judge(answer)  # type: ignore[attr-defined]


def test_model_error_raises_once() -> None:
    task = make_task("research", 0)
    plan = plan_fault(task, "model_error", 0)
    agent = ScriptedAgent(task, plan, 0.0, 0)
    obs = Observation()
    for _ in range(plan.model_call or 0):
        agent(obs)
    with pytest.raises(ModelCallError):
        agent(obs)
    agent(obs)  # the next call (a retry) goes through


def test_quoted_output_sent_as_tool_role_data_is_not_a_call_of_the_model() -> None:
    from immunity.bench.tasks import Observation
    from immunity.interventions.quoting import QUOTE_TOOL

    obs = Observation()
    obs.add_call("lookup", {"key": "a"}, "c1")
    obs.add_result("Error: no such key", "c1", 1)
    obs.add_call(QUOTE_TOOL, {}, "q1")
    obs.add_result("Error: no such key", "q1", 2)
    obs.add_text("user", "[immunity] lookup failed: (the tool output quoted above). Fix the key.", "3")
    assert [(c.name, c.result) for c in obs.calls] == [("lookup", "Error: no such key")]
    assert len(obs.notes) == 1 and obs.notes[0][1].startswith("[immunity] lookup failed")
