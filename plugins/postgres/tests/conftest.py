"""One throwaway PostgreSQL cluster per test session (Debian's ``postgresql`` server binaries, run
as the ``postgres`` user when the tests run as root). Without the binaries the PostgreSQL tests are
skipped with the reason, unless ``IMMUNITY_REQUIRE_POSTGRES=1`` (CI sets it): then they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    from immunity_postgres.cluster import ClusterUnavailable, TempCluster

    try:
        cluster = TempCluster().__enter__()
    except (ClusterUnavailable, OSError) as exc:
        if os.environ.get("IMMUNITY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (IMMUNITY_REQUIRE_POSTGRES=1) but cannot be started: {exc}")
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    """The session cluster's database, emptied: every table dropped but the migrations' record, so a
    store opened on it starts from its migrations."""
    import psycopg

    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("select table_name from information_schema.tables where "
                                            "table_schema = current_schema()").fetchall()]
        for name in names:
            conn.execute(f'drop table if exists "{name}" cascade')
    return pg_cluster.dsn


@pytest.fixture
def spill_dir(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "spill")
    monkeypatch.setenv("IMMUNITY_SPILL_DIR", path)
    return path
