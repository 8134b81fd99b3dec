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


# ------------------------------------------------------------------ dispatch by event kind and domain

def test_a_plugin_that_declares_kinds_is_called_for_those_kinds_only():
    seen: list[str] = []

    class ToolsOnly:
        immunity_kinds = ("tool_start", "tool_end")  # on the plugin: every per-event hook of it

        @hookimpl
        def immunity_observe(self, event):
            seen.append(f"observe:{event.kind}")

        @hookimpl
        def immunity_verify(self, event):
            seen.append(f"verify:{event.kind}")

    rt = Runtime(store=None, plugins=[ToolsOnly()])
    run = FakeRun(rt)
    run.model("thinking", tool_calls=[{"name": "search", "arguments": {"q": 1}}])
    run.tool("search", {"q": 1})
    run.session.end("success")
    kinds = {s.split(":", 1)[1] for s in seen}
    assert kinds == {"tool_start", "tool_end"}
    assert "observe:tool_start" in seen and "verify:tool_end" in seen
    rt.close()


def test_a_hook_function_declaration_wins_and_enum_values_count():
    from immunity.models import EventKind

    seen: list[str] = []

    class Mixed:
        immunity_kinds = ("tool_start",)

        @hookimpl
        def immunity_observe(self, event):
            seen.append(event.kind)

        immunity_observe.immunity_kinds = (EventKind.MODEL_END,)

    rt = Runtime(store=None, plugins=[Mixed()])
    run = FakeRun(rt)
    run.model("thinking", tool_calls=[{"name": "search", "arguments": {"q": 1}}])
    run.tool("search", {"q": 1})
    assert seen == ["model_end"]
    rt.close()


def test_an_undeclared_plugin_still_gets_every_event():
    seen: list[str] = []

    class Everything:
        @hookimpl
        def immunity_observe(self, event):
            seen.append(event.kind)

    class Narrow:
        immunity_kinds = ("run_end",)

        @hookimpl
        def immunity_observe(self, event):
            pass

    rt = Runtime(store=None, plugins=[Everything(), Narrow()])
    run = FakeRun(rt)
    run.model("thinking", tool_calls=[{"name": "search", "arguments": {"q": 1}}])
    run.tool("search", {"q": 1})
    run.session.end("success")
    assert seen == ["run_start", "model_start", "model_end", "tool_start", "tool_end", "run_end"]
    rt.close()


def test_domains_limit_per_run_hooks_but_not_registrations():
    seen: list[tuple[str, str | None]] = []

    class CodingOnly:
        immunity_domains = ("coding",)

        @hookimpl
        def immunity_observe(self, event, run):
            seen.append((event.kind, run.domain))

        @hookimpl
        def immunity_register_selectors(self, register):
            seen.append(("registered", None))

    rt = Runtime(store=None, plugins=[CodingOnly()])
    rt.pm.registry("selectors")  # no run in the call: the declaration does not apply
    assert ("registered", None) in seen
    seen.clear()
    FakeRun(rt, domain="support").tool("search", {"q": 1})
    FakeRun(rt).tool("search", {"q": 1})  # a run with no domain
    assert seen == []
    FakeRun(rt, domain="coding").tool("search", {"q": 1})
    assert {d for _, d in seen} == {"coding"} and ("tool_end", "coding") in seen
    rt.close()


def test_domain_plugins_only_see_runs_of_their_domain():
    rt = Runtime(store=None)
    impls = rt.pm.caller_for("immunity_observe_step", None, "support").get_hookimpls()
    names = {i.plugin_name for i in impls}
    others = {"coding", "data", "research"} & {i.plugin_name for i in rt.pm.hook.immunity_observe_step.get_hookimpls()}
    assert not (names & others)
    if "support" in {i.plugin_name for i in rt.pm.hook.immunity_observe_step.get_hookimpls()}:
        assert "support" in names
    rt.close()


