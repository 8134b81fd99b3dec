"""Fault injection for adapter tests: a plugin that raises, hangs or returns garbage in the hooks
you name, and a driver that runs a real agent with and without it.

Every adapter runs the same check against its framework's real runtime (see
``adapters/*/tests/test_fault_injection.py``)::

    from immunity.testing.faults import HOOKS, check_faults

    def drive(rt):                       # build the agent, protect it, run it, return the answer
        graph = build_graph(ScriptedChatModel(script=[...]), tools)
        rt.protect(graph)
        return graph.invoke(...)["messages"][-1].content

    check_faults(drive, "hang", ["immunity_verify"])

The check: the agent finishes with the same answer as without the faulty plugin, the fault is
recorded (in the store, or on ``runtime.errors`` for configure / unconfigure), and the time it
added is bounded by the step budget (per-event hooks: ``max_overruns`` budgets) or the hook
timeout (configure / unconfigure / registration hooks).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from immunity.hookcall import PER_EVENT_HOOKS
from immunity.models import EventKind, Severity, Verdict

hookimpl = pluggy.HookimplMarker("immunity")

#: The hooks a faulty plugin can break (every per-run hook, the lifecycle and a registration hook).
HOOKS: tuple[str, ...] = ("immunity_configure", "immunity_unconfigure", "immunity_register_selectors",
                          "immunity_observe", "immunity_observe_step", "immunity_map_action", "immunity_verify",
                          "immunity_intervene", "immunity_recover")
#: Hooks whose results core uses: garbage from them is reported; other hooks' results are ignored.
RESULT_USED = frozenset({"immunity_map_action", "immunity_verify", "immunity_intervene", "immunity_recover"})
MODES = ("raise", "hang", "garbage")


class InjectedFault(RuntimeError):
    """What the faulty plugin raises."""


class Garbage:
    """What the faulty plugin returns in ``garbage`` mode: not a Verdict, Intervention, Recovery
    or ActionMapping."""

    def __repr__(self) -> str:
        return "<garbage>"


class FaultyPlugin:
    """Raises (``raise``), blocks until :attr:`release` is set (``hang``) or returns
    :class:`Garbage` (``garbage``) in the ``hooks`` named; behaves (returns ``None``) in the others.
    Its decision hooks are ``tryfirst``, so they are asked before core's defaults."""

    def __init__(self, mode: str, hooks: Iterable[str] = HOOKS):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode, self.hooks = mode, set(hooks)
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()

    def _act(self, hook: str) -> Any:
        if hook not in self.hooks:
            return None
        self.calls[hook] += 1
        if self.mode == "raise":
            raise InjectedFault(f"{hook} exploded")
        if self.mode == "hang":
            self.release.wait()  # as good as never returning: the test releases it at the very end
            return None
        return Garbage()

    @hookimpl
    def immunity_configure(self, config: Any) -> Any:
        return self._act("immunity_configure")

    @hookimpl
    def immunity_unconfigure(self, config: Any) -> Any:
        return self._act("immunity_unconfigure")

    @hookimpl
    def immunity_register_selectors(self, register: Any) -> Any:
        return self._act("immunity_register_selectors")

    @hookimpl
    def immunity_observe(self, event: Any) -> Any:
        return self._act("immunity_observe")

    @hookimpl
    def immunity_observe_step(self, step: Any) -> Any:
        return self._act("immunity_observe_step")

    @hookimpl(tryfirst=True)
    def immunity_map_action(self, tool: Any) -> Any:
        return self._act("immunity_map_action")

    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        return self._act("immunity_verify")

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, verdicts: Any) -> Any:
        return self._act("immunity_intervene")

    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Any) -> Any:
        return self._act("immunity_recover")


class FlagFirstResult:
    """A well-behaved verifier that flags the first tool result (a low-severity, non-blocking
    verdict), so that every run also asks ``immunity_intervene`` and ``immunity_recover``."""

    def __init__(self) -> None:
        self.flagged: set[str] = set()

    @hookimpl
    def immunity_verify(self, event: Any, run: Any) -> Any:
        if event.kind == EventKind.TOOL_END and run.run_id not in self.flagged:
            self.flagged.add(run.run_id)
            return Verdict(ok=False, error_class="wrong_output", severity=Severity.WARNING,
                           message="flagged by the fault-injection test")
        return None


@dataclass
class FaultRun:
    """One run of the agent under test."""

    answer: Any
    seconds: float
    error_hooks: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)


