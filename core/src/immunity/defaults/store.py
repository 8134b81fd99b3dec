"""Built-in plugin: the SQLite store."""

from __future__ import annotations

from typing import Any

import pluggy

from immunity.store import SQLiteStore

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_stores(register: Any) -> None:
    register("sqlite", SQLiteStore)
