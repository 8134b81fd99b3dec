"""Opening a store from a location the user typed (``--store``, ``$IMMUNITY_STORE``): a SQLite path
or ``:memory:``, or ``scheme://...`` for a store a plugin registers (``postgresql://`` from
``immunity-postgres``). The CLI's commands and the importers open stores through here."""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["is_url", "open_location"]


def is_url(location: str) -> bool:
    """``scheme://...`` (a plugin's store), as opposed to a file path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", location))


def open_location(location: str, *, must_exist: bool = True, background: bool = False, pm: Any = None,
                  read_only: bool = False) -> Any:
    """The store at ``location``. For a SQLite path that does not exist, raise
    :class:`FileNotFoundError` when ``must_exist`` (a read), else create it. ``scheme://`` locations
    are opened by the factory registered for ``scheme`` (:class:`~immunity.errors.StoreError` if
    none is, naming the installed ones). ``read_only`` opens a SQLite file with ``mode=ro``: nothing
    is created or written, and a database that is not immunity's is refused (the read commands)."""
    if is_url(location):
        from immunity.plugins import get_plugin_manager
        from immunity.store import open_store

        return open_store(location, pm if pm is not None else get_plugin_manager())
    from immunity.store import SQLiteStore

    if must_exist and location != ":memory:" and not os.path.exists(location):
        raise FileNotFoundError(f"no store at {location}")
    if read_only and location != ":memory:":
        return SQLiteStore(location, read_only=True)
    return SQLiteStore(location, background=background)
