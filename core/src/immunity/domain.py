"""Domains: how native actions map to universal action types, plus domain checks.

A domain is data plus optional check functions::

    from immunity.domain import Domain, Rule

    billing = Domain(
        name="billing",
        rules=[
            Rule(tool="lookup_invoice", action="SEARCH"),
            Rule(tool="refund", action="EDIT", side_effect=True),
            Rule(tool="run_sql", action="EDIT", when=r"\\b(update|delete|insert)\\b", confidence=0.9),
            Rule(tool="run_sql", action="SEARCH"),
        ],
        checks=[my_check],          # each: check(event, step, run, state) -> Verdict | None
    )

Rules are tried in order; the first whose ``tool`` (exact name or regex) and ``when`` (a regex on
the arguments rendered as text) match wins. A tool no rule matches falls back to
:func:`heuristic_mapping` and is counted in :data:`UNMAPPED`, so users can see what is unmapped.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from immunity.models import ActionType

__all__ = ["ActionMapping", "Domain", "Rule", "UNMAPPED", "args_text", "heuristic_mapping"]


@dataclass(frozen=True)
class ActionMapping:
    """The universal action of a native action, with how sure the mapping is."""

    action_type: ActionType
    confidence: float = 1.0
    side_effect: bool = False
    needs_verification: bool = False
    mapped_by: str = "heuristic"
    destructive: bool = False


def args_text(arguments: dict[str, Any] | None, text: str | None = None, limit: int = 4000) -> str:
    """Arguments (and message text) rendered as one string for pattern matching."""
    parts: list[str] = []
    if arguments:
        if len(arguments) == 1:
            (v,) = arguments.values()
            parts.append(v if isinstance(v, str) else json.dumps(v, default=str))
        else:
            parts.append(json.dumps(arguments, default=str, sort_keys=True))
    if text:
        parts.append(text)
    return " ".join(parts)[:limit]


@dataclass
class Rule:
    tool: str
    action: str | ActionType
    when: str | None = None
    confidence: float = 1.0
    side_effect: bool = False
    needs_verification: bool = False
    destructive: bool = False
    _tool_re: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _when_re: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.action = ActionType.parse(self.action)
        if any(c in self.tool for c in "^$*+?[]()|\\"):
            self._tool_re = re.compile(self.tool, re.I)
        if self.when:
            self._when_re = re.compile(self.when, re.I | re.S)

    def matches(self, tool: str | None, text: str) -> bool:
        if not self.matches_tool(tool):
            return False
        return self._when_re is None or bool(self._when_re.search(text))

    def matches_tool(self, tool: str | None) -> bool:
        """Whether the rule is for this tool (``when`` not looked at)."""
        name = tool or ""
        if self._tool_re is not None:
            return self._tool_re.fullmatch(name) is not None
        return name.lower() == self.tool.lower()


Check = Callable[..., Any]


@dataclass
class Domain:
    """A named mapping table plus checks. ``checks`` are called like ``immunity_verify`` (with
    keyword arguments ``event, step, run, state``, and ``config`` if the check accepts it) for runs
    of this domain only."""

    name: str
    rules: Sequence[Rule] = ()
    checks: Sequence[Check] = ()
    description: str = ""
    error_classes: dict[str, str] = field(default_factory=dict)
    #: optional ``judge_result(step) -> bool | None``: for a VERIFY step that did not error, whether
    #: the check passed, read from its output (``False`` marks it failed; ``None`` = can't tell)
    judge_result: Callable[[Any], bool | None] | None = None
    #: optional ``signals(step, state) -> dict[str, float]``: the domain's own content signals of
    #: a step, for learned risk models (a fixed set of names, O(1) per step; see
    #: :mod:`immunity.learning.signals`)
    signals: Callable[[Any, Any], dict[str, float]] | None = None

    def map_action(self, tool: str | None, arguments: dict[str, Any] | None = None,
                   text: str | None = None) -> ActionMapping | None:
        blob = args_text(arguments, None if tool else text)
        for rule in self.rules:
            if rule.matches(tool, blob):
                return ActionMapping(ActionType.parse(rule.action), rule.confidence, rule.side_effect,
                                     rule.needs_verification, mapped_by=self.name, destructive=rule.destructive)
        return None


#: Counts of tools that no domain rule mapped, as ``(domain, tool)``. Read it to see what is unmapped.
UNMAPPED: Counter[tuple[str, str]] = Counter()
_unmapped_lock = threading.Lock()


def count_unmapped(domain: str | None, tool: str | None) -> None:
    with _unmapped_lock:
        UNMAPPED[(domain or "-", tool or "<message>")] += 1


_NAME_HINTS: list[tuple[ActionType, tuple[str, ...]]] = [
    (ActionType.ESCALATE, ("escalate", "transfer_to_human", "handoff_to_human", "human_agent")),
    (ActionType.DELEGATE, ("transfer_to", "handoff", "delegate", "ask_agent", "assign")),
    (ActionType.DONE, ("submit", "finish", "final_answer", "complete", "close_")),
    (ActionType.VERIFY, ("test", "verify", "validate", "check", "lint", "assert")),
    (ActionType.EDIT, ("edit", "write", "update", "create", "delete", "remove", "cancel", "book", "insert",
                       "modify", "set_", "patch", "replace", "refund", "send", "post", "put", "add_")),
    (ActionType.SEARCH, ("search", "find", "get", "list", "read", "lookup", "look_up", "fetch", "query",
                         "retrieve", "browse", "open", "view", "show", "load", "describe")),
    (ActionType.EXECUTE, ("run", "exec", "execute", "bash", "shell", "python", "compute", "calculate", "eval")),
    (ActionType.PLAN, ("think", "plan", "reason", "outline")),
    (ActionType.RESPOND, ("respond", "reply", "say", "message", "answer")),
]


def heuristic_mapping(tool: str | None, arguments: dict[str, Any] | None = None,
                      text: str | None = None) -> ActionMapping:
    """Guess an action type from the tool's name (then its arguments) with a low confidence."""
    if not tool:
        body = (text or "").strip()
        if not body:
            return ActionMapping(ActionType.OTHER, 0.3)
        return ActionMapping(ActionType.RESPOND, 0.5)
    name = tool.lower()
    for action, hints in _NAME_HINTS:
        if any(h in name for h in hints):
            side = action in (ActionType.EDIT,)
            return ActionMapping(action, 0.5, side_effect=side)
    return ActionMapping(ActionType.OTHER, 0.2)
