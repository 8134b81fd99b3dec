"""Data mapping and checks on runs whose SQL really executes against a SQLite database."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from immunity.models import ActionType
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_data.sql import statements


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(store=":memory:", domain="data")
    yield runtime
    runtime.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(tmp_path / "shop.db")
    con.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, region TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL, status TEXT);
        INSERT INTO customers VALUES (1, 'Ada', 'EU'), (2, 'Grace', 'US'), (3, 'Alan', 'EU');
        INSERT INTO orders VALUES (10, 1, 30.0, 'paid'), (11, 2, 12.5, 'paid'), (12, 3, 99.0, 'refunded');
        CREATE TABLE payments (order_id INTEGER, method TEXT);
        INSERT INTO payments VALUES (10, 'card'), (10, 'gift'), (11, 'card'), (12, 'card');
    """)
    yield con
    con.close()


class SQL:
    """A ``run_sql`` tool on a real SQLite database, driven through a fake run."""

    def __init__(self, run: FakeRun, con: sqlite3.Connection):
        self.run, self.con = run, con

    def __call__(self, sql: str, tool: str = "run_sql") -> Any:
        start = self.run.session.tool_start(tool, {"sql": sql}, tool_call_id=f"c{self.run.state.n_steps}")
        if start.block:
            return start
        try:
            cur = self.con.executescript(sql) if sql.count(";") > 1 else self.con.execute(sql)
            rows = cur.fetchall()
            self.con.commit()
            result, error = json.dumps(rows), None
        except sqlite3.Error as exc:
            result, error = None, f"sqlite3.{type(exc).__name__}: {exc}"
        end = self.run.session.tool_end(tool, result, error=error, tool_call_id=f"c{self.run.state.n_steps}")
        end.verdicts = start.verdicts + end.verdicts
        return end


def failed(decision: Any, check: str) -> list[str]:
    return [v.error_class for v in decision.verdicts if not v.ok and v.plugin == f"data:{check}"]


@pytest.mark.parametrize("tool,arguments,expected,destructive", [
    ("query_db", {"sql": "SELECT region, count(*) FROM customers GROUP BY region"}, "SEARCH", False),
    ("run_sql", {"sql": "WITH t AS (SELECT * FROM orders) SELECT * FROM t"}, "SEARCH", False),
    ("execute_sql", {"sql": "PRAGMA table_info(orders)"}, "SEARCH", False),
    ("run_sql", {"sql": "INSERT INTO orders VALUES (13, 1, 5.0, 'paid')"}, "EDIT", False),
    ("run_sql", {"sql": "UPDATE orders SET status = 'void' WHERE id = 12"}, "EDIT", False),
    ("run_sql", {"sql": "UPDATE orders SET status = 'void'"}, "EDIT", True),
    ("run_sql", {"sql": "DELETE FROM orders"}, "EDIT", True),
    ("run_sql", {"sql": "DELETE FROM orders WHERE status = 'refunded'"}, "EDIT", False),
    ("query_db", {"sql": "DROP TABLE orders"}, "EDIT", True),
    ("run_sql", {"sql": "TRUNCATE TABLE orders"}, "EDIT", True),
    ("run_sql", {"sql": "CREATE TABLE eu AS SELECT * FROM customers WHERE region = 'EU'"}, "EDIT", False),
    ("read_schema", {"table": "orders"}, "SEARCH", False),
    ("list_tables", {}, "SEARCH", False),
    ("validate", {"table": "orders", "checks": ["not_null:id"]}, "VERIFY", False),
    ("write_table", {"table": "eu_orders", "rows": []}, "EDIT", False),
    ("load_csv", {"path": "orders.csv", "table": "orders_raw"}, "EDIT", False),
    ("load_csv", {"path": "orders.csv"}, "SEARCH", False),
    ("drop_table", {"table": "orders"}, "EDIT", True),
    ("python", {"code": "df = pd.read_csv('o.csv')\ndf.to_sql('orders', con, if_exists='replace')"}, "EDIT", True),
    ("python", {"code": "df.to_parquet('out/orders.parquet')"}, "EDIT", False),
    ("python", {"code": "assert df['id'].is_unique"}, "VERIFY", False),
    ("python", {"code": "df.groupby('region').amount.sum()"}, "EXECUTE", False),
])
def test_mapping(rt: Runtime, tool: str, arguments: dict, expected: str, destructive: bool) -> None:
    m = rt.map_action(tool, arguments)
    assert (m.action_type, m.destructive, m.mapped_by) == (ActionType(expected), destructive, "data")


