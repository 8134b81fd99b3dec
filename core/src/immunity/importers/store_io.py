"""Writing a whole run (its steps, and for immunity's own format its events, verdicts,
interventions, recoveries, checkpoints and plugin errors) into a store in one transaction.

Why not ``SQLiteStore.write_run``: it covers only runs, steps and events, and its ``with
self.db.conn:`` does not open a transaction, so sqlite-utils commits every insert on its own and a
failure half-way leaves the run half-written. Here everything is inside ``db.atomic()``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from immunity.importers.base import ImportedRun
from immunity.store import _PKS, to_row

#: Per-run tables besides ``runs`` and ``steps``, in the order they are written.
RELATED_TABLES: tuple[str, ...] = ("events", "verdicts", "interventions", "recoveries", "checkpoints",
                                   "plugin_errors")


def write_full_run(store: Any, imported: ImportedRun) -> None:
    """Replace everything stored about ``imported.run`` with what ``imported`` holds, atomically."""
    if not hasattr(getattr(store, "db", None), "atomic"):  # a store from a plugin: use its own write_run
        store.write_run(imported.run, imported.steps, imported.related.get("events", ()))
        return
    run_id = imported.run.run_id
    rows: list[tuple[str, dict[str, Any]]] = [("runs", to_row("runs", imported.run))]
    rows += [("steps", to_row("steps", s)) for s in imported.steps]
    for i, ev in enumerate(imported.related.get("events", ()), 1):
        r = to_row("events", ev)
        r["seq"] = i
        rows.append(("events", r))
    for table in RELATED_TABLES[1:]:
        for rec in imported.related.get(table, ()):
            r = to_row(table, rec)
            r.pop("id", None)
            r["run_id"] = run_id
            rows.append((table, r))
    store.flush()
    by_table: dict[str, list[dict[str, Any]]] = {}
    for table, row in rows:
        by_table.setdefault(table, []).append(row)
    lock = getattr(store, "_lock", None) or contextlib.nullcontext()
    # one explicit transaction: sqlite-utils commits each insert on its own unless one is open
    # (``atomic()`` turns the inner ones into savepoints), so ``with conn:`` alone is not enough.
    with lock, store.db.atomic():
        existing = set(store.db.table_names())
        for table in ("steps", *RELATED_TABLES):
            if table in existing:
                store.db.execute(f"DELETE FROM [{table}] WHERE run_id = ?", [run_id])
        for table, batch in by_table.items():
            pk = _PKS.get(table)
            if pk is None:
                store.db[table].insert_all(batch, alter=True)
            else:
                store.db[table].insert_all(batch, pk=pk, replace=True, alter=True)
