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

from immunity.domain import Domain
from immunity.domain_plugin import make_domain_plugin

from immunity_data import checks, crosscheck
from immunity_data.checks import CHECKS, ERROR_CLASSES, ROW_COUNT_DRIFT, SCHEMA_DRIFT, UNVALIDATED_WRITE
from immunity_data.mapping import RULES

__all__ = ["DOMAIN", "PACK", "ROW_COUNT_DRIFT", "RULES", "SCHEMA_DRIFT", "UNVALIDATED_WRITE"]

NAME = "data"

#: A small hand-written pattern pack (data only; built from ``packs/data-basics.spec.json`` with
#: ``immunity pack build``). Use it with ``Runtime(packs=["data-basics"], verifiers=["patterns"])``.
PACK = Path(__file__).parent / "packs" / "data-basics.json"

DOMAIN = Domain(
    name=NAME,
    rules=RULES,
    checks=[*CHECKS, *crosscheck.CROSS_CHECKS],
    description="Data agents: SQL, tables, pandas code, validation.",
    error_classes={**ERROR_CLASSES, **crosscheck.ERROR_CLASSES},
)


#: This domain's plugin hooks, re-exported below: the module itself is the registered plugin.
PLUGIN = make_domain_plugin(DOMAIN, packs={"data-basics": PACK}, memo=checks.memo, track=checks.track)
immunity_register_domains = PLUGIN.immunity_register_domains
immunity_register_pattern_packs = PLUGIN.immunity_register_pattern_packs
immunity_observe = PLUGIN.immunity_observe
immunity_observe_step = PLUGIN.immunity_observe_step
