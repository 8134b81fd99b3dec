"""immunity-coding: the coding domain for immunity.

Maps coding agents' native actions (shell commands read by their text, editor tools, ``submit``)
to universal action types, and adds four checks: a destructive shell command (blocked), finishing
with unverified edits, an edit outside the task's scope, and re-running a failed command with no
change since. See ``README.md`` for the mapping table and each check's trigger and hint.

::

    from immunity import Runtime
    rt = Runtime(domain="coding", store="immunity.db", coding={"root": "/testbed"})
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunity.domain import ActionMapping, Domain, args_text
from immunity.domain_plugin import make_domain_plugin
from immunity.models import ActionType

from immunity_coding import checks, shell_match, signals
from immunity_coding.checks import CHECKS, ERROR_CLASSES, REPEATED_FAILING_COMMAND
from immunity_coding.mapping import RULES

__all__ = ["DOMAIN", "PACK", "REPEATED_FAILING_COMMAND", "RULES"]

NAME = "coding"

#: A small hand-written pattern pack (data only; built from ``packs/coding-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["coding-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "coding-basics.json"


@dataclass(eq=False)
class _CodingDomain(Domain):
    """The coding domain, with its mapping made cheaper and cached, and the same answers as the
    plain rule table:

    - each rule's expression is searched with :func:`immunity_coding.shell_match.searcher`, which
      tries a command-start alternative only at the start of the text and after a separator (the
      plain search tries every alternative at every position: about 0.1 ms for a command);
    - the rules for a tool are looked up once per tool name;
    - agents run the same commands again and again (``git diff``, ``python reproduce.py``, a test
      command): about 30% of the commands in the SWE-bench dev data repeat one seen before. The
      cache is bounded and keyed on the tool and the argument text the rules read, so a cached
      answer is the rules' answer."""

    def __post_init__(self) -> None:
        searchers = {rule.when: shell_match.searcher(rule.when) for rule in self.rules if rule.when}
        self._compiled = [(rule, searchers[rule.when] if rule.when else None,
                           ActionMapping(ActionType.parse(rule.action), rule.confidence, rule.side_effect,
                                         rule.needs_verification, mapped_by=self.name, destructive=rule.destructive))
                          for rule in self.rules]
        self._for_tool = functools.lru_cache(maxsize=256)(self._rules_for_tool)
        self._cached = functools.lru_cache(maxsize=4096)(self._map_blob)

    def _rules_for_tool(self, tool: str | None) -> tuple[tuple[Callable[[str], bool] | None, ActionMapping], ...]:
        return tuple((search, mapped) for rule, search, mapped in self._compiled if rule.matches_tool(tool))

    def _map_blob(self, tool: str | None, blob: str) -> ActionMapping | None:
        for search, mapped in self._for_tool(tool):
            if search is None or search(blob):
                return mapped
        return None

    def map_action(self, tool: str | None, arguments: dict[str, Any] | None = None,
                   text: str | None = None) -> ActionMapping | None:
        return self._cached(tool, args_text(arguments, None if tool else text))


DOMAIN = _CodingDomain(
    name=NAME,
    rules=RULES,
    checks=CHECKS,
    description="Coding agents: shell commands, editor tools, tests and submits.",
    error_classes=ERROR_CLASSES,
    judge_result=checks.test_output_passed,
    signals=signals.signals,
)


#: This domain's plugin hooks, re-exported below: the module itself is the registered plugin.
PLUGIN = make_domain_plugin(DOMAIN, packs={"coding-basics": PACK}, memo=checks.memo, track=checks.track)
immunity_register_domains = PLUGIN.immunity_register_domains
immunity_register_pattern_packs = PLUGIN.immunity_register_pattern_packs
immunity_observe = PLUGIN.immunity_observe
immunity_observe_step = PLUGIN.immunity_observe_step
