"""Safe recovery: backoff that honours ``Retry-After``, transient-error retries, model fallback,
circuit breakers, and rollback to the last verified checkpoint.

:func:`recover` is the ``immunity_recover`` implementation of this package's plugin. It is not
``trylast``, so it decides before core's default (which retries with a typed hint and aborts on the
run's circuit breaker); it returns ``None`` when it has nothing better, and core's default decides.

In order:

1. the run's circuit breaker (``Config.max_consecutive_failures`` failed steps in a row): ``abort``;
2. a failed model call: after ``fallback_after`` failures in a row (default 2) and when
   ``Config.options["fallback_model"]`` is set, ``fallback`` to that model; a transient failure
   (timeout, 429, 5xx, overloaded, connection reset) is retried with backoff;
3. a failed tool call whose tool has failed ``tool_breaker`` times in a row (default 3): ``skip``
   (go on without it; the rules verifier also blocks further calls to it);
4. a transient tool failure of a tool with no side effects: ``retry`` with backoff. A
   side-effecting tool is never retried blindly (its effect may have happened before the error);
   the model is told to check first;
5. a failure that damaged the run (a failed check after a change, a repeated error, or an error
   verdict) after a change (an edit or a side effect) with a verified checkpoint before it:
   ``rollback`` to that checkpoint with a typed hint (the adapter restores the framework state;
   core's ``RunSession.rollback`` runs the compensating actions). Checkpoints taken after the change
   are marked unverified: the failure shows that state is bad. At most ``max_rollbacks`` per run (2).

Options: ``Config.options["recovery"] = {"max_attempts": 3, "base_delay": 0.5, "max_delay": 30,
"fallback_after": 2, "tool_breaker": 3, "max_rollbacks": 2}`` and ``Config.options["fallback_model"]``.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Mapping
from typing import Any

from immunity import taxonomy as tx
from immunity.interventions.quoting import plain, quote
from immunity.models import ActionType, Event, EventKind, Recovery, RecoveryKind, Run, Severity, Verdict
from immunity.state import RunState

__all__ = ["backoff_delay", "is_transient", "parse_retry_after", "recover"]

_TRANSIENT = re.compile(
    r"\b(429|500|502|503|504|529)\b|timed? ?out|timeout|rate.?limit|too many requests|overloaded|"
    r"temporarily unavailable|service unavailable|bad gateway|gateway time|connection (reset|refused|aborted|error)|"
    r"reset by peer|broken pipe|remote ?disconnected|try again|econnreset|etimedout|server error|internal error",
    re.I)
_RA_HEADER = re.compile(r"retry[-_ ]after['\"]?\s*[:=]\s*['\"]?([^'\",}\n]+)", re.I)
_RA_PHRASE = re.compile(r"(?:try again|retry) in\s+(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|secs|seconds?|m|min|"
                        r"minutes?)?\b", re.I)
_RA_HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def is_transient(error: str | None) -> bool:
    """Whether an error message looks transient: a timeout, 429 / 5xx, overload, connection reset."""
    return bool(error) and bool(_TRANSIENT.search(error or ""))


def _seconds(value: str, now: float | None = None) -> float | None:
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_retry_after(source: str | Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` found in response headers (a mapping) or an error
    message: ``Retry-After: 12``, ``'retry-after': '12'``, an HTTP date, or "try again in 1.5s" /
    "retry in 200ms". ``None`` when there is none."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        for key, value in source.items():
            if str(key).lower() in ("retry-after", "retry_after"):
                return _seconds(str(value), now)
            if str(key).lower() == "retry-after-ms":
                try:
                    return max(0.0, float(value) / 1000)
                except (TypeError, ValueError):
                    return None
        return None
    text = str(source)
    m = _RA_HEADER.search(text)
    if m:
        date = _RA_HTTP_DATE.search(m.group(1) + text[m.end():m.end() + 40])
        got = _seconds(date.group(0), now) if date else _seconds(m.group(1), now)
        if got is not None:
            return got
    m = _RA_PHRASE.search(text)
    if m:
        n, unit = float(m.group(1)), (m.group(2) or "s").lower()
        if unit.startswith("ms") or unit.startswith("milli"):
            return n / 1000
        if unit.startswith("m"):
            return n * 60
        return n
    return None


def backoff_delay(attempt: int, retry_after: float | str | Mapping[str, Any] | None = None, *, base: float = 0.5,
                  factor: float = 2.0, max_delay: float = 30.0, jitter: float = 0.1,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    A ``Retry-After`` (seconds, or headers / a message to find it in) wins when given, capped at
    ``max_delay``; otherwise exponential backoff ``base * factor**attempt`` capped at ``max_delay``,
    plus up to ``jitter`` (a fraction) of random spread so clients do not retry in lockstep."""
    if retry_after is not None and not isinstance(retry_after, int | float):
        retry_after = parse_retry_after(retry_after)
    if retry_after is not None:
        return float(min(max(float(retry_after), 0.0), max_delay))
    delay = min(base * (factor ** max(attempt, 0)), max_delay)
    if jitter:
        delay += delay * jitter * (rng or random).random()
    return float(min(delay, max_delay))


def _opts(config: Any) -> dict[str, Any]:
    return dict((getattr(config, "options", None) or {}).get("recovery") or {})


