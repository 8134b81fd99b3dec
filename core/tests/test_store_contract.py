"""The store contract (``immunity.testing.store_contract``) on the SQLite store, in memory and on a
file with its background writer. ``immunity-postgres`` runs the same suite on PostgreSQL."""

from __future__ import annotations

import pytest
from immunity.store import SQLiteStore
from immunity.testing.store_contract import StoreContract


class TestSQLiteFile(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        s = SQLiteStore(str(tmp_path / "contract.db"))
        yield s
        s.close()


class TestSQLiteMemory(StoreContract):
    @pytest.fixture
    def store(self):
        s = SQLiteStore(":memory:")
        yield s
        s.close()