def run_agent(drive: Callable[[Any], Any], plugin: FaultyPlugin | None, *, step_budget_ms: float = 50.0,
              hook_timeout_ms: float = 200.0, **options: Any) -> FaultRun:
    """Create a runtime (in-memory store) with ``plugin`` (or none), let ``drive(runtime)`` run the
    agent and return its answer, close the runtime; what happened, and how long it all took."""
    from immunity.runtime import Runtime

    plugins: list[Any] = [FlagFirstResult()] + ([plugin] if plugin is not None else [])
    t0 = time.perf_counter()
    rt = Runtime(store=":memory:", plugins=plugins, step_budget_ms=step_budget_ms,
                 hook_timeout_ms=hook_timeout_ms, **options)
    try:
        answer = drive(rt)
        rt.flush()
        stored = list(rt.store.plugin_errors(limit=10_000))
    finally:
        rt.close()
    seconds = time.perf_counter() - t0
    if plugin is not None:
        plugin.release.set()
    errors = stored + [e for e in rt.errors if e not in stored]
    name = rt.pm.get_name(plugin) if plugin is not None else None
    mine = [e for e in errors if e["plugin"] == name] if name else []
    return FaultRun(answer=answer, seconds=seconds, error_hooks={e["hook"] for e in mine}, errors=mine,
                    calls=Counter(plugin.calls) if plugin is not None else Counter(), skipped=dict(rt.skipped))


def check_faults(drive: Callable[[Any], Any], mode: str, hooks: Iterable[str] = HOOKS, *,
                 step_budget_ms: float = 50.0, hook_timeout_ms: float = 200.0, slack_s: float = 2.0,
                 **options: Any) -> tuple[FaultRun, FaultRun]:
    """Run the agent without and with a :class:`FaultyPlugin` and assert that the answer is the
    same, the faults are recorded and the added time is bounded. Returns both runs."""
    hooks = tuple(hooks)
    clean = run_agent(drive, None, step_budget_ms=step_budget_ms, hook_timeout_ms=hook_timeout_ms, **options)
    plugin = FaultyPlugin(mode, hooks)
    faulty = run_agent(drive, plugin, step_budget_ms=step_budget_ms, hook_timeout_ms=hook_timeout_ms, **options)

    assert faulty.answer == clean.answer, f"{mode} in {hooks}: answer {faulty.answer!r} != {clean.answer!r}"
    called = set(faulty.calls)
    assert called == set(hooks), f"not called: {sorted(set(hooks) - called)}"
    if mode == "raise":
        assert called <= faulty.error_hooks, f"raised in {sorted(called)}, recorded {sorted(faulty.error_hooks)}"
    elif mode == "garbage":
        expected = called & RESULT_USED
        assert expected <= faulty.error_hooks, f"garbage from {sorted(expected)}, recorded {sorted(faulty.error_hooks)}"
    else:
        assert called <= faulty.error_hooks, f"hung in {sorted(called)}, recorded {sorted(faulty.error_hooks)}"
        assert all("abandoned" in e["error"] or "budget" in e["hook"] for e in faulty.errors)
    if mode == "hang":
        per_event = [h for h in called if h in PER_EVENT_HOOKS]
        # a hung per-event hook costs a budget per call until the plugin is skipped (three calls
        # across all its hooks); a hung lifecycle or registration hook costs its timeout per call
        bound = (3 * step_budget_ms if per_event else 0.0) / 1000.0
        bound += sum(n for h, n in faulty.calls.items() if h not in PER_EVENT_HOOKS) * hook_timeout_ms / 1000.0
        assert sum(faulty.calls[h] for h in per_event) <= 3, faulty.calls
        added = faulty.seconds - clean.seconds
        assert added <= bound + slack_s, f"hang in {hooks} added {added:.2f} s (bound {bound:.2f} s)"
    return clean, faulty


#: The cases every adapter runs: every hook raising at once, every hook returning garbage at once,
#: and each hook hanging on its own (a hanging plugin is skipped after three overruns, so hanging
#: in every hook at once would leave the later hooks untested).
CASES: list[tuple[str, tuple[str, ...]]] = [("raise", HOOKS), ("garbage", HOOKS)] + [("hang", (h,)) for h in HOOKS]


def case_id(case: tuple[str, tuple[str, ...]]) -> str:
    mode, hooks = case
    return f"{mode}-{'all' if len(hooks) > 1 else hooks[0].removeprefix('immunity_')}"
