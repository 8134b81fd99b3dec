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

from immunity.domain import Domain
from immunity.domain_plugin import make_domain_plugin

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


#: This domain's plugin hooks, re-exported below: the module itself is the registered plugin.
PLUGIN = make_domain_plugin(DOMAIN, packs={"research-basics": PACK}, memo=checks.memo, track=checks.track)
immunity_register_domains = PLUGIN.immunity_register_domains
immunity_register_pattern_packs = PLUGIN.immunity_register_pattern_packs
immunity_observe = PLUGIN.immunity_observe
immunity_observe_step = PLUGIN.immunity_observe_step
