"""The ``loops`` verifier: the repeats the rules verifier leaves to others.

Core's rules verifier flags identical repeats, A<->B ping-pong and long stretches with no new
information. This verifier adds, from the same incremental signals of :class:`~immunity.state.RunState`:

- **near-identical repeats**: the same tool with arguments that differ only in numbers or
  whitespace (``near_streak``), ``near_repeat`` times in a row (3) while the exact calls differ;
- **polling**: the same tool ``poll`` times in a row (3) returning nothing new
  (``steps_without_new_info``), before the rules' no-progress threshold is reached.

Each firing feeds the class's escalation ladder in the ``bandit`` selector (hint, then block, then
stop for ``loop``). Switched on with ``verifiers=["loops"]``, and automatically with
``selector="bandit"``. Options: ``Config.options["loops"] = {"near_repeat": 3, "poll": 3}``.
"""

from __future__ import annotations

from typing import Any

from immunity import taxonomy as tx
from immunity.models import Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState


class LoopsVerifier:
    name = "loops"

    def __init__(self, config: Any = None):
        options = getattr(config, "options", None) or {}
        opts = dict(options.get("loops") or {})
        rules = dict(options.get("rules") or {})
        self.near_repeat = int(opts.get("near_repeat", 3))
        self.poll = int(opts.get("poll", 3))
        self.identical = int(rules.get("repeat", 3))
        self.no_progress = int(rules.get("no_progress", 6))

    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        if event.kind != EventKind.TOOL_END or step is None or not step.tool:
            return []
        if state.near_streak >= self.near_repeat and state.identical_streak < self.identical:
            return [Verdict(ok=False, error_class=tx.LOOP, severity=Severity.WARNING, plugin="loops",
                            message=f"nearly the same {step.tool} call {state.near_streak} times in a row "
                                    "(only numbers or spacing change)",
                            hint=f"[immunity] You called {step.tool} {state.near_streak} times in a row with "
                                 "nearly the same arguments. Changing a number is not a new approach: try "
                                 "something different.",
                            evidence={"near_streak": state.near_streak, "tool": step.tool})]
        recent = state.steps[-self.poll:]
        if len(recent) == self.poll and all(s.tool == step.tool for s in recent) and \
                self.poll <= state.steps_without_new_info < self.no_progress and \
                state.identical_streak < self.identical:
            return [Verdict(ok=False, error_class=tx.NO_PROGRESS, severity=Severity.WARNING, plugin="loops",
                            message=f"polling {step.tool}: {state.steps_without_new_info} calls returned nothing new",
                            hint=f"[immunity] {step.tool} returned nothing new the last {state.steps_without_new_info} "
                                 "times. Stop polling: wait for a different signal, use another source, or answer "
                                 "with what you have.",
                            evidence={"steps_without_new_info": state.steps_without_new_info, "tool": step.tool})]
        return []
