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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunity.domain import ActionMapping, Domain, args_text
from immunity.domain_plugin import make_domain_plugin
from immunity.models import ActionType

from immunity_coding import checks, mapping, signals
from immunity_coding.checks import CHECKS, ERROR_CLASSES, REPEATED_FAILING_COMMAND
from immunity_coding.mapping import RULES

__all__ = ["DOMAIN", "PACK", "REPEATED_FAILING_COMMAND", "RULES"]

NAME = "coding"

#: A small hand-written pattern pack (data only; built from ``packs/coding-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["coding-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "coding-basics.json"

#: Words (lower case) without which a slow rule expression cannot match: every alternative of the
#: expression contains one of them literally. Checked only on ASCII text, where lower-casing and
#: the expressions' case-insensitive matching agree (a test compares with the plain rule table).
_NEEDS: dict[str, tuple[str, ...]] = {
    mapping.SUBMIT: ("complete_task_and_submit_final_output", "mini_swe_agent_final_output", "submit", "git"),
    mapping.DESTRUCTIVE: ("rm", "git", "mkfs", "dd", "/dev/sd", "chmod", ":(", "find"),
    mapping.TEST_RUNNER: ("test", "nose", "tox", "nox", "hypothesis", "make", "jest", "mocha", "phpunit", "rspec",
                          "mypy", "ruff", "flake8", "pylint", "pyflakes", "black"),
}


@dataclass(eq=False)
class _CodingDomain(Domain):
    """The coding domain, with its mapping cached: a shell command is mapped by a dozen long
    regular expressions (about 0.1 ms a command), and agents run the same commands again and again
    (``git diff``, ``python reproduce.py``, a test command); about 30% of the commands in the
    SWE-bench dev data repeat one seen before. The cache is bounded and keyed on the tool and the
    argument text the rules read, so a cached answer is the rules' answer."""

    def __post_init__(self) -> None:
        self._cached = functools.lru_cache(maxsize=4096)(self._map_blob)

    def _map_blob(self, tool: str | None, blob: str) -> ActionMapping | None:
        plain = blob.isascii()
        low = blob.lower() if plain else ""
        for rule in self.rules:
            needs = _NEEDS.get(rule.when or "") if plain else None
            if needs is not None and not any(word in low for word in needs):
                continue  # the rule's expression cannot match without one of these words
            if rule.matches(tool, blob):
                return ActionMapping(ActionType.parse(rule.action), rule.confidence, rule.side_effect,
                                     rule.needs_verification, mapped_by=self.name, destructive=rule.destructive)
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
