"""Per-step features of a run prefix, computed from :class:`~immunity.state.RunState` in O(1).

Two views of the same moment of a run:

- a fixed-length numeric vector (:data:`FEATURE_NAMES`): rates, streaks, verification state,
  the shape of the action mix. The risk model reads it.
- a *signature*: a short bag of structural tokens (the last action types and their n-grams, the
  tool, the normalised error, bucketed streaks). The embedder turns it into the vector that failure
  patterns are matched against.

Both depend only on the steps seen so far (never on the run's outcome or length), and neither
reads any text beyond the current step's own error message, so they carry over between agents,
models and domains. A :class:`StepTracker` keeps the few running counters :class:`RunState` does not
(the largest repeat count so far), one update per step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunity.learning.signals import CONTENT_NAMES, ContentTracker, SignalFn, domain_signals
from immunity.models import ActionType, Step
from immunity.state import RunState

ACTION_TYPES: tuple[str, ...] = tuple(a.value for a in ActionType)

#: The numeric features, in vector order.
FEATURE_NAMES: tuple[str, ...] = (
    "log_steps",
    "error_rate",
    "log_errors",
    "consecutive_failures",
    "last_failed",
    "identical_streak",
    "near_streak",
    "ping_pong",
    "log_max_repeat",
    "unique_action_rate",
    "repeated_error",
    "log_steps_since_verify",
    "log_edits_since_verify",
    "ever_verified",
    "last_verify_failed",
    "verify_fail_rate",
    "log_steps_without_new_info",
    "tool_diversity",
    "log_result_chars",
    "log_text_chars",
    "log_tokens_per_step",
    *(f"frac_{a.lower()}" for a in ACTION_TYPES),
    *(f"last_{a.lower()}" for a in ACTION_TYPES),
    *CONTENT_NAMES,
)
N_FEATURES = len(FEATURE_NAMES)
_ACT_POS = {a: i for i, a in enumerate(ACTION_TYPES)}
_NO_CONTENT = [0.0] * len(CONTENT_NAMES)

#: Raw signals that pattern predicates may test (see :func:`predicates_hold`).
SIGNAL_NAMES: tuple[str, ...] = (
    "step",
    "errors",
    "consecutive_failures",
    "last_failed",
    "identical_streak",
    "near_streak",
    "ping_pong",
    "max_repeat",
    "repeated_error",
    "steps_since_verify",
    "edits_since_verify",
    "last_verify_failed",
    "steps_without_new_info",
)

_WORD = re.compile(r"[a-z][a-z0-9]+")


def _bucket(x: int) -> str:
    if x <= 2:
        return str(max(x, 0))
    if x <= 4:
        return "3to4"
    if x <= 8:
        return "5to8"
    return "9plus"


def _slug(text: str | None, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())[:limit] or "none"


@dataclass
class StepView:
    """Features of a run after one more step."""

    step: int
    action_type: str
    numeric: np.ndarray
    signals: dict[str, float]
    signature: str
    #: the domain's own signals (``Domain.signals``), by name
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class StepTracker:
    """Running counters per run that :class:`RunState` does not keep (updated in O(1) per step)."""

    max_repeat: int = 0
    seen: int = 0
    views: list[StepView] = field(default_factory=list)
    content: ContentTracker = field(default_factory=ContentTracker)
    #: the run's domain signal function, if its domain has one
    domain_fn: SignalFn | None = None

    def update(self, state: RunState) -> StepView:
        """Fold the state's latest step in and return the features of the prefix so far."""
        step = state.last_step
        if step is None:
            raise ValueError("the run has no step yet")
        sig = step.data.get("_sig")
        if sig is not None:
            self.max_repeat = max(self.max_repeat, state.signature_counts.get(sig, 0))
        self.seen = state.n_steps
        content = self.content.update(step)
        view = compute_view(state, step, self.max_repeat, content)
        view.extra = domain_signals(self.domain_fn, step, state)
        return view


