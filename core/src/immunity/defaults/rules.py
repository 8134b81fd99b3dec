"""Built-in plugin: the L1 rules verifier (free, on every step) and the dispatcher that runs the
named verifiers the configuration switched on."""

from __future__ import annotations

from typing import Any

import pluggy

from immunity import taxonomy as tx
from immunity.error_identity import quote_error
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.plugins import build
from immunity.state import RunState, action_signature

hookimpl = pluggy.HookimplMarker("immunity")


def repeated_error_hint(n: int, error_text: str) -> str:
    """The hint for an error seen ``n`` times: it quotes the error as the tool reported it."""
    return (f"[immunity] This error has happened {n} times: {quote_error(error_text)}. "
            "Do not retry the same way; change the arguments or the approach.")


class RulesVerifier:
    """Loop, repeated-error, no-progress and unverified-finish rules on the run's signals.

    What each rule means (see docs/verification.md): a *loop* is the same call with the same result
    again; a *repeated error* is the same failure (:mod:`immunity.error_identity`) again with no
    change (edit) made since it last happened; *no progress* is tool calls that keep answering
    nothing new, with no change made; an *unverified finish* is finishing right after a failed
    check with nothing changed since.

    Thresholds (``Config.options["rules"]``): ``repeat`` (identical calls in a row before a hint,
    default 3), ``block_repeat`` (before the call is blocked, 4), ``stop_repeat`` (before the run is
    stopped, 6), ``ping_pong`` (3), ``no_progress`` (6 steps with no new information),
    ``tool_breaker`` (a tool's consecutive failures before its circuit opens and calls to it are
    blocked for the rest of the run, 4).
    """

    name = "rules"

    def __init__(self, config: Any = None):
        opts = dict(getattr(config, "options", {}).get("rules", {})) if config is not None else {}
        self.repeat = int(opts.get("repeat", 3))
        self.block_repeat = int(opts.get("block_repeat", 4))
        self.stop_repeat = int(opts.get("stop_repeat", 6))
        self.ping_pong = int(opts.get("ping_pong", 3))
        self.no_progress = int(opts.get("no_progress", 6))
        self.tool_breaker = int(opts.get("tool_breaker", 4))

    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        out: list[Verdict] = []
        if event.kind == EventKind.TOOL_START and step is not None and step.tool and \
                state.tool_failures[step.tool] >= self.tool_breaker:
            n = state.tool_failures[step.tool]
            return [Verdict(ok=False, error_class=tx.DEPENDENCY_CASCADE, severity=Severity.ERROR, block=True,
                            message=f"circuit open for {step.tool}: its last {n} calls failed",
                            hint=f"[immunity] {step.tool} failed {n} times in a row and is paused for this run. "
                                 "Use another tool or approach, or finish with what you have.",
                            evidence={"tool": step.tool, "consecutive_failures": n})]
        if event.kind == EventKind.TOOL_START and step is not None and state.last_step is not None:
            same = action_signature(step) == state.last_step.data.get("_sig")
            upcoming = state.identical_streak + 1 if same else 1
            if same and upcoming >= self.block_repeat:
                sev = Severity.CRITICAL if upcoming >= self.stop_repeat else Severity.ERROR
                out.append(Verdict(ok=False, error_class=tx.LOOP, severity=sev, block=True,
                                   message=f"{step.tool} would run with the same arguments for the {upcoming}th time in a row",
                                   hint=f"[immunity] Blocked: {step.tool} was already called {upcoming - 1} times in a row "
                                        "with these exact arguments and the same result. Try something different.",
                                   evidence={"identical_streak": upcoming, "tool": step.tool}))
            return out
        if step is None:
            return out
        if event.kind == EventKind.TOOL_END:
            if state.identical_streak >= self.repeat:
                out.append(Verdict(ok=False, error_class=tx.LOOP, severity=Severity.WARNING,
                                   message=f"the same {step.tool} call ran {state.identical_streak} times in a row",
                                   hint=tx.hint(tx.LOOP), evidence={"identical_streak": state.identical_streak}))
            elif state.ping_pong >= self.ping_pong:
                out.append(Verdict(ok=False, error_class=tx.LOOP, severity=Severity.WARNING,
                                   message=f"alternating between two actions ({state.ping_pong} times)",
                                   hint="[immunity] You are alternating between the same two actions. Break the cycle.",
                                   evidence={"ping_pong": state.ping_pong}))
            n = state.error_repeats[state.last_error] if state.last_error else 0
            if step.failed and not step.data.get("benign_exit") and n >= 2:
                out.append(Verdict(ok=False, error_class=tx.REPEATED_TOOL_ERROR,
                                   severity=Severity.ERROR if n >= 3 else Severity.WARNING,
                                   message=f"the same error happened {n} times: {state.last_error_text}",
                                   hint=repeated_error_hint(n, state.last_error_text),
                                   evidence={"error": state.last_error, "text": state.last_error_text, "count": n}))
            if state.steps_without_new_info >= self.no_progress and not out:
                out.append(Verdict(ok=False, error_class=tx.NO_PROGRESS, severity=Severity.WARNING,
                                   message=f"{state.steps_without_new_info} steps without new information",
                                   hint=tx.hint(tx.NO_PROGRESS),
                                   evidence={"steps_without_new_info": state.steps_without_new_info}))
        if step.action_type == ActionType.DONE and state.last_verify_ok is False and state.edits_since_verify == 0:
            # the check failed and nothing was changed since: the agent saw it fail and finished
            out.append(Verdict(ok=False, error_class=tx.PREMATURE_DONE, severity=Severity.ERROR,
                               message="finishing right after a failed verification",
                               hint="[immunity] Your last check failed. Fix it and verify again before finishing.",
                               evidence={"verified_failed": state.verified_failed}))
        return out


@hookimpl
def immunity_register_verifiers(register: Any) -> None:
    register("rules", RulesVerifier)


@hookimpl
def immunity_verify(event: Event, step: Step | None, run: Run, state: RunState, session: Any) -> list[Verdict]:
    """Run the rules verifier and every verifier named in ``Config.verifiers``."""
    runtime = session.runtime
    verifiers = runtime.__dict__.get("_verifiers")
    if verifiers is None:
        registry = runtime.pm.registry("verifiers")
        names = ["rules", *[n for n in runtime.config.verifiers if n != "rules"]]
        missing = [n for n in names if n not in registry]
        if missing:
            raise LookupError(f"verifier(s) {missing} are not installed; installed: {sorted(registry)}")
        verifiers = runtime._verifiers = [(n, build(registry[n], runtime.config, runtime=runtime)) for n in names]
    out: list[Verdict] = []
    for name, verifier in verifiers:
        try:
            res = verifier.verify(event, step, run, state)
        except Exception as exc:
            session.record_error(f"verifier:{name}", "immunity_verify", exc)
            continue
        for v in res or []:
            v.plugin = v.plugin or f"verifier:{name}"
            out.append(v)
    return out
