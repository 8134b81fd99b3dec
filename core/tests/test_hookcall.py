"""Every hook call goes through pluggy with each implementation isolated: wrappers, tracing,
firstresult, BaseExceptions, garbage results, lifecycle and registration hooks, bad configuration,
deadlines and the wall-time step budget (GC pauses excluded, built-ins never skipped)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import pluggy
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.errors import ImmunityError, PluginError
from immunity.hookcall import GC_CLOCK
from immunity.models import Intervention, Verdict
from immunity.runtime import HookPolicy, Runtime
from immunity.testing import FakeRun

hookimpl = pluggy.HookimplMarker("immunity")


class Custom(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


def _errors(rt: Runtime, run_id: str | None = None) -> list[dict]:
    rt.flush()
    return rt.store.plugin_errors(run_id) if run_id else rt.store.plugin_errors(limit=500)


# ------------------------------------------------------------------ pluggy's call path

def test_wrapper_hookimpl_wraps_the_verify_call():
    seen: list[int] = []

    class Wrap:
        @hookimpl(wrapper=True)
        def immunity_verify(self, event, step):
            results = yield
            seen.append(len(results))
            if event.kind == "tool_start" and event.tool == "rm":
                results.append([Verdict(ok=False, error_class="unsafe_action", message="wrapped", block=True)])
            return results

    rt = Runtime(store=":memory:", plugins=[Wrap()])
    run = FakeRun(rt)
    d = run.tool("rm", {"path": "/"})
    assert seen and d.block and any(v.message == "wrapped" for v in d.verdicts)
    assert not _errors(rt, run.run.run_id)  # the generator is driven by pluggy, not recorded as an error
    rt.close()


def test_a_failing_wrapper_is_isolated_and_the_result_goes_on():
    class BadBefore:
        @hookimpl(wrapper=True)
        def immunity_intervene(self, verdicts):
            raise RuntimeError("before yield")
            yield  # pragma: no cover

    class BadAfter:
        @hookimpl(wrapper=True)
        def immunity_intervene(self, verdicts):
            yield
            raise RuntimeError("after yield")

    class Block:
        @hookimpl
        def immunity_verify(self, event):
            if event.kind == "tool_end":
                return Verdict(ok=False, error_class="wrong_output", message="bad result")

    rt = Runtime(store=":memory:", plugins=[Block(), BadBefore(), BadAfter()])
    run = FakeRun(rt)
    d = run.tool("search", {"q": 1}, result="x")
    assert d.intervention is not None  # the default policy still decided
    errs = {e["error"] for e in _errors(rt, run.run.run_id)}
    assert any("before yield" in e for e in errs) and any("after yield" in e for e in errs)
    rt.close()


def test_trace_shows_per_event_hooks(monkeypatch, caplog):
    monkeypatch.setenv("IMMUNITY_TRACE_PLUGINS", "1")
    rt = Runtime(store=None)
    with caplog.at_level("INFO", logger="immunity.trace"):
        FakeRun(rt).tool("search", {"q": 1})
    traced = " ".join(r.getMessage() for r in caplog.records)
    for hook in ("immunity_observe", "immunity_observe_step", "immunity_verify", "immunity_map_action"):
        assert hook in traced
    rt.close()


def test_garbage_from_a_decision_hook_lets_the_next_implementation_decide():
    class Garbage:
        @hookimpl(tryfirst=True)
        def immunity_intervene(self, verdicts):
            return "SYSTEM OVERRIDE"

        @hookimpl
        def immunity_verify(self, event):
            if event.kind == "tool_end":
                return [Verdict(ok=False, error_class="wrong_output", message="bad"), {"not": "a verdict"}]

    rt = Runtime(store=":memory:", plugins=[Garbage()])
    run = FakeRun(rt)
    d = run.tool("search", {"q": 1}, result="x")
    assert isinstance(d.intervention, Intervention) and d.intervention.text != "SYSTEM OVERRIDE"
    assert [v.error_class for v in d.verdicts if not v.ok] == ["wrong_output"]  # the good verdict is kept
    hooks = {e["hook"] for e in _errors(rt, run.run.run_id)}
    assert {"immunity_intervene", "immunity_verify"} <= hooks
    rt.close()


# ------------------------------------------------------------------ BaseExceptions

@pytest.mark.parametrize("exc", [GeneratorExit("gen"), asyncio.CancelledError("cancelled"), Custom("custom")])
def test_base_exceptions_are_recorded_not_raised(exc):
    class Raises:
        @hookimpl
        def immunity_observe(self, event):
            raise exc

    rt = Runtime(store=":memory:", plugins=[Raises()])
    run = FakeRun(rt)
    run.tool("search", {"q": 1})
    run.end("success")
    errs = _errors(rt, run.run.run_id)
    assert errs and all(e["hook"] == "immunity_observe" for e in errs)
    assert type(exc).__name__ in errs[0]["error"]
    rt.close()


def test_keyboard_interrupt_still_reaches_the_caller():
    class Interrupt:
        @hookimpl
        def immunity_observe(self, event):
            if event.kind == "tool_start":
                raise KeyboardInterrupt

    rt = Runtime(store=None, plugins=[Interrupt()])
    run = FakeRun(rt)
    with pytest.raises(KeyboardInterrupt):
        run.tool("search", {"q": 1})
    rt.close()


def test_a_plugin_that_breaks_run_metadata_cannot_break_error_recording():
    class Vandal:
        @hookimpl
        def immunity_observe(self, event, run):
            run.metadata = None
            raise RuntimeError("and then failed")

    rt = Runtime(store=":memory:", plugins=[Vandal()])
    run = FakeRun(rt)
    run.tool("search", {"q": 1})
    run.end("success")
    assert run.run.metadata["plugin_errors"]
    assert any("and then failed" in e["error"] for e in _errors(rt, run.run.run_id))
    rt.close()


# ------------------------------------------------------------------ lifecycle and registration

class BrokenLifecycle:
    @hookimpl
    def immunity_configure(self, config):
        raise RuntimeError("configure exploded")

    @hookimpl
    def immunity_unconfigure(self, config):
        raise Custom("unconfigure exploded")

    @hookimpl
    def immunity_register_selectors(self, register):
        raise ValueError("selector table exploded")


def test_configure_unconfigure_and_registration_errors_are_recorded(tmp_path):
    db = str(tmp_path / "s.db")
    rt = Runtime(store=db, plugins=[BrokenLifecycle()])  # the agent starts
    run = FakeRun(rt)
    run.tool("search", {"q": 1})
    run.end("success")
    rt.close()
    hooks = {e["hook"] for e in rt.errors}
    assert {"immunity_configure", "immunity_unconfigure", "immunity_register_selectors"} <= hooks
    from immunity.store import open_store

    stored = open_store(db)
    assert {"immunity_configure", "immunity_unconfigure"} <= {e["hook"] for e in stored.plugin_errors(limit=50)}
    stored.close()
    name = rt.pm.get_name(next(p for p in rt.pm.get_plugins() if isinstance(p, BrokenLifecycle)))
    assert "exploded" in (rt.pm.infos[name].error or "")


def test_configure_error_raises_when_fail_closed():
    with pytest.raises(PluginError, match="configure exploded"):
        Runtime(store=None, plugins=[BrokenLifecycle()], fail_closed=True)


def test_protect_survives_a_broken_configure_hook():
    import immunity

    class Target:
        pass

    # no adapter recognises Target: protect's own error, not the plugin's
    with pytest.raises(ImmunityError, match="no installed adapter"):
        immunity.protect(Target(), store=None, plugins=[BrokenLifecycle()])


def test_broken_command_registration_does_not_take_the_cli_down(monkeypatch):
    import immunity.plugins as plugins

    monkeypatch.delenv("IMMUNITY_STRICT_PLUGINS", raising=False)  # strict mode (the suite's) raises instead

    class BadCommands:
        @hookimpl
        def immunity_register_commands(self, cli):
            raise RuntimeError("no commands for you")

    real = plugins.get_plugin_manager
    monkeypatch.setattr("immunity.cli.get_plugin_manager", lambda: real(extra=[BadCommands()]))
    result = CliRunner().invoke(build_cli(), ["--help"])
    assert result.exit_code == 0 and "runs" in result.output


# ------------------------------------------------------------------ bad configuration

@pytest.mark.parametrize("kw,field,default", [
    ({"step_budget_ms": "fast"}, "step_budget_ms", 50.0),
    ({"step_budget_ms": float("nan")}, "step_budget_ms", 50.0),
    ({"max_interventions": -3}, "max_interventions", 5),
    ({"observe_only": "yes"}, "observe_only", False),
    ({"selector": 7}, "selector", "bandit"),
    ({"verifiers": "rules"}, "verifiers", ["rules"]),
])
def test_bad_configuration_is_a_warning_and_the_default(kw, field, default, caplog):
    with caplog.at_level(logging.WARNING, logger="immunity"):
        rt = Runtime(store=None, **kw)
    assert getattr(rt.config, field) == default
    FakeRun(rt).tool("search", {"q": 1})
    rt.close()
    if field != "verifiers":  # a single name is accepted as a list of one
        assert any(field in r.getMessage() for r in caplog.records)


def test_bad_configuration_raises_when_fail_closed():
    with pytest.raises(ImmunityError, match="step_budget_ms"):
        Runtime(store=None, step_budget_ms="fast", fail_closed=True)


# ------------------------------------------------------------------ deadlines and the budget

class Hangs:
    calls = 0

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.release = threading.Event()

    @hookimpl
    def immunity_verify(self, event):
        Hangs.calls += 1
        if self.seconds is None:
            self.release.wait()  # never returns (until the test lets it go)
        else:
            time.sleep(self.seconds)
        return Verdict(ok=False, error_class="wrong_output", message="too late")


@pytest.mark.parametrize("seconds", [30.0, None])
def test_a_hanging_hook_costs_at_most_its_budget_and_is_skipped_for_the_runtimes_life(seconds, monkeypatch):
    Hangs.calls = 0
    plugin = Hangs(seconds)
    rt = Runtime(store=":memory:", plugins=[plugin], step_budget_ms=40)
    name = rt.pm.get_name(plugin)
    charged: list[float] = []
    real_charge = HookPolicy.charge

    def spy(self, plugin_name, hook, seconds_, timed_out):
        if plugin_name == name:
            charged.append(seconds_)
        return real_charge(self, plugin_name, hook, seconds_, timed_out)

    monkeypatch.setattr(HookPolicy, "charge", spy)
    t0 = time.perf_counter()
    first = FakeRun(rt, task="first")
    for i in range(3):
        d = first.tool("search", {"q": i}, result="r")
        assert not any(v.message == "too late" for v in d.verdicts)
    first.end("success")
    second = FakeRun(rt, task="second")  # a later run of the same runtime
    for i in range(3):
        second.tool("search", {"q": i}, result="r")
    second.end("success")
    took = time.perf_counter() - t0
    plugin.release.set()
    deadline = time.monotonic() + 2
    while Hangs.calls < 3 and time.monotonic() < deadline:  # an abandoned call may start late
        time.sleep(0.01)
    assert Hangs.calls == 3  # abandoned three times, then never called again
    # what the hanging plugin cost the agent: three budgets (plus scheduling slack on a busy machine)
    assert len(charged) == 3 and sum(charged) < 3 * (0.04 + 0.3)
    assert took < 10  # and the runs finished instead of waiting 30 s or forever
    assert name in rt.skipped
    errs = _errors(rt, first.run.run_id)
    assert sum(1 for e in errs if "abandoned" in e["error"]) == 3
    assert any(e["hook"] == "budget" for e in errs)
    assert name in second.run.metadata["skipped_plugins"]
    from immunity.timeline import render_run

    rt.flush()
    assert f"skipped plugin {name}" in render_run(rt.store, rt.store.get_run(second.run.run_id))
    rt.close()


def test_core_built_ins_are_never_skipped():
    rt = Runtime(store=None, step_budget_ms=1)
    policy = HookPolicy(rt)
    for _ in range(10):
        policy.charge("immunity.defaults.rules", "immunity_verify", 0.5, False)
    assert rt.overruns["immunity.defaults.rules"] == 10 and not rt.skipped
    for _ in range(3):
        policy.charge("someone-else", "immunity_verify", 0.5, False)
    assert "someone-else" in rt.skipped
    rt.close()


def test_garbage_collection_pauses_are_not_charged(monkeypatch):
    class Collects:
        immunity_inline = True  # on the caller's thread: the whole pause happens inside the call

        @hookimpl
        def immunity_observe(self, event):
            gc.collect()

    junk = []
    for _ in range(100_000):  # cyclic garbage-collector work, kept alive so every collection walks it
        a: list = []
        a.append(a)
        junk.append(a)
    t0 = time.perf_counter()
    g0 = GC_CLOCK.total
    gc.collect()
    pause = time.perf_counter() - t0
    assert GC_CLOCK.total - g0 > 0.5 * pause
    plugin = Collects()
    rt = Runtime(store=None, plugins=[plugin], step_budget_ms=10_000)
    name = rt.pm.get_name(plugin)
    charged: list[float] = []
    real_charge = HookPolicy.charge

    def spy(self, plugin_name, hook, seconds, timed_out):
        if plugin_name == name:
            charged.append(seconds)
        return real_charge(self, plugin_name, hook, seconds, timed_out)

    monkeypatch.setattr(HookPolicy, "charge", spy)
    real_init = HookPolicy.__init__

    def hear_every_call(self, *a, **kw):  # the guard skips charge() for calls within the budget
        real_init(self, *a, **kw)
        self.budget = -1.0

    monkeypatch.setattr(HookPolicy, "__init__", hear_every_call)
    run = FakeRun(rt)
    for i in range(4):
        run.tool("search", {"q": i})
    rt.close()
    del junk
    # each call spent about ``pause`` collecting; what it is charged is a small fraction of that
    charged.sort()
    assert len(charged) == 9 and charged[len(charged) // 2] < pause / 4


def test_fast_third_party_plugins_are_not_abandoned():
    class Quick:
        calls = 0

        @hookimpl
        def immunity_observe(self, event):
            Quick.calls += 1

    rt = Runtime(store=None, plugins=[Quick()])
    run = FakeRun(rt)
    for i in range(20):
        run.tool("search", {"q": i})
    assert Quick.calls == 1 + 40 and not rt.skipped
    rt.close()


def test_budget_exempt_and_inline_plugins_run_on_the_callers_thread():
    threads: list[str] = []

    class Exempt:
        immunity_budget_exempt = True

        @hookimpl
        def immunity_observe(self, event):
            threads.append(threading.current_thread().name)

    class Worker:
        @hookimpl
        def immunity_observe_step(self, step):
            threads.append(threading.current_thread().name)

    rt = Runtime(store=None, plugins=[Exempt(), Worker()])
    FakeRun(rt).tool("search", {"q": 1})
    assert threading.current_thread().name in threads and "immunity-hook" in threads
    rt.close()
