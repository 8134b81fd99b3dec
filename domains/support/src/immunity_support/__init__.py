"""immunity-support: the customer-support domain for immunity.

Maps support agents' tools (the tau-bench airline and retail tools, and generic helpdesk tools) to
universal action types, and adds five checks: a state-changing call without the lookup the policy
requires (blocked), arguments that contradict the lookups (blocked), airline policy rules (blocked),
a change without the customer's explicit confirmation, and a reply claiming a change no tool made.
See ``README.md``.

::

    from immunity import Runtime
    rt = Runtime(domain="support", store="immunity.db")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy
from immunity.domain import Domain
from immunity.models import Event, EventKind, Run, Step
from immunity.state import RunState

from immunity_support import checks
from immunity_support.checks import CHECKS, ERROR_CLASSES, REQUIRED_LOOKUPS, UNCONFIRMED_CHANGE
from immunity_support.mapping import RULES

__all__ = ["DOMAIN", "PACK", "REQUIRED_LOOKUPS", "RULES", "UNCONFIRMED_CHANGE"]

hookimpl = pluggy.HookimplMarker("immunity")

NAME = "support"

#: A small hand-written pattern pack (data only; built from ``packs/support-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["support-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "support-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=CHECKS,
    description="Customer-support agents: lookups, state-changing calls under a policy, replies, escalation.",
    error_classes=ERROR_CLASSES,
)


@hookimpl
def immunity_register_domains(register: Any) -> None:
    register(NAME, DOMAIN)


@hookimpl
def immunity_register_pattern_packs(register: Any) -> None:
    register("support-basics", str(PACK))


@hookimpl
def immunity_observe(event: Event, run: Run, state: RunState, session: Any) -> None:
    """Read the options when a support run starts; remember the customer's latest message."""
    if run.domain != NAME:
        return
    if event.kind == EventKind.RUN_START:
        opts = session.runtime.config.options.get(NAME) if session is not None else None
        checks.memo(state)["opts"] = dict(opts or {})
    elif event.kind == EventKind.MODEL_START:
        checks.track_messages(event.messages, state)


@hookimpl
def immunity_observe_step(step: Step, run: Run, state: RunState, session: Any) -> None:
    if run.domain == NAME:
        checks.track(step, run, state)
