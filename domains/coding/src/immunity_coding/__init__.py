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

from pathlib import Path
from typing import Any

import pluggy
from immunity.domain import Domain
from immunity.models import Event, EventKind, Run, Step
from immunity.state import RunState

from immunity_coding import checks
from immunity_coding.checks import CHECKS, ERROR_CLASSES, REPEATED_FAILING_COMMAND
from immunity_coding.mapping import RULES

__all__ = ["DOMAIN", "PACK", "REPEATED_FAILING_COMMAND", "RULES"]

hookimpl = pluggy.HookimplMarker("immunity")

NAME = "coding"

#: A small hand-written pattern pack (data only; built from ``packs/coding-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["coding-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "coding-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=CHECKS,
    description="Coding agents: shell commands, editor tools, tests and submits.",
    error_classes=ERROR_CLASSES,
    judge_result=checks.test_output_passed,
)


@hookimpl
def immunity_register_domains(register: Any) -> None:
    register(NAME, DOMAIN)


@hookimpl
def immunity_register_pattern_packs(register: Any) -> None:
    register("coding-basics", str(PACK))


@hookimpl
def immunity_observe(event: Event, run: Run, state: RunState, session: Any) -> None:
    """Read this domain's options once, when a coding run starts."""
    if run.domain == NAME and event.kind == EventKind.RUN_START:
        opts = session.runtime.config.options.get(NAME) if session is not None else None
        checks.memo(state)["opts"] = dict(opts or {})


@hookimpl
def immunity_observe_step(step: Step, run: Run, state: RunState, session: Any) -> None:
    """Keep the per-run memo the checks read (O(1) per step)."""
    if run.domain == NAME:
        checks.track(step, run, state)
