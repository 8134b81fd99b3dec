"""Budgets in the loop, through the framework-free FakeAdapter: a run over budget is asked for its
final answer, its tool calls are blocked, and at the hard cap it is stopped with a final answer;
never an exception."""

from __future__ import annotations

from typing import Any

import pytest
from immunity.interventions import estimate_tokens, find_price, price_of
from immunity.interventions.budget import FINAL_NOW
from immunity.models import InterventionKind
from immunity.runtime import Runtime
from immunity.testing import FakeAdapter, FakeRun, ScriptStep


def test_price_lookup_by_longest_prefix_and_overrides() -> None:
    assert find_price("gpt-4o") == (2.50, 10.00)
    assert find_price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert find_price("openai/gpt-4.1-mini") == (0.40, 1.60)
    assert find_price("claude-sonnet-4-20250514") == (3.00, 15.00)
    assert find_price("models/gemini-2.5-flash") == (0.30, 2.50)
    assert find_price("o3-mini") == (1.10, 4.40) and find_price("o3") == (2.00, 8.00)
    assert find_price("my-local-llama") is None
    assert find_price("my-local-llama", {"my-local-llama": [0.0, 0.0]}) == (0.0, 0.0)
    assert find_price("gpt-4o", {"gpt-4o": [1, 2]}) == (1.0, 2.0)
    assert price_of("gpt-4o", 1_000_000, 100_000) == pytest.approx(2.5 + 1.0)


def test_token_estimate() -> None:
    msgs = [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "",
                                                      "tool_calls": [{"name": "a", "arguments": {"q": "y"}}]}]
    assert 100 + 8 < estimate_tokens(msgs) < 140


def _tools(log: list[str]) -> dict[str, Any]:
    def search(q: str) -> str:
        log.append(q)
        return f"result for {q}: " + "lorem ipsum " * 30

    return {"search": search}


def _obedient(visible: list[dict[str, Any]]) -> ScriptStep:
    if any(FINAL_NOW == m.get("content") for m in visible):
        return ScriptStep(answer="Best answer so far: see the three results.")
    n = sum(1 for m in visible if m["role"] == "tool")
    return ScriptStep(tool="search", arguments={"q": f"query {n}"})


def _stubborn(visible: list[dict[str, Any]]) -> ScriptStep:
    n = sum(1 for m in visible if m["role"] == "tool")
    return ScriptStep(tool="search", arguments={"q": f"query {n}"})


def test_over_budget_asks_for_the_final_answer_in_the_same_call() -> None:
    rt = Runtime(store=":memory:", budget={"max_tokens": 600, "expected_output_tokens": 100})
    log: list[str] = []
    try:
        assert "budget" in rt.config.verifiers  # switched on by the option
        adapter = FakeAdapter(rt, tools=_tools(log))
        session = adapter.run([_obedient] * 20, task="research the topic")
        asked = [i for i, seen in enumerate(adapter.seen) if any(m.get("content") == FINAL_NOW for m in seen)]
        assert len(asked) == 1 and asked[0] == len(adapter.seen) - 1  # the call that answered saw the hint
        assert session.run.final_answer == "Best answer so far: see the three results."
        assert session.run.status == "finished" and 0 < len(log) < 10
        meta = session.run.metadata["budget"]
        assert meta["max_tokens"] == 600 and meta["tokens"] <= 600
        ivs = rt.store.interventions(session.run.run_id)
        assert [iv.kind for iv in ivs if iv.source == "budget"] == [InterventionKind.HINT]
    finally:
        rt.close()


def test_a_run_that_ignores_the_budget_is_blocked_then_stopped_with_a_final_answer() -> None:
    rt = Runtime(store=":memory:", budget={"max_tokens": 600, "expected_output_tokens": 100})
    log: list[str] = []
    try:
        adapter = FakeAdapter(rt, tools=_tools(log))
        session = adapter.run([_stubborn] * 50, task="research the topic")  # never raises
        run = session.run
        assert run.status == "stopped"
        assert run.final_answer.startswith("I stopped before finishing this task: the run's budget (600 tokens)")
        assert "The last result I had: search returned: result for query" in run.final_answer
        kinds = [iv.kind for iv in rt.store.interventions(run.run_id) if iv.source == "budget"]
        assert kinds[0] == InterventionKind.HINT and InterventionKind.BLOCK in kinds and kinds[-1] == InterventionKind.STOP
        blocked = [s for s in rt.store.steps(run.run_id) if s.data.get("blocked")]
        assert blocked and len(log) == len([s for s in rt.store.steps(run.run_id) if s.tool and not s.failed])
        assert len(log) < 10
    finally:
        rt.close()


def test_cost_budget_with_real_prices() -> None:
    rt = Runtime(store=None, budget={"max_cost": 0.01, "expected_output_tokens": 10})
    try:
        run = FakeRun(rt)
        s = run.session
        msgs = [{"role": "user", "content": "hello"}]
        assert s.model_start(msgs, model="gpt-4o").ok
        s.model_end("hi", usage={"input_tokens": 2000, "output_tokens": 200, "total_tokens": 2200}, model="gpt-4o")
        assert run.run.metadata["budget"]["cost"] == pytest.approx(0.007)
        d = s.model_start(msgs, model="gpt-4o")  # 0.007 spent; the reservation is under 0.01
        assert not d.inject
        s.model_end("hi", usage={"input_tokens": 2000, "output_tokens": 200, "total_tokens": 2200}, model="gpt-4o")
        d = s.model_start(msgs, model="gpt-4o")  # 0.014 spent: one last call, asked for the answer
        assert d.inject == [FINAL_NOW] and not d.stop
        s.model_end("hi", usage={"input_tokens": 2000, "output_tokens": 200, "total_tokens": 2200}, model="gpt-4o")
        d = s.model_start(msgs, model="gpt-4o")  # still going: stopped, with an answer
        assert d.stop and "used up" in d.final_answer and "The last result I had: hi" in d.final_answer
    finally:
        rt.close()


def test_unpriced_models_are_recorded_not_fatal() -> None:
    rt = Runtime(store=None, budget={"max_cost": 1.0})
    try:
        run = FakeRun(rt)
        run.session.model_start([], model="my-llama")
        run.session.model_end("x", usage={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}, model="my-llama")
        assert run.run.metadata["budget"]["unpriced_models"] == ["my-llama"]
    finally:
        rt.close()
