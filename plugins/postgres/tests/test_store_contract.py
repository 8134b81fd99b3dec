"""The store contract (the same suite core runs on SQLite) on a real PostgreSQL server."""

from __future__ import annotations

import pytest
from immunity.testing.store_contract import StoreContract


class TestPostgres(StoreContract):
    @pytest.fixture
    def store(self, pg_dsn, spill_dir):
        from immunity_postgres.store import PostgresStore

        s = PostgresStore(pg_dsn)
        yield s
        s.close()
