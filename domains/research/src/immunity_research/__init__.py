"""immunity-research: the research domain for immunity.

Maps research agents' tools (``web_search``, ``read_url``, ``read_paper``, ``take_notes``,
``verify_claim``, ``write_report``, ``submit_report``...) and the plain messages of multi-agent research
chats to universal action types, and adds three checks: figures stated with no source, citations of
URLs never retrieved, and search loops that bring nothing new. See ``README.md``.

::

    from immunity import Runtime
    rt = Runtime(domain="research", store="immunity.db")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy
from immunity.domain import Domain
from immunity.models import Event, EventKind, Run, Step
from immunity.state import RunState

from immunity_research import checks
from immunity_research.checks import (
    CHECKS,
    ERROR_CLASSES,
    FABRICATED_CITATION,
    SEARCH_LOOP,
    UNSUPPORTED_CLAIM,
)
from immunity_research.mapping import RULES

__all__ = ["DOMAIN", "PACK", "FABRICATED_CITATION", "RULES", "SEARCH_LOOP", "UNSUPPORTED_CLAIM"]

hookimpl = pluggy.HookimplMarker("immunity")

NAME = "research"

#: A small hand-written pattern pack (data only; built from ``packs/research-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["research-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "research-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=CHECKS,
    description="Research agents and multi-agent research chats: searches, sources, claims and answers.",
    error_classes=ERROR_CLASSES,
)


@hookimpl
def immunity_register_domains(register: Any) -> None:
    register(NAME, DOMAIN)


@hookimpl
def immunity_register_pattern_packs(register: Any) -> None:
    register("research-basics", str(PACK))


@hookimpl
def immunity_observe(event: Event, run: Run, state: RunState, session: Any) -> None:
    if run.domain == NAME and event.kind == EventKind.RUN_START:
        opts = session.runtime.config.options.get(NAME) if session is not None else None
        checks.memo(state)["opts"] = dict(opts or {})


@hookimpl
def immunity_observe_step(step: Step, run: Run, state: RunState, session: Any) -> None:
    if run.domain == NAME:
        checks.track(step, run, state)
