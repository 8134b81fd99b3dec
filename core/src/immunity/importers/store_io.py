"""Writing a whole run (its steps, and for immunity's own format its events, verdicts,
interventions, recoveries, checkpoints and plugin errors) into a store in one transaction."""

from __future__ import annotations

from typing import Any

from immunity.importers.base import ImportedRun
from immunity.store import SQLiteStore

#: Per-run tables besides ``runs`` and ``steps``, in the order they are written.
RELATED_TABLES: tuple[str, ...] = SQLiteStore.RELATED_TABLES


def write_full_run(store: Any, imported: ImportedRun) -> None:
    """Replace everything stored about ``imported.run`` with what ``imported`` holds, atomically."""
    try:
        store.write_run(imported.run, imported.steps, related=imported.related)
    except TypeError:  # a store from a plugin with the basic signature
        store.write_run(imported.run, imported.steps, imported.related.get("events", ()))