def test_statements_ignore_comments_and_strings() -> None:
    (st,) = statements("-- DROP TABLE orders\nSELECT 'DROP TABLE x; DELETE FROM y' AS note FROM orders")
    assert st.kind == "select" and st.destructive() is None
    sts = statements("DELETE FROM orders WHERE id = 1; DELETE FROM payments")
    assert [s.destructive() for s in sts] == [None, "DELETE FROM payments without a WHERE clause"]


# ------------------------------------------------------------------------------------------ destructive_sql


def test_drop_table_is_blocked_and_the_table_survives(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    d = sql("DROP TABLE orders")
    assert d.block and failed(d, "destructive_sql") == ["unsafe_action"]
    assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == 3
    d = sql("UPDATE orders SET status = 'void'")
    assert d.block and "without a WHERE" in (d.message or "")


def test_guarded_writes_and_own_scratch_tables_pass(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    assert not sql("DELETE FROM orders WHERE status = 'refunded'").block
    assert not sql("CREATE TABLE tmp_eu AS SELECT * FROM customers WHERE region = 'EU'").block
    d = sql("DROP TABLE tmp_eu")  # created by this run: it may drop it
    assert not d.block and failed(d, "destructive_sql") == []


def test_allow_destructive_lists_tables(db: sqlite3.Connection) -> None:
    with Runtime(store=":memory:", domain="data", data={"allow_destructive": ["payments"]}) as rt:
        run = FakeRun(rt, domain="data")
        sql = SQL(run, db)
        assert not sql("DELETE FROM payments").block
        assert sql("DELETE FROM orders").block


def test_to_sql_replace_in_pandas_code_is_blocked(rt: Runtime) -> None:
    run = FakeRun(rt, domain="data")
    d = run.tool("python", {"code": "orders.to_sql('orders', con, if_exists='replace', index=False)"})
    assert d.block and failed(d, "destructive_sql") == ["unsafe_action"]


# ------------------------------------------------------------------------------------------ unvalidated_write


def test_finishing_after_an_unvalidated_write_fires(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    sql("CREATE TABLE eu_orders AS SELECT o.* FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.region = 'EU'")
    d = run.final("Created eu_orders with the EU orders.")
    assert failed(d, "unvalidated_write") == ["unvalidated_write"]
    v = next(v for v in d.verdicts if v.plugin == "data:unvalidated_write")
    assert v.evidence == {"writes": 1, "tables": ["eu_orders"]}


def test_a_passing_validation_after_the_write_is_quiet(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    sql("CREATE TABLE eu_orders AS SELECT o.* FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.region = 'EU'")
    n = db.execute("SELECT count(*) FROM eu_orders").fetchone()[0]
    run.tool("validate", {"table": "eu_orders", "checks": ["row_count>0", "not_null:id"]},
             result=json.dumps({"passed": True, "rows": n}))
    d = run.final("Created eu_orders and validated it.")
    assert failed(d, "unvalidated_write") == []


# ------------------------------------------------------------------------------------------ drift


def test_a_row_count_that_changes_without_a_write_fires(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    assert failed(sql("SELECT COUNT(*) FROM orders"), "drift") == []
    db.execute("INSERT INTO orders VALUES (14, 2, 7.0, 'paid')")  # another process writes
    db.commit()
    d = sql("SELECT COUNT(*) FROM orders")
    assert failed(d, "drift") == ["row_count_drift"]


def test_a_row_count_change_after_the_runs_own_write_is_quiet(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    sql("SELECT COUNT(*) FROM orders")
    sql("INSERT INTO orders VALUES (15, 1, 3.0, 'paid')")
    assert failed(sql("SELECT COUNT(*) FROM orders"), "drift") == []


def test_a_join_that_multiplies_rows_fires(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    sql("SELECT COUNT(*) FROM orders")
    sql("CREATE TABLE order_payments AS SELECT o.*, p.method FROM orders o JOIN payments p ON p.order_id = o.id")
    d = sql("SELECT COUNT(*) FROM order_payments")
    assert failed(d, "drift") == ["row_count_drift"]
    assert "duplicated" in next(v for v in d.verdicts if v.plugin == "data:drift").message


def test_schema_drift_between_reads_and_unknown_columns_in_a_write(rt: Runtime, db: sqlite3.Connection) -> None:
    run = FakeRun(rt, domain="data")
    sql = SQL(run, db)
    assert failed(sql("PRAGMA table_info(customers)"), "drift") == []
    db.execute("ALTER TABLE customers ADD COLUMN email TEXT")  # changed by someone else
    d = sql("PRAGMA table_info(customers)")
    assert failed(d, "drift") == ["schema_drift"]
    d = run.tool("write_table", {"table": "customers", "rows": [{"id": 4, "name": "Edsger", "country": "NL"}]})
    assert failed(d, "drift") == ["schema_drift"]
    assert next(v for v in d.verdicts if v.plugin == "data:drift").evidence["unknown_columns"] == ["country"]
