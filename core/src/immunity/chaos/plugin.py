"""Built-in plugin: while a chaos experiment is active, note which run each event belongs to, so
an injected fault is attributed to its run. Does nothing (one global read) otherwise."""

from __future__ import annotations

from typing import Any

import pluggy

from immunity.chaos import injector

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl(tryfirst=True)
def immunity_observe(event: Any, run: Any, session: Any) -> None:
    chaos = injector._ACTIVE if injector._ENV_LOADED else injector.current()
    if chaos is not None:
        chaos.note_run(run.run_id, session.runtime)
