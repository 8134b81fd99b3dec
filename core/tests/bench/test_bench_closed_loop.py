"""The closed-loop harness through real framework runtimes (scripted models, offline)."""

from __future__ import annotations

import json
import re

import click
import pytest
from click.testing import CliRunner
from immunity.bench import plugin
from immunity.bench.harness import (
    SILENT,
    SUCCESS,
    BenchConfig,
    aggregate,
    run_benchmark,
    run_trial,
    trial_plan,
)
from immunity.bench.tasks import make_task
from immunity.plugins import get_plugin_manager

FRAMEWORKS = {"langgraph": ("langgraph", "immunity_langgraph"),
              "openai_agents": ("agents", "immunity_openai_agents")}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    for module in FRAMEWORKS[request.param]:
        pytest.importorskip(module)
    return str(request.param)


@pytest.fixture(scope="module")
def pm() -> object:
    return get_plugin_manager()


@pytest.fixture(autouse=True)
def _no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_fault_free_trials_succeed_with_and_without_immunity(framework: str, pm: object) -> None:
    for task in ("research", "support", "coding"):
        off = run_trial(framework, task, "none", 0, p=None, pm=pm)
        on = run_trial(framework, task, "none", 0, p=1.0, pm=pm)
        assert off.outcome == on.outcome == SUCCESS, (off, on)
        assert off.detected is None and on.detected is False  # no false alarm on these runs
        assert off.tool_calls == on.tool_calls == len(make_task(task, 0).procedure)


def test_pairing_is_exact(framework: str, pm: object) -> None:
    for seed in range(3):
        arms = [run_trial(framework, "support", "tool_error", seed, p=p, pm=pm) for p in (None, 0.0, 1.0)]
        assert len({t.plan for t in arms}) == 1
        assert all(t.fault_fired for t in arms)
    plan = trial_plan(BenchConfig(frameworks=[framework], faults=["none", "loop"], seeds=2, ps=(0.0, 1.0)))
    assert len(plan) == 2 * 2 * 3
    # every seed runs once without immunity and once per p, on the same task
    for seed in range(2):
        rows = [r for r in plan if r[2] == "loop" and r[3] == seed]
        assert [r[4] for r in rows] == [None, 0.0, 1.0] and len({r[1] for r in rows}) == 1


def test_wrong_output_without_a_verifier_is_a_silent_corruption(framework: str, pm: object) -> None:
    for seed in (0, 3):  # research tasks: a plausible wrong figure that no check can tell apart
        off = run_trial(framework, "research", "wrong_output", seed, p=None, pm=pm)
        on = run_trial(framework, "research", "wrong_output", seed, p=1.0, pm=pm)
        assert off.outcome == SILENT and off.fault_fired
        assert on.outcome == SILENT and on.detected is False


def test_outcomes_are_judged_from_the_ground_truth(framework: str, pm: object) -> None:
    trials = [run_trial(framework, "research", fault, seed, p=p, pm=pm)
              for fault in ("tool_error", "loop", "premature_done") for seed in (0, 3) for p in (None, 0.0, 1.0)]
    for t in trials:
        truth = str(make_task("research", t.seed).truth)  # type: ignore[attr-defined]
        correct = t.error is None and truth in {m.replace(",", "") for m in re.findall(r"\d[\d,]*", t.answer or "")}
        assert (t.outcome == SUCCESS) == (correct and t.how != "stopped"), t
    # immunity's own verdicts never turn a wrong answer into a success
    assert any(t.detected and t.outcome != SUCCESS for t in trials)


def test_a_loop_is_stopped_at_p0_and_left_at_p1(framework: str, pm: object) -> None:
    seed = 1
    off = run_trial(framework, "support", "loop", seed, p=None, pm=pm)
    p0 = run_trial(framework, "support", "loop", seed, p=0.0, pm=pm)
    p1 = run_trial(framework, "support", "loop", seed, p=1.0, pm=pm)
    assert off.outcome == SILENT  # the agent gives up and claims a refund it never made
    assert p0.outcome == "caught_failure" and p0.how == "stopped" and p0.detected
    assert p1.outcome == SUCCESS and p1.hints_followed >= 1
    assert p1.tool_calls < off.tool_calls


def test_aggregate_counts_add_up(framework: str) -> None:
    cfg = BenchConfig(frameworks=[framework], faults=["none", "tool_error"], seeds=3, ps=(0.0, 1.0))
    trials = run_benchmark(cfg)
    assert len(trials) == len(trial_plan(cfg))
    summary = aggregate(trials, reps=200)
    cell = next(c for c in summary["cells"] if c["framework"] == framework and c["fault"] == "tool_error")
    off = cell["off"]
    assert off["n"] == 3
    assert sum(off[o]["k"] for o in ("success", "caught_failure", "silent_corruption")) == 3
    for p in ("0.0", "1.0"):
        on = cell["on"][p]
        assert on["paired_success"]["n_pairs"] == 3
        lo, hi = on["success"]["ci95"]
        assert lo <= on["success"]["rate"] <= hi
        assert on["verifier"]["recall"]["n"] == 3
    none = next(c for c in summary["cells"] if c["framework"] == framework and c["fault"] == "none")
    assert none["on"]["1.0"]["verifier"]["false_alarm"]["n"] == 3