def compute_view(state: RunState, step: Step, max_repeat: int,
                 content: dict[str, float] | None = None) -> StepView:
    n = max(state.n_steps, 1)
    failed = step.failed
    repeated_error = state.error_counts.get(state.last_error, 0) if failed and state.last_error else 0
    n_verify = state.verified_ok + state.verified_failed
    last_verify_failed = state.last_verify_ok is False
    act = step.action_type.value
    signals: dict[str, float] = {
        "step": float(state.n_steps - 1),
        "errors": float(state.errors),
        "consecutive_failures": float(state.consecutive_failures),
        "last_failed": float(failed),
        "identical_streak": float(state.identical_streak),
        "near_streak": float(state.near_streak),
        "ping_pong": float(state.ping_pong),
        "max_repeat": float(max_repeat),
        "repeated_error": float(repeated_error),
        "steps_since_verify": float(state.steps_since_verify),
        "edits_since_verify": float(state.edits_since_verify),
        "last_verify_failed": float(last_verify_failed),
        "steps_without_new_info": float(state.steps_without_new_info),
    }
    vals: list[float] = [
        math.log1p(state.n_steps),
        state.errors / n,
        math.log1p(state.errors),
        min(state.consecutive_failures, 10),
        float(failed),
        min(state.identical_streak - 1, 10),
        min(state.near_streak - 1, 10),
        min(state.ping_pong, 10),
        math.log1p(max(max_repeat - 1, 0)),
        len(state.signature_counts) / n,
        min(repeated_error, 10),
        math.log1p(state.steps_since_verify),
        math.log1p(state.edits_since_verify),
        float(n_verify > 0),
        float(last_verify_failed),
        state.verified_failed / n_verify if n_verify else 0.0,
        math.log1p(state.steps_without_new_info),
        len(state.tool_counts) / n,
        math.log1p(len(step.result or step.error or "")),
        math.log1p(len(step.text or "")),
        math.log1p(state.tokens / n),
    ]
    # one list, one array: the same values as filling a zero vector slot by slot
    counts = state.action_counts
    vals.extend([counts.get(a, 0) / n for a in ACTION_TYPES])
    onehot = [0.0] * len(ACTION_TYPES)
    onehot[_ACT_POS[act]] = 1.0
    vals.extend(onehot)
    vals.extend([content.get(name, 0.0) for name in CONTENT_NAMES] if content else _NO_CONTENT)
    vec = np.array(vals, dtype=np.float64)
    return StepView(step=state.n_steps - 1, action_type=act, numeric=vec, signals=signals,
                    signature=signature_text(state, step, max_repeat, repeated_error))


def signature_text(state: RunState, step: Step, max_repeat: int = 0, repeated_error: int = 0) -> str:
    """The structural tokens of the latest step, space-separated (lower-case alphanumeric words, so
    any tokenising embedder reads them the same way)."""
    acts = [s.action_type.value.lower() for s in state.steps[-3:]]
    a0 = acts[-1]
    a1 = acts[-2] if len(acts) >= 2 else "start"
    a2 = acts[-3] if len(acts) >= 3 else "start"
    toks = [f"act{a0}", f"prev{a1}", f"prevprev{a2}", f"bi{a1}x{a0}", f"tri{a2}x{a1}x{a0}"]
    if step.tool:
        toks.append(f"tool{_slug(step.tool)}")
    else:
        toks.append("message")
    if step.failed:
        toks.append("failed")
        toks.append(f"failedx{a0}")
        words = _WORD.findall(state.last_error or "")[:6]
        toks.extend(f"err{w}" for w in words)
        if repeated_error >= 2:
            toks.append(f"repeatederror{_bucket(repeated_error)}")
    toks.append(f"errors{_bucket(state.errors)}")
    toks.append(f"consecutive{_bucket(state.consecutive_failures)}")
    toks.append(f"streak{_bucket(state.identical_streak - 1)}")
    toks.append(f"near{_bucket(state.near_streak - 1)}")
    if state.ping_pong:
        toks.append(f"pingpong{_bucket(state.ping_pong)}")
    toks.append(f"maxrepeat{_bucket(max_repeat - 1)}")
    toks.append(f"noinfo{_bucket(state.steps_without_new_info)}")
    toks.append(f"sinceverify{_bucket(state.steps_since_verify)}")
    toks.append(f"unverifiededits{_bucket(state.edits_since_verify)}")
    if state.last_verify_ok is None:
        toks.append("verifynever")
    else:
        toks.append("verifyok" if state.last_verify_ok else "verifyfailed")
    return " ".join(toks)


def signals_dict(view: StepView) -> dict[str, Any]:
    return dict(view.signals)
