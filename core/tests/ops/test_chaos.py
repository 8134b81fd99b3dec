"""Chaos experiments: seeded fault injection through the public wrappers, survival reports, the
pytest fixture, a real LangGraph fleet, and ``immunity chaos run`` on a real agent process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from immunity import chaos
from immunity.chaos.experiment import ExperimentError
from immunity.consistency import sum_mismatches
from immunity.interventions import is_transient, parse_retry_after

ROOT = Path(__file__).resolve().parents[3]


def _exp(*faults, seed=1):
    return chaos.Experiment.from_dict({"name": "t", "seed": seed, "fault": list(faults)})


def test_experiment_validation():
    with pytest.raises(ExperimentError, match="unknown kind"):
        _exp({"kind": "meteor"})
    with pytest.raises(ExperimentError, match="model calls only"):
        _exp({"kind": "repeat", "target": "tool"})
    with pytest.raises(ExperimentError, match="unknown field"):
        _exp({"kind": "latency", "latncy_s": 1})
    with pytest.raises(ExperimentError, match="at least one"):
        chaos.Experiment.from_dict({"name": "x"})


def test_the_same_seed_injects_the_same_faults():
    def lookup(order_id: str) -> str:
        return json.dumps({"order_id": order_id, "total": 30.0, "items": [{"price": 10.0, "quantity": 3}]})

    def pattern(seed):
        with chaos.activate(_exp({"kind": "wrong_output", "probability": 0.5}, seed=seed)) as c:
            f = c.tool(lookup)
            outs = [f(order_id="A") for _ in range(20)]
        return [o != lookup("A") for o in outs], c.injections

    a, inj = pattern(3)
    assert a == pattern(3)[0] and a != pattern(4)[0]
    assert 3 <= sum(a) <= 17 and len(inj) == sum(a)
    assert all(i.fault == "wrong_output" and i.name == "lookup" for i in inj)


def test_each_fault_kind_does_what_it_says(immunity_chaos):
    def refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        return f"Refund of {amount:.2f} issued for order {order_id}."

    c = immunity_chaos(_exp(
        {"kind": "latency", "names": ["refund"], "calls": [0], "latency_s": 0.05},
        {"kind": "http_429", "names": ["refund"], "calls": [1], "retry_after_s": 3},
        {"kind": "http_503", "names": ["refund"], "calls": [2]},
        {"kind": "timeout", "names": ["refund"], "calls": [3]},
        {"kind": "exception", "names": ["refund"], "calls": [4], "message": "boom"},
        {"kind": "truncate", "names": ["refund"], "calls": [5], "keep": 0.25},
        {"kind": "wrong_output", "names": ["refund"], "calls": [6]},
        {"kind": "repeat", "calls": [1]},
    ))
    assert chaos.current() is c
    f = c.tool(refund)
    assert f.__name__ == "refund" and f.__doc__ == "Refund an order." and "amount" in str(
        __import__("inspect").signature(f))
    t0 = time.perf_counter()
    assert f("A-1", 10.0) == "Refund of 10.00 issued for order A-1."
    assert time.perf_counter() - t0 >= 0.05
    with pytest.raises(RuntimeError) as e429:
        f("A-1", 10.0)
    assert e429.value.status_code == 429 and parse_retry_after(e429.value.headers) == 3
    assert parse_retry_after(str(e429.value)) == 3 and is_transient(str(e429.value))
    with pytest.raises(RuntimeError, match="503"):
        f("A-1", 10.0)
    with pytest.raises(TimeoutError):
        f("A-1", 10.0)
    with pytest.raises(RuntimeError, match="refund: boom"):
        f("A-1", 10.0)
    assert f("A-1", 10.0) == "Refund of"
    wrong = f("A-1", 10.0)
    assert wrong != "Refund of 10.00 issued for order A-1." and wrong.startswith("Refund of ")
    assert "A-1" in wrong   # the id is not a number to change
    m = c.model(lambda messages: f"answer to {messages}")
    assert m("a") == "answer to a" and m("b") == "answer to a"   # said the same thing again
    assert [i.fault for i in c.injections] == ["latency", "http_429", "http_503", "timeout", "exception", "truncate",
                                               "wrong_output", "repeat"]


def test_outside_an_experiment_the_wrappers_are_no_ops():
    def f():
        return 1

    assert chaos.current() is None
    assert chaos.tool(f) is f and chaos.tools([f]) == [f] and chaos.model(f) is f


def test_sum_against_parts_cross_check():
    ok = {"total": 24.99, "shipping": 4.99, "items": [{"price": 10.0, "quantity": 2}]}
    assert sum_mismatches(ok) == []
    assert sum_mismatches({**ok, "total": 31.24}) == ["$.total is 31.24 but its items add up to 24.99"]
    assert sum_mismatches({"report": {"sum": 10, "breakdown": {"a": 3, "b": 4}}}) == [
        "$.report.sum is 10 but its breakdown add up to 7"]
    assert sum_mismatches({"total": 5, "items": [{"name": "x"}]}) == []   # parts without numbers: no claim


def test_fleet_under_chaos_in_langgraph_survival_report(immunity_chaos, tmp_path):
    pytest.importorskip("langgraph")
    pytest.importorskip("immunity_langgraph")
    pytest.importorskip("immunity_support")
    from immunity.chaos.fleet import run_fleet
    from immunity.runtime import Runtime

    c = immunity_chaos(_exp({"kind": "wrong_output", "names": ["get_order_details"], "calls": [0, 2]},
                            {"kind": "http_503", "names": ["refund"], "calls": [3], "retry_after_s": 0.01}))
    rt = Runtime(store=str(tmp_path / "f.db"), domain="support", support={"require_confirmation": False},
                 recovery={"base_delay": 0.001, "max_delay": 0.01})
    try:
        res = run_fleet(rt, runs=4, chaos=c, seed=2)
        rt.flush()
        assert all(r.run_id for r in res)
        assert {i.run_id for i in c.injections} <= {r.run_id for r in res}
        rows = rt.store._rows("select fault, run_id from chaos_injections")
        assert len(rows) == len(c.injections) >= 3
        report = chaos.survival(c, [rt.store])
    finally:
        rt.close()
    wrong = report["faults"]["wrong_output"]
    # the order_totals cross-check sees every wrong total (it does not add up to the items)
    assert wrong["injected"] >= 2 and wrong["detected"] == wrong["injected"]
    assert report["faults"]["all"]["injected"] == len(c.injections)
    text = chaos.format_report(report)
    assert "wrong_output" in text and "survived" in text


def test_chaos_run_cli_on_a_real_agent_process(tmp_path):
    pytest.importorskip("langgraph")
    pytest.importorskip("immunity_support")
    db = tmp_path / "runs.db"
    out = tmp_path / "report.json"
    from click.testing import CliRunner
    from immunity.cli import build_cli

    # the CLI runs in this process (CliRunner); the agent is a real child process
    res = CliRunner().invoke(build_cli(), ["chaos", "run", str(ROOT / "examples" / "chaos.toml"), "--out", str(out),
                                           "--", sys.executable, str(ROOT / "examples" / "chaos_agent.py"),
                                           "--runs", "2", "--store", str(db)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "what the agent and immunity survived" in res.output and "agent process exited with 0" in res.output
    data = json.loads(out.read_text())
    assert data["stores"] == [str(db)] and data["report"]["faults"]["all"]["injected"] == len(data["injections"]) > 0
    assert data["report"]["faults"]["all"]["runs"] >= 1


@pytest.mark.parametrize("framework,module", [("openai_agents", "agents"), ("llamaindex", "llama_index.core")])
def test_chaos_reaches_tool_and_model_calls_in_other_frameworks(framework, module, immunity_chaos):
    pytest.importorskip(module)
    pytest.importorskip("immunity_support")
    pytest.importorskip(f"immunity_{framework}")
    from immunity.chaos.fleet import run_fleet
    from immunity.runtime import Runtime

    c = immunity_chaos(_exp({"kind": "wrong_output", "names": ["get_order_details"], "calls": [0]},
                            {"kind": "http_429", "names": ["refund"], "calls": [0], "retry_after_s": 0.01},
                            {"kind": "repeat", "calls": [2]}))
    rt = Runtime(store=":memory:", domain="support", support={"require_confirmation": False},
                 recovery={"base_delay": 0.001, "max_delay": 0.01})
    try:
        (run,) = run_fleet(rt, runs=1, chaos=c, framework=framework)
        report = chaos.survival(c, [rt.store])
    finally:
        rt.close()
    assert run.error is None and run.injections == 3
    assert {i.fault for i in c.injections} == {"wrong_output", "http_429", "repeat"}
    assert all(i.run_id == run.run_id for i in c.injections)
    assert report["faults"]["wrong_output"]["detected"] == 1   # the order_totals cross-check
