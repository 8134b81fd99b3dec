"""immunity-postgres: a PostgreSQL store for immunity.

Registers the store under ``postgresql://`` and ``postgres://``, so every place that takes a store
location takes a DSN: ``Runtime(store="postgresql://user@host/db")``, ``protect(graph,
store=...)``, ``immunity runs/learn/score/eval/import/export --store postgresql://...``.
Importing this package imports neither psycopg nor the pool; the store module is loaded when a
``postgresql://`` location is opened.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["open_postgres"]


def open_postgres(rest: str) -> Any:
    """The store factory: ``rest`` is the location after ``postgresql://``."""
    from immunity_postgres.store import PostgresStore

    return PostgresStore.from_location(rest)


@hookimpl
def immunity_register_stores(register: Any) -> None:
    register("postgresql", open_postgres)
    register("postgres", open_postgres)
