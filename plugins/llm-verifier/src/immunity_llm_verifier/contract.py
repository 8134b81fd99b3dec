"""The JSON contract between immunity and the verifying model: the prompt that asks for it and
the parser that reads it back.

The model is asked for exactly one JSON object::

    {"ok": false, "error_class": "scope_creep", "severity": "error", "confidence": 0.8,
     "message": "what is wrong, in one sentence", "hint": "what the agent should do instead"}

``error_class`` is one of :data:`ERROR_CLASSES` (``"none"`` when ``ok`` is true). Replies are read
robustly: code fences, text around the object, ``"true"`` written as a string, ``hallucination``
for ``hallucinated_state``. A reply with no usable object is an :class:`UnparseableReply`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from immunity import taxonomy as tx
from immunity.models import Severity, Step

__all__ = ["ERROR_CLASSES", "ParsedVerdict", "UnparseableReply", "build_messages", "parse_reply", "render_step"]

#: The classes the verifier may answer with (``none`` = no problem).
ERROR_CLASSES: tuple[str, ...] = (
    tx.GOAL_DRIFT, tx.CONTRADICTION, tx.HALLUCINATED_STATE, tx.INCOMPLETE, tx.SCOPE_CREEP, tx.PREMATURE_DONE,
    tx.WRONG_PARAMETERS, tx.MISREAD_OUTPUT, "none",
)

_ALIASES = {
    "hallucination": tx.HALLUCINATED_STATE, "hallucinated": tx.HALLUCINATED_STATE,
    "drift": tx.GOAL_DRIFT, "off_task": tx.GOAL_DRIFT, "task_derailment": tx.GOAL_DRIFT,
    "contradicts": tx.CONTRADICTION, "inconsistent": tx.CONTRADICTION, "inconsistency": tx.CONTRADICTION,
    "incomplete_answer": tx.INCOMPLETE, "partial": tx.INCOMPLETE,
    "scope": tx.SCOPE_CREEP, "out_of_scope": tx.SCOPE_CREEP,
    "premature_termination": tx.PREMATURE_DONE, "premature": tx.PREMATURE_DONE, "unverified_done": tx.PREMATURE_DONE,
    "wrong_params": tx.WRONG_PARAMETERS, "wrong_arguments": tx.WRONG_PARAMETERS, "bad_arguments": tx.WRONG_PARAMETERS,
    "misread": tx.MISREAD_OUTPUT, "misread_result": tx.MISREAD_OUTPUT, "ignored_output": tx.MISREAD_OUTPUT,
    "ok": "none", "pass": "none", "passed": "none", "no_error": "none", "": "none", "null": "none",
}

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)

SYSTEM = """You check one step of an AI agent's run while the run is going on.
You get the task, the recent steps (steps marked [verified] passed a check), and the step to check.
Decide whether the step is sound. Judge only from what is shown; do not assume facts not in it.

Answer with exactly one JSON object and nothing else:
{{"ok": true|false, "error_class": "<class>", "severity": "info|warning|error|critical",
 "confidence": <0..1>, "message": "<what is wrong, one sentence>", "hint": "<what the agent should do instead>"}}

