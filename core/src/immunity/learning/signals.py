"""Content signals of a run prefix: what the steps *say*, not only their shape.

Computed once per step, in O(1) (a bounded slice of the step's own text, a few running counters
and a window over the last :data:`WINDOW` steps), from what the step already holds: the tool's
output and error, the agent's words, the action type. No model call, nothing that reads the
run's outcome or length.

Core keeps the generic signals (:data:`CONTENT_NAMES`): the tool-output lexicon (tracebacks,
HTTP status codes, empty results, "not found", permission errors), the agent's own words
(hedging, apologies, "I cannot", changes of plan), state-changing actions taken before any
lookup, and features over the last few steps. A domain adds its own through
``Domain.signals`` (a function ``signals(step, state) -> dict[str, float]`` with a fixed set of
names for that domain; see ``immunity_coding.signals`` and ``immunity_support.signals``). The
learned pack records the names its model reads, so a domain's names never change another
domain's model.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from immunity.models import ActionType, Step

#: Steps in the sliding window of the sequence features.
WINDOW = 5
#: How much of a step's text is read: its first and its last characters (outputs put their
#: summary, e.g. a test runner's counts or a traceback's last line, at the end).
HEAD, TAIL = 2000, 1000

#: A domain's per-step signal function (see the module docstring).
SignalFn = Callable[[Step, Any], dict[str, float]]

CONTENT_NAMES: tuple[str, ...] = (
    "c_traceback",
    "c_log_tracebacks",
    "c_http_error",
    "c_empty_result",
    "c_not_found",
    "c_permission",
    "c_error_word",
    "c_log_output_problems",
    "c_hedge",
    "c_apology",
    "c_cannot",
    "c_plan_change",
    "c_log_agent_negative",
    "c_agent_negative_rate",
    "c_changes_before_lookup",
    "c_log_changes",
    "c_w_fail_rate",
    "c_w_problem_rate",
    "c_w_distinct_tools",
    "c_w_negative_rate",
    "c_w_edit_rate",
)

# Phrases are looked for in the lower-cased text with ``in`` (a C-speed substring search); the two
# regular expressions only run when a cheap substring check says they may match.
_TRACEBACK_LINE = re.compile(r"^\s*[\w.]{1,200}(?:Error|Exception): ", re.M)
_HTTP = re.compile(r"\b(?:http(?:/\d(?:\.\d)?)?\s*|status(?: code)?[:= ]+)([45]\d\d)\b")
_EMPTY = {"[]", "{}", "null", "none", "no results", "no results found", "no result", "0 rows", "empty", ""}
_NOT_FOUND = ("not found", "no such file", "does not exist", "doesn't exist", "cannot find", "could not find",
              "unknown user", "unknown id", "unknown reservation", "unknown order", "unknown command",
              "no matching", "is not defined", "modulenotfounderror", "no module named")
_PERMISSION = ("permission denied", "forbidden", "unauthorized", "unauthorised", "access denied", "not allowed",
               "operation not permitted")
_ERROR_WORD = ("error", "failed", "failure", "exception", "invalid")
_HEDGE = ("maybe", "perhaps", " might ", "not sure", "unsure", "it seems", "seems to", "appears to", "i think",
          "i believe", "possibly", "probably", "hopefully", "let me try", "try again")
_APOLOGY = ("sorry", "apologi", "unfortunately", "regret")
_CANNOT = ("i cannot", "i can't", "i can not", "i am unable", "i'm unable", "i am not able", "unable to",
           "not able to", "not possible to", "isn't possible", "is not possible")
_PLAN_CHANGE = ("instead", "actually", "alternatively", "different approach", "another approach",
                "let me reconsider", "let me rethink", "let me revert", "let me undo", "let me go back", "wait,",
                "on second thought", "that didn't work", "that did not work", "doesn't work", "did not work")


def _has(low: str, phrases: tuple[str, ...]) -> float:
    if low:
        for p in phrases:  # a plain loop: no generator per call
            if p in low:
                return 1.0
    return 0.0


def _traceback(text: str, low: str) -> float:
    if "traceback (most recent call last)" in low:
        return 1.0
    if ("Error: " in text or "Exception: " in text) and _TRACEBACK_LINE.search(text):
        return 1.0
    return 0.0


def _http(low: str) -> float:
    return 1.0 if ("http" in low or "status" in low) and _HTTP.search(low) else 0.0


_LOOKUP = {ActionType.SEARCH.value}
_MESSAGE_ACTS = {ActionType.RESPOND.value, ActionType.PLAN.value, ActionType.DONE.value,
                 ActionType.ESCALATE.value, ActionType.DELEGATE.value}


def bounded(text: str | None) -> str:
    """The part of a text the signals read (its head and its tail)."""
    if not text:
        return ""
    if len(text) <= HEAD + TAIL:
        return text
    return text[:HEAD] + "\n" + text[-TAIL:]


@dataclass
class ContentTracker:
    """Running content counters of one run (one :meth:`update` per step, O(1))."""

    tracebacks: int = 0
    output_problems: int = 0
    agent_negative: int = 0
    agent_texts: int = 0
    lookups: int = 0
    changes: int = 0
    changes_before_lookup: int = 0
    window: deque[tuple[float, float, str, float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def update(self, step: Step) -> dict[str, float]:
        act = step.action_type.value
        output = bounded(step.error or "") + ("\n" if step.error and step.result else "") + bounded(step.result)
        words = bounded(step.text) if (step.text and (not step.tool or act in _MESSAGE_ACTS)) else ""
        thought = step.data.get("thought") if isinstance(step.data.get("thought"), str) else None
        if thought:
            words = (words + "\n" + bounded(thought)) if words else bounded(thought)
        low = output.lower()
        wlow = words.lower()
        tb = _traceback(output, low)
        http = _http(low)
        empty = 1.0 if step.tool and not step.failed and low.strip().rstrip(".") in _EMPTY else 0.0
        nf = _has(low, _NOT_FOUND)
        perm = _has(low, _PERMISSION)
        errw = _has(low, _ERROR_WORD)
        problem = float(bool(tb or http or nf or perm or step.failed))
        hedge = _has(wlow, _HEDGE)
        apology = _has(wlow, _APOLOGY)
        cannot = _has(wlow, _CANNOT)
        plan = _has(wlow, _PLAN_CHANGE)
        negative = float(bool(apology or cannot or plan))
        self.tracebacks += int(tb)
        self.output_problems += int(problem)
        if words:
            self.agent_texts += 1
            self.agent_negative += int(negative)
        if act in _LOOKUP:
            self.lookups += 1
        changing = act == ActionType.EDIT.value or step.side_effect
        if changing:
            self.changes += 1
            if self.lookups == 0:
                self.changes_before_lookup += 1
        self.window.append((float(step.failed), problem, step.tool or "", negative, float(changing)))
        w = self.window
        nw = len(w)
        return {
            "c_traceback": tb,
            "c_log_tracebacks": math.log1p(self.tracebacks),
            "c_http_error": http,
            "c_empty_result": empty,
            "c_not_found": nf,
            "c_permission": perm,
            "c_error_word": errw,
            "c_log_output_problems": math.log1p(self.output_problems),
            "c_hedge": hedge,
            "c_apology": apology,
            "c_cannot": cannot,
            "c_plan_change": plan,
            "c_log_agent_negative": math.log1p(self.agent_negative),
            "c_agent_negative_rate": self.agent_negative / self.agent_texts if self.agent_texts else 0.0,
            "c_changes_before_lookup": float(min(self.changes_before_lookup, 5)),
            "c_log_changes": math.log1p(self.changes),
            "c_w_fail_rate": sum(x[0] for x in w) / nw,
            "c_w_problem_rate": sum(x[1] for x in w) / nw,
            "c_w_distinct_tools": len({x[2] for x in w}) / nw,
            "c_w_negative_rate": sum(x[3] for x in w) / nw,
            "c_w_edit_rate": sum(x[4] for x in w) / nw,
        }


def domain_signals(fn: SignalFn | None, step: Step, state: Any) -> dict[str, float]:
    """A domain's signals for this step (empty without a function; a failing function gives
    nothing rather than breaking the run: the features are then the core ones only)."""
    if fn is None:
        return {}
    try:
        out = fn(step, state)
    except Exception:  # fail open: a domain's signal bug never breaks the agent
        return {}
    return {str(k): float(v) for k, v in (out or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
