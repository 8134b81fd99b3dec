"""The LLM verifier: decides a step's tier, asks the tier's model for a JSON verdict, and turns
the reply into an :class:`immunity.models.Verdict`.

Used two ways:

- inside a runtime, through the plugin's own ``immunity_verify`` hook (see :mod:`immunity_llm_verifier`),
  where :meth:`LLMVerifier.check` raises a :class:`~immunity_llm_verifier.transport.VerifierProblem`
  for core to record against the run, and returns no verdict;
- on its own (the quality harness, a notebook): :meth:`LLMVerifier.verify` never raises and keeps
  the problems in :attr:`LLMVerifier.problems`; :meth:`LLMVerifier.assess` checks one step given
  as plain data.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from immunity import taxonomy as tx
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

from immunity_llm_verifier.contract import ParsedVerdict, UnparseableReply, build_messages, parse_reply
from immunity_llm_verifier.options import L1, L3, Options
from immunity_llm_verifier.transport import (
    Completion,
    VerifierBudgetExhausted,
    VerifierProblem,
    VerifierUnavailable,
    make_transport,
)

__all__ = ["PLUGIN", "LLMVerifier", "Ledger"]

log = logging.getLogger("immunity.llm_verifier")

#: ``Verdict.plugin`` of every verdict this verifier returns.
PLUGIN = "llm_verifier"


@dataclass
class Ledger:
    """What the verifier spent and saw in one run (kept in ``state.extras["llm_verifier"]`` and
    summarised in ``run.metadata["llm_verifier"]``)."""

    calls: int = 0
    tokens: int = 0
    flagged: int = 0
    problems: int = 0
    failures_in_a_row: int = 0
    latency_s: float = 0.0
    stopped: str | None = None          # why no more calls are made in this run (said once)
    config_error_reported: bool = False
    checked: set[tuple[int, str]] = field(default_factory=set)
    passed: set[int] = field(default_factory=set)
    pre_checked: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        return {"calls": self.calls, "tokens": self.tokens, "flagged": self.flagged, "problems": self.problems,
                "latency_s": round(self.latency_s, 3), **({"stopped": self.stopped} if self.stopped else {})}


def _estimate_tokens(messages: list[dict[str, str]], reply: str) -> int:
    return (sum(len(m.get("content") or "") for m in messages) + len(reply)) // 4 + 4 * len(messages)


def _cap(severity: Severity, cap: Severity) -> Severity:
    return severity if severity.rank <= cap.rank else cap


def _pending_key(event: Event, step: Step) -> str:
    return event.tool_call_id or f"{step.index}:{step.tool}"


class LLMVerifier:
    """Checks L2 and L3 steps with a model (see the package README for the options)."""

    name = "llm"

    def __init__(self, options: Options):
        self.options = options
        self._transports: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: problems met when used outside a runtime (through :meth:`verify`)
        self.problems: list[str] = []

    @classmethod
    def from_config(cls, config: Any) -> LLMVerifier:
        return cls(Options.from_config(config))

    # ------------------------------------------------------------------ transports
    def transport(self, tier: str) -> Any:
        with self._lock:
            t = self._transports.get(tier)
            if t is None:
                t = self._transports[tier] = make_transport(self.options.tiers[tier],
                                                            transport=self.options.transport,
                                                            retries=self.options.retries_429)
            return t

    def close(self) -> None:
        with self._lock:
            for t in self._transports.values():
                try:
                    t.close()
                except Exception as exc:  # pragma: no cover - closing is best effort
                    log.debug("closing a verifier transport failed: %s", exc)
            self._transports.clear()

    # ------------------------------------------------------------------ one step, as data
    def assess(self, *, task: str | None, context: list[tuple[Step, bool]], step: Step, tier: str,
               phase: str) -> tuple[ParsedVerdict, Completion, list[dict[str, str]]]:
        """Ask ``tier``'s model about ``step``. Raises a ``VerifierProblem`` when there is no usable
        answer (timeout, HTTP error, unparseable reply)."""
        settings = self.options.tiers[tier]
        messages = build_messages(task=task, context=context[-settings.context_steps:] if settings.context_steps
                                  else [], step=step, phase=phase, max_chars=settings.max_chars)
        reply = self.transport(tier).complete(messages)
        try:
            parsed = parse_reply(reply.text)
        except UnparseableReply as exc:
            raise VerifierUnavailable(f"{settings.model_name} gave no JSON verdict: {exc}") from exc
        return parsed, reply, messages

    # ------------------------------------------------------------------ one event of a run
    def _ledger(self, state: RunState, run: Run) -> Ledger:
        ledger = state.extras.get(PLUGIN)
        if not isinstance(ledger, Ledger):
            ledger = state.extras[PLUGIN] = Ledger()
        run.metadata[PLUGIN] = ledger.summary()
        return ledger

    def plan(self, event: Event, step: Step | None, run: Run, state: RunState) -> tuple[str, str] | None:
        """``(tier, phase)`` if this event calls for an LLM check, else ``None`` (no cost at all)."""
        if step is None:
            return None
        if event.kind == EventKind.TOOL_START:
            if not self.options.pre_execution:
                return None
            tier = self.options.tier_of(step, run, state)
            return (tier, "before") if tier == L3 else None
        if event.kind == EventKind.TOOL_END:
            if step.data.get("blocked") or step.data.get("replayed"):
                return None
            phase = "after"
        elif event.kind == EventKind.FINAL_ANSWER:
            phase = "final"
        elif event.kind in (EventKind.MODEL_END, EventKind.MESSAGE, EventKind.HANDOFF):
            phase = "final" if step.action_type == ActionType.DONE else "after"
        else:
            return None
        tier = self.options.tier_of(step, run, state)
        return None if tier == L1 else (tier, phase)

    def check(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        """Check one event of a live run. Returns verdicts, or raises a ``VerifierProblem`` (after
        accounting for it) when the model gave no usable answer or the run's budget is used up."""
        planned = self.plan(event, step, run, state)
        if planned is None or step is None:
            return []
        tier, phase = planned
        ledger = self._ledger(state, run)
        if ledger.stopped:
            return []
        if (step.index, phase) in ledger.checked:
            return []
        if phase == "after" and event.kind == EventKind.TOOL_END and _pending_key(event, step) in ledger.pre_checked:
            return []  # checked before it ran; not asked twice
        opts = self.options
        if ledger.calls >= opts.max_calls or ledger.tokens >= opts.max_tokens:
            ledger.stopped = (f"budget used up ({ledger.calls}/{opts.max_calls} calls, "
                              f"{ledger.tokens}/{opts.max_tokens} tokens); no more LLM checks in this run")
            run.metadata[PLUGIN] = ledger.summary()
            raise VerifierBudgetExhausted(ledger.stopped)
        ledger.checked.add((step.index, phase))
        context = [(s, s.index in ledger.passed or (s.action_type == ActionType.VERIFY and not s.failed
                                                     and not s.data.get("flagged")))
                   for s in state.steps if s.index < step.index]
        ledger.calls += 1
        settings = opts.tiers[tier]
        try:
            parsed, reply, messages = self.assess(task=run.task or state.task, context=context, step=step,
                                                  tier=tier, phase=phase)
        except VerifierProblem as exc:
            ledger.problems += 1
            ledger.failures_in_a_row += 1
            if ledger.failures_in_a_row >= opts.max_failures:
                ledger.stopped = f"{ledger.failures_in_a_row} failed checks in a row; no more LLM checks in this run"
                exc.args = (f"{exc.args[0] if exc.args else exc}; {ledger.stopped}",)
            run.metadata[PLUGIN] = ledger.summary()
            raise
        ledger.failures_in_a_row = 0
        ledger.tokens += reply.tokens if reply.tokens is not None else _estimate_tokens(messages, reply.text)
        ledger.latency_s += reply.latency_s
        if phase == "before":
            ledger.pre_checked.add(_pending_key(event, step))
        evidence: dict[str, Any] = {"tier": tier, "model": reply.model, "phase": phase,
                                    "latency_ms": round(reply.latency_s * 1000, 1), "tokens": reply.tokens}
        if parsed.confidence is not None:
            evidence["confidence"] = parsed.confidence
        low = parsed.confidence is not None and parsed.confidence < opts.min_confidence
        if parsed.ok or low:
            if phase != "before":
                ledger.passed.add(step.index)
            if low:
                evidence["below_min_confidence"] = parsed.error_class
            run.metadata[PLUGIN] = ledger.summary()
            return [Verdict(ok=True, plugin=PLUGIN, message=f"{tier} check passed ({settings.model_name})",
                            evidence=evidence)]
        ledger.flagged += 1
        run.metadata[PLUGIN] = ledger.summary()
        if parsed.raw_class and parsed.raw_class != parsed.error_class:
            evidence["raw_class"] = parsed.raw_class
        cls = parsed.error_class or "unclassified"
        severity = _cap(parsed.severity, opts.max_severity)
        if severity == Severity.INFO:
            severity = Severity.WARNING  # a failed check is at least a warning
        hint = parsed.hint or tx.hint(cls, "Re-check the last step against the task.")
        if not hint.startswith("[immunity]"):
            hint = f"[immunity] {hint}"
        return [Verdict(ok=False, error_class=cls, severity=severity, plugin=PLUGIN,
                        message=parsed.message or f"{cls} ({tier} check)", hint=hint, evidence=evidence,
                        block=phase == "before" and severity.rank >= opts.block_at.rank)]

    # ------------------------------------------------------------------ the verifier protocol
    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        """``verify(event, step, run, state)`` as core's verifiers have it, for use outside a
        runtime: never raises; problems are logged and kept in :attr:`problems`."""
        try:
            return self.check(event, step, run, state)
        except VerifierProblem as exc:
            msg = f"{type(exc).__name__}: {exc}"
            self.problems.append(msg)
            log.warning("llm verifier: %s", msg)
            return []