error_class is one of:
{classes}
Use "none" with ok=true when the step is fine. When in doubt between a problem and none, answer none."""


def _class_list() -> str:
    lines = []
    for name in ERROR_CLASSES:
        if name == "none":
            lines.append("- none: the step is fine.")
            continue
        cls = tx.get(name)
        lines.append(f"- {name}: {cls.definition if cls else name}")
    return "\n".join(lines)


def _clip(text: Any, limit: int) -> str:
    s = text if isinstance(text, str) else json.dumps(text, default=str, ensure_ascii=False)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 20] + f" ...[{len(s) - limit + 20} more]"


def render_step(step: Step, max_chars: int, *, verified: bool = False, pending: bool = False) -> str:
    """One step as a line (or a few) of the prompt."""
    mark = " [verified]" if verified else ""
    head = f"#{step.index} {step.action_type.value}{mark}"
    if step.tool:
        out = f"{head} {step.tool}({_clip(step.arguments or {}, max_chars // 2)})"
        if pending:
            return out + "\n   (not executed yet)"
        if step.error or step.return_code not in (None, 0):
            rc = f" return code {step.return_code}" if step.return_code not in (None, 0) else ""
            out += f"\n   error{rc}: {_clip(step.error or step.result or '', max_chars)}"
        elif step.result is not None:
            out += f"\n   result: {_clip(step.result, max_chars)}"
        return out
    who = f" ({step.agent})" if step.agent else ""
    return f"{head} message{who}: {_clip(step.text or '', max_chars)}"


def build_messages(*, task: str | None, context: list[tuple[Step, bool]], step: Step, phase: str,
                   max_chars: int) -> list[dict[str, str]]:
    """The system and user messages for one check. ``context`` is ``(step, verified)`` pairs,
    oldest first; ``phase`` is ``before`` (the call has not run), ``after`` or ``final``."""
    what = {"before": "The step below is about to run; judge whether it should.",
            "after": "The step below has run; judge the step and what the agent can conclude from its result.",
            "final": "The step below is the agent's final answer; judge whether the task is really done."}[phase]
    parts = [f"TASK:\n{_clip(task or '(not given)', max_chars * 2)}", ""]
    if context:
        parts.append("RECENT STEPS (oldest first):")
        parts += [render_step(s, max_chars, verified=v) for s, v in context]
    else:
        parts.append("RECENT STEPS: none")
    parts += ["", what, "STEP TO CHECK:", render_step(step, max_chars, pending=phase == "before"), "",
              "Reply with the JSON object only."]
    return [{"role": "system", "content": SYSTEM.format(classes=_class_list())},
            {"role": "user", "content": "\n".join(parts)}]


class UnparseableReply(ValueError):
    """The model's reply holds no JSON verdict."""


@dataclass
class ParsedVerdict:
    ok: bool
    error_class: str | None
    severity: Severity
    message: str
    hint: str | None
    confidence: float | None
    raw_class: str | None = None


def _candidates(text: str) -> list[str]:
    found = [m.group(1) for m in _FENCE.finditer(text)]
    return [*found, text]


def _objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    for chunk in _candidates(text):
        i = chunk.find("{")
        while i != -1:
            try:
                obj, _end = decoder.raw_decode(chunk, i)
            except ValueError:
                i = chunk.find("{", i + 1)
                continue
            if isinstance(obj, dict):
                out.append(obj)
            i = chunk.find("{", i + 1)
    return out


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "ok", "pass", "passed", "1"):
            return True
        if v in ("false", "no", "fail", "failed", "0"):
            return False
    return None


def normalise_class(value: Any) -> str:
    """A class name as written by a model, normalised: ``"Scope creep"`` -> ``scope_creep``."""
    name = re.sub(r"[\s\-]+", "_", str(value or "").strip().lower())
    return _ALIASES.get(name, name)


def _severity(value: Any, default: Severity) -> Severity:
    try:
        return Severity(str(value).strip().lower())
    except ValueError:
        aliases = {"low": Severity.WARNING, "medium": Severity.ERROR, "high": Severity.ERROR, "minor": Severity.WARNING,
                   "major": Severity.ERROR, "fatal": Severity.CRITICAL, "severe": Severity.CRITICAL}
        return aliases.get(str(value).strip().lower(), default)


def parse_reply(text: str) -> ParsedVerdict:
    """Read a verdict out of a model's reply (see the module docstring)."""
    objects = [o for o in _objects(text or "") if "ok" in o or "error_class" in o or "verdict" in o]
    if not objects:
        raise UnparseableReply(f"no JSON verdict in the reply: {(text or '')[:160]!r}")
    obj = objects[0]
    raw_class = obj.get("error_class", obj.get("class"))
    cls = normalise_class(raw_class)
    ok = _bool(obj.get("ok", obj.get("verdict")))
    if ok is None:
        ok = cls == "none"
    try:
        confidence = float(obj["confidence"]) if obj.get("confidence") is not None else None
    except (TypeError, ValueError):
        confidence = None
    message = str(obj.get("message") or obj.get("reasoning") or obj.get("reason") or "").strip()
    hint = obj.get("hint")
    hint = str(hint).strip() if hint else None
    if ok:
        return ParsedVerdict(True, None, Severity.INFO, message, None, confidence, raw_class=None)
    if cls == "none":
        cls = "unclassified"
    elif cls not in ERROR_CLASSES and tx.get(cls) is None:
        cls = "unclassified"
    return ParsedVerdict(False, cls, _severity(obj.get("severity"), Severity.ERROR), message, hint, confidence,
                         raw_class=None if raw_class is None else str(raw_class))