def test_wrappers_and_tracing_see_the_calls_that_are_made(monkeypatch, caplog):
    monkeypatch.setenv("IMMUNITY_TRACE_PLUGINS", "1")
    wrapped: list[str] = []

    class Wrap:
        immunity_kinds = ("tool_start",)

        @hookimpl(wrapper=True)
        def immunity_verify(self, event):
            wrapped.append(event.kind)
            return (yield)

    class BlockRm:
        immunity_kinds = ("tool_start",)

        @hookimpl
        def immunity_verify(self, event):
            if event.tool == "rm":
                return Verdict(ok=False, error_class="unsafe_action", message="no", block=True)

    rt = Runtime(store=None, plugins=[Wrap(), BlockRm()])
    with caplog.at_level("INFO", logger="immunity.trace"):
        d = FakeRun(rt).tool("rm", {"path": "/"})
    assert d.block
    assert wrapped == ["tool_start"]
    traced = " ".join(r.getMessage() for r in caplog.records)
    assert "immunity_verify" in traced and "immunity_observe" in traced
    rt.close()


def test_registering_a_plugin_later_reaches_calls_already_cached():
    seen: list[str] = []

    class Late:
        immunity_kinds = ("tool_end",)

        @hookimpl
        def immunity_observe(self, event):
            seen.append(event.kind)

    rt = Runtime(store=None)
    FakeRun(rt).tool("search", {"q": 1})  # fills the per-kind cache
    late = Late()
    rt.pm.register(late)
    FakeRun(rt).tool("search", {"q": 2})
    assert seen == ["tool_end"]
    rt.pm.unregister(late)
    FakeRun(rt).tool("search", {"q": 3})
    assert seen == ["tool_end"]
    rt.close()


def test_with_tracing_a_call_with_nothing_to_call_still_goes_to_pluggy(monkeypatch, caplog):
    from immunity.models import Run

    monkeypatch.setenv("IMMUNITY_TRACE_PLUGINS", "1")
    rt = Runtime(store=None, plugins=[])
    run = Run(domain="no-such-domain")
    with caplog.at_level("INFO", logger="immunity.trace"):
        rt.pm.call("immunity_observe_step", step=None, run=run, state=None, session=None)
    assert "immunity_observe_step" in " ".join(r.getMessage() for r in caplog.records)
    assert all(not skip and direct is None for _, skip, direct in rt.pm._callers.values())  # monitored: all via pluggy
    rt.close()


def test_skipped_empty_calls_give_the_empty_result():
    import pluggy as _pluggy
    from immunity.plugins import PluginManager

    spec = _pluggy.HookspecMarker("immunity")

    class Specs:
        @spec
        def immunity_test_broadcast(self, event):
            """a broadcast hook"""

        @spec(firstresult=True)
        def immunity_test_decide(self, event):
            """a firstresult hook"""

    pm = PluginManager()
    pm.add_hookspecs(Specs)
    assert pm.call("immunity_test_broadcast", event=None) == []
    assert pm.call("immunity_test_decide", event=None) is None
    assert pm._callers[("immunity_test_broadcast", None, None, frozenset())][1] is True  # skipped, not called

    class Impl:
        @hookimpl
        def immunity_test_decide(self, event):
            return "decided"

    pm.register(Impl())  # registering clears the cache: the new implementation is called
    assert pm.call("immunity_test_decide", event=None) == "decided"


# ------------------------------------------------------------------ built-ins called directly

def _direct(rt: Runtime, hook: str) -> list:
    """The cached entries of ``hook`` that call built-ins directly (not through pluggy)."""
    return [d for (h, *_), (_, _, d) in rt.pm._callers.items() if h == hook and d is not None]


def test_with_only_builtins_per_event_hooks_are_called_directly_and_decide_the_same(monkeypatch):
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    rt = Runtime(store=":memory:")
    run = FakeRun(rt)
    for _ in range(4):
        d = run.tool("search", {"q": 1}, result="same")
    # the fourth identical call is blocked by the rules verifier through the default policy
    assert d.block and any(v.error_class == "loop" for v in d.verdicts)
    assert _direct(rt, "immunity_verify") and _direct(rt, "immunity_intervene")
    rt.close()


