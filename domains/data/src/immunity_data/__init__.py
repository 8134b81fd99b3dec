"""immunity-data: the data domain for immunity.

Maps data agents' actions (SQL read by its statements, table tools, validation tools, pandas code) to
universal action types, and adds three checks: destructive SQL (blocked), finishing after writes that
nothing validated, and row-count or schema drift between steps. See ``README.md``.

::

    from immunity import Runtime
    rt = Runtime(domain="data", store="immunity.db", data={"allow_destructive": ["staging_orders"]})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy
from immunity.domain import Domain
from immunity.models import Event, EventKind, Run, Step
from immunity.state import RunState

from immunity_data import checks
from immunity_data.checks import CHECKS, ERROR_CLASSES, ROW_COUNT_DRIFT, SCHEMA_DRIFT, UNVALIDATED_WRITE
from immunity_data.mapping import RULES

__all__ = ["DOMAIN", "PACK", "ROW_COUNT_DRIFT", "RULES", "SCHEMA_DRIFT", "UNVALIDATED_WRITE"]

hookimpl = pluggy.HookimplMarker("immunity")

NAME = "data"

#: A small hand-written pattern pack (data only; built from ``packs/data-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["data-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "data-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=CHECKS,
    description="Data agents: SQL, tables, pandas code, validation.",
    error_classes=ERROR_CLASSES,
)


@hookimpl
def immunity_register_domains(register: Any) -> None:
    register(NAME, DOMAIN)


@hookimpl
def immunity_register_pattern_packs(register: Any) -> None:
    register("data-basics", str(PACK))


@hookimpl
def immunity_observe(event: Event, run: Run, state: RunState, session: Any) -> None:
    if run.domain == NAME and event.kind == EventKind.RUN_START:
        opts = session.runtime.config.options.get(NAME) if session is not None else None
        checks.memo(state)["opts"] = dict(opts or {})


@hookimpl
def immunity_observe_step(step: Step, run: Run, state: RunState, session: Any) -> None:
    if run.domain == NAME:
        checks.track(step, run, state)