def _cli() -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    plugin.immunity_register_commands(cli=cli)
    return cli


def test_cli_runs_and_prints_json(pm: object) -> None:
    pytest.importorskip("agents")
    pytest.importorskip("immunity_openai_agents")
    result = CliRunner().invoke(_cli(), ["bench", "closed-loop", "--frameworks", "openai_agents", "--faults",
                                         "none,wrong_output", "--seeds", "2", "--p", "0,1", "--json",
                                         "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["config"]["trials"] == 2 * 2 * 3 and data["ps"] == [0.0, 1.0]
    cell = next(c for c in data["cells"] if c["framework"] == "openai_agents" and c["fault"] == "none")
    assert cell["off"]["success"]["rate"] == 1.0
    table = CliRunner().invoke(_cli(), ["bench", "closed-loop", "--frameworks", "openai_agents", "--faults", "none",
                                        "--quick", "--no-progress"])
    assert table.exit_code == 0 and "openai_agents" in table.output and "recall" in table.output


def test_cli_reports_a_saved_run_as_markdown(tmp_path: object) -> None:
    pytest.importorskip("agents")
    pytest.importorskip("immunity_openai_agents")
    out = f"{tmp_path}/run.json"
    runner = CliRunner()
    ran = runner.invoke(_cli(), ["bench", "closed-loop", "--frameworks", "openai_agents", "--faults", "none,loop",
                                 "--seeds", "2", "--p", "0,1", "--out", out, "--json", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    with open(out, encoding="utf-8") as fh:
        saved = json.load(fh)
    assert len(saved["trials"]) == 2 * 2 * 3
    md = runner.invoke(_cli(), ["bench", "closed-loop", "--report", out, "--markdown"])
    assert md.exit_code == 0, md.output
    assert "| openai_agents | loop | 2 |" in md.output and "**Verifier, measured**" in md.output
    again = runner.invoke(_cli(), ["bench", "closed-loop", "--report", out, "--json"])
    assert json.loads(again.output)["cells"] == json.loads(ran.output)["cells"]


def test_cli_refuses_bad_options_and_real_without_a_key() -> None:
    runner = CliRunner()
    bad = runner.invoke(_cli(), ["bench", "closed-loop", "--frameworks", "nope"])
    assert bad.exit_code != 0 and "unknown framework" in bad.output
    bad = runner.invoke(_cli(), ["bench", "closed-loop", "--p", "2"])
    assert bad.exit_code != 0
    real = runner.invoke(_cli(), ["bench", "closed-loop", "--real", "--no-progress"])
    assert real.exit_code != 0 and "OPENAI_API_KEY" in real.output


def test_the_plugin_adds_the_command_to_immunitys_cli() -> None:
    pm = get_plugin_manager()  # a built-in plugin: loaded with core
    assert pm.get_plugin("immunity.bench.plugin") is plugin
    from immunity.cli import build_cli

    bench = build_cli().commands["bench"]
    assert isinstance(bench, click.Group) and "closed-loop" in bench.commands


def test_bandit_arm_learns_across_trials_and_users_feel_prevented_vs_flagged(pm: object) -> None:
    pytest.importorskip("langgraph")
    pytest.importorskip("immunity_langgraph")
    cfg = BenchConfig(frameworks=["langgraph"], faults=["none", "tool_error", "loop", "premature_done"], seeds=3,
                      ps=(1.0,), bandit=True, evolve=1, evolution={"traffic": 0.5})
    lineage: dict[str, list[dict[str, object]]] = {}
    trials = run_benchmark(cfg, lineage=lineage)
    bandit = [t for t in trials if t.selector == "bandit"]
    default = [t for t in trials if t.arm == "on" and t.selector == "default"]
    assert len(bandit) == len(default) == 12 and [t.order for t in trials] == list(range(len(trials)))
    assert all(t.detected is not None for t in bandit)
    # one store shared by the bandit's trials: every evolved hint they got is a pull there, rewarded
    # with the trial's judged outcome
    rows = lineage["1.0"]
    assert rows and {r["status"] for r in rows} <= {"candidate", "promoted", "retired"}
    evolved_hints = sum(v.startswith("evolved:") for t in bandit for v in t.variants)
    assert sum(int(r["pulls"]) for r in rows) == evolved_hints
    assert sum(int(r["rewarded"]) for r in rows) == evolved_hints
    summary = aggregate(trials, reps=200)
    for label in ("default, p=1.0", "bandit, p=1.0"):
        r = summary["felt"][label]["all"]
        assert r["harmful"] > 0
        assert r["prevented"]["k"] + r["flagged"]["k"] + r["unnoticed"]["k"] == r["harmful"]
    b = summary["bandit"]["1.0"]
    assert sum(blk["bandit"]["n"] for blk in b["learning_curve"]) == b["paired_vs_default"]["n_pairs"] == 12
    assert b["evolved_hints"] == evolved_hints and b["hints"] == sum(len(t.variants) for t in bandit)
    # the default-selector cells are unchanged by the bandit arm
    assert all(c["on"]["1.0"]["n"] == c["off"]["n"] for c in summary["cells"])
    from immunity.bench.report import render, render_markdown

    assert "learning curve" in render(summary) and "| bandit, p=1.0 | all |" in render_markdown(summary).replace("**", "")