def test_a_third_party_implementation_still_gets_every_event_it_asks_for(monkeypatch):
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    seen: list[str] = []

    class Watcher:
        @hookimpl
        def immunity_verify(self, event):
            seen.append(event.kind)

        @hookimpl
        def immunity_observe(self, event):
            seen.append("observe:" + event.kind)

    rt = Runtime(store=None)
    FakeRun(rt).tool("search", {"q": 1})  # the cache holds direct calls for the built-ins
    assert _direct(rt, "immunity_verify")
    watcher = Watcher()
    rt.pm.register(watcher)  # registering clears the cache: the next calls go through pluggy
    FakeRun(rt).tool("search", {"q": 2})
    assert seen == ["observe:run_start", "observe:tool_start", "tool_start", "observe:tool_end", "tool_end"]
    assert not _direct(rt, "immunity_verify")
    rt.pm.unregister(watcher)
    rt.close()


def test_a_wrapper_and_tracing_still_see_the_builtin_calls(monkeypatch, caplog):
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    wrapped: list[str] = []

    class Wrap:
        @hookimpl(wrapper=True)
        def immunity_recover(self, event):
            res = yield
            wrapped.append(type(res).__name__)
            return res

    rt = Runtime(store=None, plugins=[Wrap()])
    FakeRun(rt).tool("search", {"q": 1}, error="boom")
    assert wrapped == ["Recovery"]  # the built-in's retry, seen by the wrapper
    assert not _direct(rt, "immunity_recover")
    rt.close()

    monkeypatch.setenv("IMMUNITY_TRACE_PLUGINS", "1")
    rt = Runtime(store=None)
    with caplog.at_level("INFO", logger="immunity.trace"):
        FakeRun(rt).tool("search", {"q": 1})
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "immunity_verify" in text and "immunity_map_action" in text
    assert not any(d is not None for _, _, d in rt.pm._callers.values())
    rt.close()


def test_a_builtin_error_on_the_direct_path_is_isolated_and_recorded(monkeypatch):
    from immunity.defaults import rules

    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")

    def broken(self, event, step, run, state):
        raise RuntimeError("rules broke")

    monkeypatch.setattr(rules.RulesVerifier, "verify", broken)
    rt = Runtime(store=":memory:")
    run = FakeRun(rt)
    d = run.tool("search", {"q": 1})
    assert d.ok and _direct(rt, "immunity_verify")
    assert any("rules broke" in e["error"] for e in _errors(rt, run.run.run_id))
    rt.close()


def test_a_plugin_switched_off_for_a_runtime_gets_no_per_event_calls(monkeypatch):
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    seen: list[str] = []
    configured: list[bool] = []

    class Optional:
        def __init__(self):
            self.immunity_active = lambda config: bool(config.options.get("my_plugin"))

        @hookimpl
        def immunity_configure(self, config):
            configured.append(True)

        @hookimpl
        def immunity_observe(self, event):
            seen.append(event.kind)

    off = Runtime(store=None, plugins=[Optional()])
    FakeRun(off).tool("search", {"q": 1})
    assert off.inactive and seen == [] and configured == [True]  # lifecycle hooks still called
    assert _direct(off, "immunity_verify")  # only built-ins remain: the direct path
    off.close()
    on = Runtime(store=None, plugins=[Optional()], my_plugin=True)
    FakeRun(on).tool("search", {"q": 1})
    assert not on.inactive and seen == ["run_start", "tool_start", "tool_end"]
    on.close()


def test_an_immunity_active_that_raises_counts_as_active(monkeypatch):
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    seen: list[str] = []

    class Unsure:
        def immunity_active(self, config):
            raise ValueError("cannot tell")

        @hookimpl
        def immunity_observe(self, event):
            seen.append(event.kind)

    rt = Runtime(store=None, plugins=[Unsure()])
    FakeRun(rt).tool("search", {"q": 1})
    assert not rt.inactive and "tool_start" in seen
    rt.close()
