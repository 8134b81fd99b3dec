"""Benchmark drivers are found only through ``immunity_register_bench_drivers`` (core imports no
adapter); a driver registered by any plugin runs in the closed-loop harness."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pluggy
import pytest
from immunity.bench.drivers import Driver, RunResult, bench_drivers
from immunity.bench.harness import SUCCESS, run_trial
from immunity.bench.tasks import Answer, Observation, ScriptedAgent, Task, ToolSpec
from immunity.errors import PluginCollisionError
from immunity.plugins import get_plugin_manager

hookimpl = pluggy.HookimplMarker("immunity")


class PlainLoopDriver(Driver):
    """No framework: the scripted agent's actions are carried out by a plain loop (what a
    third-party adapter's driver looks like, minus its framework)."""

    name = "plain"

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        by_name = dict((spec.name, fn) for spec, fn in tools)
        obs = Observation()
        obs.add_text("system", task.system, "0")
        obs.add_text("user", task.prompt, "1")
        t0 = time.perf_counter()
        for i in range(50):
            action = agent(obs)
            if isinstance(action, Answer):
                return RunResult(action.text, None, time.perf_counter() - t0)
            obs.add_call(action.name, action.args, f"c{i}")
            try:
                result = by_name[action.name](**action.args)
            except Exception as exc:  # a tool error is shown to the model, as frameworks do
                result = f"Error: {exc}"
            obs.add_result(result, f"c{i}", i)
        return RunResult(None, "too many turns", time.perf_counter() - t0)


class PlainPlugin:
    @hookimpl
    def immunity_register_bench_drivers(self, register: Any) -> None:
        register("plain", PlainLoopDriver)


class OtherPlainPlugin:
    @hookimpl
    def immunity_register_bench_drivers(self, register: Any) -> None:
        register("plain", PlainLoopDriver)


def test_a_plugin_registers_a_driver_and_the_harness_runs_it() -> None:
    pm = get_plugin_manager(load_entrypoints=False, extra=[PlainPlugin()])
    drivers = bench_drivers(pm)
    assert drivers["plain"] is PlainLoopDriver and PlainLoopDriver.available()
    assert pm.registry_owner("bench_drivers", "plain") is not None
    for task in ("research", "support", "coding"):
        trial = run_trial("plain", task, "none", 0, p=None, pm=pm)
        assert trial.outcome == SUCCESS, trial
        assert trial.tool_calls > 0 and trial.model_calls == trial.tool_calls + 1
    faulty = run_trial("plain", "support", "tool_error", 0, p=None, pm=pm)
    assert faulty.fault_fired and faulty.outcome != SUCCESS


def test_core_alone_has_no_drivers() -> None:
    assert bench_drivers(get_plugin_manager(load_entrypoints=False)) == {}


def test_two_plugins_registering_one_driver_name_collide() -> None:
    pm = get_plugin_manager(load_entrypoints=False, extra=[PlainPlugin(), OtherPlainPlugin()])
    with pytest.raises(PluginCollisionError):
        bench_drivers(pm)
