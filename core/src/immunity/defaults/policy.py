"""Built-in plugin: the default intervention policy and recovery.

- A blocking verdict becomes a block, a critical one a stop, the others a hint for the next model
  call: the verdict's hint, or the error class's hint from the taxonomy.
- Tolerance: at most ``Config.max_interventions`` hints per run, at least ``Config.cooldown_steps``
  steps between two, and never the same hint twice in a row (those become ``warn``: recorded only).
- Recovery: a failed tool or model call is retried with a typed hint; the run's circuit breaker
  aborts it after ``Config.max_consecutive_failures`` failed steps in a row.
"""

from __future__ import annotations

from typing import Any

import pluggy

from immunity import taxonomy as tx
from immunity.error_identity import quote_error
from immunity.models import (
    Event,
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Run,
    Severity,
    Verdict,
)
from immunity.state import RunState

hookimpl = pluggy.HookimplMarker("immunity")


def hint_for(verdict: Verdict) -> str:
    if verdict.hint:
        return verdict.hint
    cls = tx.get(verdict.error_class)
    base = cls.hint if cls else "Something went wrong in the last step."
    return f"[immunity] {verdict.message}. {base}" if verdict.message else f"[immunity] {base}"


def tolerate(kind: InterventionKind, text: str, state: RunState, config: Any) -> InterventionKind:
    """The tolerance layer: downgrade a hint to ``warn`` when the run had enough of them."""
    if kind != InterventionKind.HINT:
        return kind
    if state.interventions >= config.max_interventions:
        return InterventionKind.WARN
    if state.last_intervention_step is not None and state.n_steps - state.last_intervention_step < config.cooldown_steps:
        return InterventionKind.WARN
    if text == state.last_hint:
        return InterventionKind.WARN
    return kind


class DefaultSelector:
    """Verdict -> intervention, with the tolerance layer."""

    def __init__(self, config: Any, store: Any = None):
        self.config = config

    def select(self, verdicts: list[Verdict], event: Event, run: Run, state: RunState) -> Intervention | None:
        v = verdicts[0]
        text = hint_for(v)
        if v.severity == Severity.CRITICAL:
            kind = InterventionKind.STOP
            text = f"Stopped by immunity: {v.message or v.error_class}."
        elif v.block and event.kind == EventKind.TOOL_START:
            kind = InterventionKind.BLOCK
        else:
            kind = tolerate(InterventionKind.HINT, text, state, self.config)
        return Intervention(kind=kind, text=text, error_class=v.error_class, verdict_plugin=v.plugin,
                            pattern_id=v.evidence.get("pattern_id"), variant="default", source="default")

    def update(self, run: Run, session: Any = None) -> None:
        return None


@hookimpl
def immunity_register_selectors(register: Any) -> None:
    register("default", DefaultSelector)


@hookimpl(trylast=True)
def immunity_intervene(verdicts: list[Verdict], event: Event, run: Run, state: RunState,
                       session: Any) -> Intervention | None:
    return session.runtime.selector.select(verdicts, event, run, state)


@hookimpl(trylast=True)
def immunity_recover(event: Event, verdicts: list[Verdict], run: Run, state: RunState,
                     session: Any) -> Recovery | None:
    config = session.runtime.config
    if state.consecutive_failures >= config.max_consecutive_failures:
        return Recovery(kind=RecoveryKind.ABORT,
                        reason=f"circuit breaker: {state.consecutive_failures} failed steps in a row "
                               f"(last error: {state.last_error or event.error})")
    if event.kind == EventKind.TOOL_END and event.failed:
        last = state.last_step
        if last is not None and last.data.get("benign_exit"):
            return None  # grep found nothing, diff found a difference: an answer, not a failure
        cls = verdicts[0].error_class if verdicts else tx.TOOL_ERROR
        text = state.last_error_text if last is not None and last.failed and state.last_error_text else \
            (event.error or event.result or "")
        return Recovery(kind=RecoveryKind.RETRY, reason=cls or tx.TOOL_ERROR,
                        hint=f"[immunity] {event.tool} failed ({cls}): {quote_error(text, 300)}. "
                             f"{tx.hint(cls, '')}".strip())
    if event.kind == EventKind.MODEL_END and event.error:
        return Recovery(kind=RecoveryKind.RETRY, reason="model_error", delay_s=1.0, max_attempts=3)
    return None
