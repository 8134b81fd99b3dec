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

from immunity.domain import Domain
from immunity.domain_plugin import make_domain_plugin
from immunity.models import Event, EventKind, Run
from immunity.state import RunState

from immunity_support import checks, crosscheck, signals
from immunity_support.checks import CHECKS, ERROR_CLASSES, REQUIRED_LOOKUPS, UNCONFIRMED_CHANGE
from immunity_support.mapping import RULES

__all__ = ["DOMAIN", "PACK", "REQUIRED_LOOKUPS", "RULES", "UNCONFIRMED_CHANGE"]

NAME = "support"

#: A small hand-written pattern pack (data only; built from ``packs/support-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["support-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "support-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=[*CHECKS, *crosscheck.CROSS_CHECKS],
    description="Customer-support agents: lookups, state-changing calls under a policy, replies, escalation.",
    error_classes={**ERROR_CLASSES, **crosscheck.ERROR_CLASSES},
    signals=signals.signals,
)


def _on_event(event: Event, run: Run, state: RunState) -> None:
    """Remember the customer's latest message (read from each model call's input)."""
    if event.kind == EventKind.MODEL_START:
        checks.track_messages(event.messages, state)


#: This domain's plugin hooks, re-exported below: the module itself is the registered plugin.
PLUGIN = make_domain_plugin(DOMAIN, packs={"support-basics": PACK}, memo=checks.memo, track=checks.track,
                            on_event=_on_event)
immunity_register_domains = PLUGIN.immunity_register_domains
immunity_register_pattern_packs = PLUGIN.immunity_register_pattern_packs
immunity_observe = PLUGIN.immunity_observe
immunity_observe_step = PLUGIN.immunity_observe_step