def _changed(step: Any) -> bool:
    return (step.side_effect or step.action_type == ActionType.EDIT) and not step.failed and \
        not step.data.get("replayed") and not step.data.get("compensated")


def _rollback_target(session: Any, state: RunState) -> Any:
    """The last verified checkpoint from before the run's last change, or ``None``. Checkpoints
    taken after that change are no longer verified (the failure just showed that state is bad):
    they are marked so, in the store too, so adapters, which roll back to the last verified
    checkpoint, go back to before the change."""
    changes = [s.index for s in state.steps if _changed(s)]
    if not changes:
        return None
    last_change = changes[-1]
    cp = session.last_verified_checkpoint(before_step=last_change)
    if cp is None:
        return None
    store = getattr(session.runtime, "store", None)
    for later in session.checkpoints:
        if later.verified and later.step > last_change:
            later.verified = False
            if store is not None:
                store.save("checkpoints", later)
    return cp


def recover(event: Event, verdicts: list[Verdict], run: Run, state: RunState, session: Any) -> Recovery | None:
    config = session.runtime.config
    opts = _opts(config)
    max_attempts = int(opts.get("max_attempts", 3))
    base, max_delay = float(opts.get("base_delay", 0.5)), float(opts.get("max_delay", 30.0))
    extras = state.extras

    if state.consecutive_failures >= config.max_consecutive_failures:
        return Recovery(kind=RecoveryKind.ABORT,
                        reason=f"circuit breaker: {state.consecutive_failures} failed steps in a row "
                               f"(last error: {state.last_error or event.error})")

    if event.kind == EventKind.MODEL_END and event.error:
        n = extras["interventions.model_failures"] = int(extras.get("interventions.model_failures", 0)) + 1
        fallback = (getattr(config, "options", None) or {}).get("fallback_model")
        if fallback and n >= int(opts.get("fallback_after", 2)) and event.model != fallback:
            return Recovery(kind=RecoveryKind.FALLBACK, fallback=str(fallback), max_attempts=max_attempts,
                            reason=f"model {event.model or '?'} failed {n} times in a row (last: {event.error[:200]}); "
                                   f"falling back to {fallback}")
        if is_transient(event.error):
            delay = backoff_delay(n - 1, parse_retry_after(event.error) if event.error else None, base=base,
                                  max_delay=max_delay)
            return Recovery(kind=RecoveryKind.RETRY, delay_s=delay, max_attempts=max_attempts,
                            reason=f"transient model error: {event.error[:200]}")
        return None

    if event.kind != EventKind.TOOL_END or state.last_step is None:
        return None
    step = state.last_step
    tool = step.tool or event.tool or "?"
    if step.data.get("benign_exit"):
        return None  # grep found nothing, diff found a difference: an answer, nothing to recover
    if step.failed:
        breaker = int(opts.get("tool_breaker", 3))
        if state.tool_failures[tool] >= breaker:
            return Recovery(kind=RecoveryKind.SKIP, reason=f"circuit open for {tool}: {state.tool_failures[tool]} "
                                                           "failures in a row",
                            hint=f"[immunity] {tool} has failed {state.tool_failures[tool]} times in a row and is "
                                 "paused for this run. Go on without it: use another tool or finish with what you have.")
        err = step.error or step.result or ""
        if is_transient(err):
            if step.side_effect:
                return Recovery(kind=RecoveryKind.RETRY, max_attempts=1,
                                reason=f"transient error on side-effecting {tool}: not retried automatically",
                                hint=f"[immunity] {tool} failed with a transient error {quote(err, 200)}. It changes "
                                     "state, so it was not retried: check whether it took effect before calling it "
                                     "again.")
            delay = backoff_delay(state.tool_failures[tool] - 1, parse_retry_after(err), base=base,
                                  max_delay=max_delay)
            return Recovery(kind=RecoveryKind.RETRY, delay_s=delay, max_attempts=max_attempts,
                            reason=f"transient error from {tool}: {plain(err, 200)}",
                            hint=f"[immunity] {tool} failed with a transient error {quote(err, 200)}. It is safe to "
                                 f"call it again with the same arguments.")

    damaged = [v for v in verdicts if not v.ok and Severity(v.severity).rank >= Severity.ERROR.rank]
    failed_check = step.failed and step.action_type == ActionType.VERIFY
    repeated = step.failed and state.error_repeats.get(state.last_error, 0) >= 2
    if not (damaged or failed_check or repeated):
        return None
    rollbacks = int(extras.get("interventions.rollbacks", 0))
    if rollbacks >= int(opts.get("max_rollbacks", 2)):
        return None
    cp = _rollback_target(session, state)
    if cp is None:
        return None
    extras["interventions.rollbacks"] = rollbacks + 1
    cls = damaged[0].error_class if damaged else (tx.REPEATED_TOOL_ERROR if repeated else tx.TOOL_ERROR)
    why = plain(damaged[0].message) if damaged else quote(step.error or step.result or "a check failed")
    return Recovery(kind=RecoveryKind.ROLLBACK, checkpoint_id=cp.checkpoint_id,
                    reason=f"{cls} at step {step.index}; rolling back to verified step {cp.step}",
                    hint=f"[immunity] Your changes after step {cp.step} were undone because {tool} failed ({cls}): "
                         f"{why}. {tx.hint(cls)} Take a different approach from that point.")
