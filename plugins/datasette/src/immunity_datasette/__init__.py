"""immunity-datasette: immunity's UI on Datasette.

Adds ``immunity ui`` (serve a store read-only with Datasette and this plugin's pages) to the
command line. The Datasette side (pages, canned queries) is :mod:`immunity_datasette.pages`,
registered with Datasette through the ``datasette`` entry point group, so ``datasette
immunity.db`` shows it too. Importing this module does not import Datasette.
"""

from __future__ import annotations

import os
from typing import Any

import click
import pluggy

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["make_datasette", "prepare_store"]


def prepare_store(path: str) -> None:
    """Make sure the tables the pages and canned queries read exist (an empty store, a store where
    no SLO was evaluated or no chaos experiment ran), so every page and query answers."""
    from immunity.incidents import ensure_tables
    from immunity.store import SQLiteStore

    store = SQLiteStore(path, background=False)
    try:
        ensure_tables(store)
        with store.transaction(flush=False) as db:
            db.table("chaos_injections").create({
                "injection_id": str, "experiment": str, "fault": str, "target": str, "name": str, "call": int,
                "ts": float, "run_id": str, "detail": str}, pk="injection_id", if_not_exists=True)
    finally:
        store.close()


def make_datasette(path: str) -> Any:
    """A Datasette instance serving ``path`` as the database ``immunity``, read-only (no write
    API, no arbitrary-SQL writes: canned queries are all SELECTs)."""
    from datasette.app import Datasette
    from datasette.database import Database

    from immunity_datasette.pages import CANNED, DB_NAME

    ds = Datasette(
        [],
        metadata={"title": "immunity", "databases": {DB_NAME: {"queries": {k: dict(v) for k, v in CANNED.items()}}}},
        settings={"default_page_size": 50, "sql_time_limit_ms": 3000},
    )
    ds.add_database(Database(ds, path=os.path.abspath(path), is_mutable=True), name=DB_NAME)
    return ds


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    from immunity.cli import default_store

    @cli.command()
    @click.option("--store", "store_path", default=default_store, show_default="immunity.db or $IMMUNITY_STORE")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8001, show_default=True)
    def ui(store_path: str, host: str, port: int) -> None:
        """Serve the store read-only with Datasette: /-/immunity (overview, run timelines, incidents)
        and canned queries for runs, incidents, SLO alerts, patterns, interventions, chaos."""
        import uvicorn

        if not os.path.exists(store_path):
            raise click.ClickException(f"no store at {store_path}")
        prepare_store(store_path)
        ds = make_datasette(store_path)
        click.echo(f"immunity ui on http://{host}:{port}/-/immunity (store {store_path}, read-only)")
        uvicorn.run(ds.app(), host=host, port=port, log_level="warning")
