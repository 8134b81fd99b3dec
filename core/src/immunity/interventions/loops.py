"""The ``loops`` verifier: the repeats the rules verifier leaves to others.

Core's rules verifier flags identical repeats, A<->B ping-pong and long stretches with no new
information. This verifier adds, from the same incremental signals of :class:`~immunity.state.RunState`:

- **near-identical repeats**: the same tool with arguments that differ only in numbers or
  whitespace (``near_streak``), ``near_repeat`` times in a row (3) while the exact calls differ,
  *and* answering nothing new (paging through a file with ``sed -n '10,20p'``, ``'20,30p'`` is
  reading, not looping); once flagged, the next such call is flagged before it runs (so the
  ladder can block it);
- **polling**: the same question ``poll`` times in a row (3), each call answering with an output
  already given earlier in the run (asking again and getting the same answer), before the rules'
  no-progress threshold is reached. The question is the tool for a dedicated tool
  (``job_status``), and the command for a shell-like tool: "the same tool" means nothing for an
  agent whose only tool is a shell. Empty outputs do not count: a command that prints nothing
  (an edit, a ``cd``) gave no answer, not the same one.

Each firing feeds the class's escalation ladder in the escalating ``bandit`` selector (hint, then
block, then stop for ``loop``). Switched on with ``verifiers=["loops"]``, and automatically with
``bandit={"escalate": True}`` (the default, constrained bandit leaves it off: it verifies exactly
what the rules verify). Options: ``Config.options["loops"] = {"near_repeat": 3, "poll": 3}``.
"""

from __future__ import annotations

from typing import Any

from immunity import taxonomy as tx
from immunity.error_identity import question_of
from immunity.models import Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState, action_signature, near_signature


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
        if step is None or not step.tool:
            return []
        if event.kind == EventKind.TOOL_START:
            return self._before(step, state)
        if event.kind != EventKind.TOOL_END:
            return []
        if state.near_streak >= self.near_repeat and state.identical_streak < self.identical and \
                state.steps_without_new_info >= self.near_repeat - 1:
            return [Verdict(ok=False, error_class=tx.LOOP, severity=Severity.WARNING, plugin="loops",
                            message=f"nearly the same {step.tool} call {state.near_streak} times in a row "
                                    "(only numbers or spacing change)",
                            hint=f"[immunity] You called {step.tool} {state.near_streak} times in a row with "
                                 "nearly the same arguments. Changing a number is not a new approach: try "
                                 "something different.",
                            evidence={"near_streak": state.near_streak, "tool": step.tool})]
        recent = state.steps[-self.poll:]
        asks = question_of(step)
        if len(recent) == self.poll and all(question_of(s) == asks and s.data.get("_seen") for s in recent) and \
                self.poll <= state.steps_without_new_info < self.no_progress and \
                state.identical_streak < self.identical:
            return [Verdict(ok=False, error_class=tx.NO_PROGRESS, severity=Severity.WARNING, plugin="loops",
                            message=f"polling {step.tool}: {state.steps_without_new_info} calls returned nothing new",
                            hint=f"[immunity] {step.tool} returned nothing new the last {state.steps_without_new_info} "
                                 "times. Stop polling: wait for a different signal, use another source, or answer "
                                 "with what you have.",
                            evidence={"steps_without_new_info": state.steps_without_new_info, "tool": step.tool})]
        return []

    def _before(self, step: Step, state: RunState) -> list[Verdict]:
        """A pending call that would extend a near-identical streak that was already flagged: a
        verdict *before* it runs, so the ladder can block it."""
        last = state.last_step
        if last is None or state.near_streak < self.near_repeat or near_signature(step) != last.data.get("_near") \
                or state.steps_without_new_info < self.near_repeat - 1:
            return []
        if action_signature(step) == last.data.get("_sig"):
            return []  # an identical repeat: the rules verifier's
        n = state.near_streak + 1
        return [Verdict(ok=False, error_class=tx.LOOP, severity=Severity.WARNING, plugin="loops",
                        message=f"{step.tool} would run with nearly the same arguments for the {n}th time in a row",
                        hint=f"[immunity] {step.tool} already ran {n - 1} times in a row with nearly the same "
                             "arguments. Try something different.",
                        evidence={"near_streak": n, "tool": step.tool})]
