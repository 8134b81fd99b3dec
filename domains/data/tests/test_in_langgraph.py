"""The data checks in a real LangGraph run (prebuilt ReAct agent, scripted model, a real SQLite db).

The tools run on a real SQLite database in a temporary directory: ``run_sql`` executes a statement,
``read_schema`` reads a table's columns, ``insert_rows`` inserts rows by column name,
``validate_table`` checks a table (ids present and unique) and ``submit`` records the end of the job.
"Another process" is a second connection to the same file, writing between two of the model's turns.
Every check of the domain is driven through ``Runtime(domain="data").protect(graph)``; each test
asserts the verdict stored with its error class, and what the model saw next (the hint in its next
call, or the block message as the tool result while the data stays untouched), and the correct
behaviour in the same graph stays quiet.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from immunity.models import Verdict
from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

SCHEMA = """
    CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, region TEXT);
    CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL, status TEXT);
    CREATE TABLE payments (order_id INTEGER, method TEXT);
    INSERT INTO customers VALUES (1, 'Ada', 'EU'), (2, 'Grace', 'US'), (3, 'Alan', 'EU');
    INSERT INTO orders VALUES (10, 1, 30.0, 'paid'), (11, 2, 12.5, 'paid'), (12, 3, 99.0, 'refunded');
    INSERT INTO payments VALUES (10, 'card'), (10, 'gift'), (11, 'card'), (12, 'card');
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.close()
    return path


def count(path: Path, table: str) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        con.close()


def another_process(path: Path, sql: str, then: dict[str, Any]) -> Callable[[list[BaseMessage]], Any]:
    """A model turn during which another connection changes the database, then the agent's next call."""

    def turn(messages: list[BaseMessage]) -> Any:
        con = sqlite3.connect(path)
        con.execute(sql)
        con.commit()
        con.close()
        return then

    return turn


def data_tools(con: sqlite3.Connection, submitted: list[str]) -> list[BaseTool]:
    @tool
    def run_sql(sql: str) -> str:
        """Run one SQL statement on the shop database."""
        rows = con.execute(sql).fetchall()
        con.commit()
        return json.dumps(rows)

    @tool
    def read_schema(table: str) -> str:
        """The columns of a table."""
        return json.dumps([{"name": r[1], "type": r[2]} for r in con.execute(f"PRAGMA table_info({table})")])

    @tool
    def insert_rows(table: str, rows: list[dict[str, Any]]) -> str:
        """Insert rows (column -> value) into a table."""
        for row in rows:
            cols = list(row)
            con.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [row[c] for c in cols])
        con.commit()
        return f"inserted {len(rows)} row(s) into {table}"

    @tool
    def validate_table(table: str) -> str:
        """Check a table: row count, ids present and unique."""
        n, missing, distinct = con.execute(f"SELECT COUNT(*), SUM(id IS NULL), COUNT(DISTINCT id) FROM {table}").fetchone()
        ok = not missing and distinct == n
        return json.dumps({"passed": ok, "rows": n, "null_ids": missing or 0, "duplicate_ids": n - distinct})

    @tool
    def submit(summary: str) -> str:
        """Report the job as done."""
        submitted.append(summary)
        return "submitted"

    return [run_sql, read_schema, insert_rows, validate_table, submit]


@dataclass
class Result:
    model: ScriptedChatModel
    verdicts: list[Verdict]
    actions: list[str]

    def fired(self, check: str) -> list[str]:
        return [v.error_class or "" for v in self.verdicts if v.plugin == f"data:{check}" and not v.ok]

    def tool_reply(self, call: int) -> ToolMessage:
        return [m for m in self.model.calls[call] if isinstance(m, ToolMessage)][-1]

    def hints(self, call: int) -> list[str]:
        return [str(m.content) for m in self.model.calls[call]
                if isinstance(m, HumanMessage) and str(m.content).startswith("[immunity]")]


def run_agent(path: Path, script: list[Any], task: str, submitted: list[str] | None = None,
              **options: Any) -> Result:
    """Build a prebuilt ReAct agent over the database tools, protect it, run ``task``, read the store."""
    from langgraph.prebuilt import create_react_agent

    con = sqlite3.connect(path, check_same_thread=False)
    model = ScriptedChatModel(script=script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, data_tools(con, [] if submitted is None else submitted))
    rt = Runtime(store=":memory:", domain="data", **options)
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", task)]})
        rt.flush()
        (run,) = rt.store.runs()
        assert run.domain == "data"
        assert model.turns_used == len(script)
        actions = [s.action_type.value for s in rt.store.steps(run.run_id) if s.tool]
        return Result(model, rt.store.verdicts(run.run_id), actions)
    finally:
        rt.close()
        con.close()


# ------------------------------------------------------------------------------- destructive_sql


def test_drop_table_is_blocked_and_the_table_survives(db: Path) -> None:
    result = run_agent(db, [tool_call("run_sql", sql="SELECT COUNT(*) FROM orders"),
                            tool_call("run_sql", sql="DROP TABLE orders"),
                            "I left the orders table in place."], "Reset the orders table")
    assert count(db, "orders") == 3
    told = result.tool_reply(2)
    assert "DROP TABLE orders" in str(told.content) and "[immunity]" in str(told.content)
    assert result.actions == ["SEARCH", "EDIT"]
    assert result.fired("destructive_sql") == ["unsafe_action"]
    assert any(v.plugin == "data:destructive_sql" and v.block for v in result.verdicts)


def test_a_delete_with_a_where_clause_runs(db: Path) -> None:
    result = run_agent(db, [tool_call("run_sql", sql="DELETE FROM orders WHERE status = 'refunded'"),
                            "Deleted the refunded order."], "Remove the refunded orders")
    assert count(db, "orders") == 2
    assert result.tool_reply(1).content == "[]"
    assert result.fired("destructive_sql") == []


# ----------------------------------------------------------------------------- unvalidated_write

NEW_ORDER = "INSERT INTO orders VALUES (13, 2, 45.0, 'paid')"


def test_submitting_an_unvalidated_write_gets_a_hint_then_the_validated_submit_is_quiet(db: Path) -> None:
    submitted: list[str] = []
    result = run_agent(db, [
        tool_call("run_sql", sql=NEW_ORDER),
        tool_call("submit", summary="Added order 13."),                 # nothing checked what was written
        tool_call("validate_table", table="orders"),
        tool_call("submit", summary="Added order 13; orders validated."),
        "Added order 13.",
    ], "Add Grace's new order 13 of 45.00", submitted)
    assert result.fired("unvalidated_write") == ["unvalidated_write"]  # not for the submit after the validation
    (hint,) = result.hints(2)
    assert "did not validate it" in hint
    assert json.loads(str(result.tool_reply(3).content))["passed"] is True
    assert result.hints(3) == [] and result.hints(4) == []
    assert len(submitted) == 2  # a hint, not a block


def test_submitting_a_validated_write_is_quiet(db: Path) -> None:
    result = run_agent(db, [
        tool_call("run_sql", sql=NEW_ORDER),
        tool_call("validate_table", table="orders"),
        tool_call("submit", summary="Added order 13; orders validated."),
        "Added order 13.",
    ], "Add Grace's new order 13 of 45.00")
    assert count(db, "orders") == 4
    assert result.actions == ["EDIT", "VERIFY", "DONE"]
    assert result.fired("unvalidated_write") == []
    assert all(result.hints(n) == [] for n in range(4))


# ----------------------------------------------------------------------------- drift: row counts

COUNT_ORDERS = tool_call("run_sql", sql="SELECT COUNT(*) FROM orders")


def test_a_row_count_changed_by_another_process_gets_a_hint(db: Path) -> None:
    result = run_agent(db, [
        COUNT_ORDERS,
        another_process(db, "INSERT INTO orders VALUES (14, 1, 7.0, 'paid')", COUNT_ORDERS),
        "There are 4 orders now; someone else added one.",
    ], "How many orders are there?")
    assert [result.tool_reply(n).content for n in (1, 2)] == ["[[3]]", "[[4]]"]
    assert result.fired("drift") == ["row_count_drift"]
    (hint,) = result.hints(2)
    assert "orders changed from 3 to 4 rows without any write from you" in hint


def test_a_row_count_changed_by_the_agents_own_write_is_quiet(db: Path) -> None:
    result = run_agent(db, [
        COUNT_ORDERS,
        tool_call("run_sql", sql="INSERT INTO orders VALUES (14, 1, 7.0, 'paid')"),
        COUNT_ORDERS,
        "There are 4 orders now.",
    ], "Add order 14 and count the orders")
    assert result.tool_reply(3).content == "[[4]]"
    assert result.fired("drift") == []
    assert all(result.hints(n) == [] for n in range(4))


def test_a_join_that_multiplies_rows_gets_a_hint(db: Path) -> None:
    result = run_agent(db, [
        COUNT_ORDERS,
        tool_call("run_sql", sql="CREATE TABLE order_payments AS SELECT o.*, p.method FROM orders o "
                                 "JOIN payments p ON p.order_id = o.id"),
        tool_call("run_sql", sql="SELECT COUNT(*) FROM order_payments"),
        "order_payments has one row per order and payment.",
    ], "Build order_payments: each order with its payment method")
    assert result.tool_reply(3).content == "[[4]]"  # 3 orders, 4 rows: order 10 was paid twice
    assert result.fired("drift") == ["row_count_drift"]
    (hint,) = result.hints(3)
    assert "Joining into order_payments multiplied rows (3 -> 4)" in hint


def test_a_join_on_a_unique_key_is_quiet(db: Path) -> None:
    result = run_agent(db, [
        COUNT_ORDERS,
        tool_call("run_sql", sql="CREATE TABLE order_regions AS SELECT o.*, c.region FROM orders o "
                                 "JOIN customers c ON c.id = o.customer_id"),
        tool_call("run_sql", sql="SELECT COUNT(*) FROM order_regions"),
        "order_regions has one row per order.",
    ], "Build order_regions: each order with its customer's region")
    assert result.tool_reply(3).content == "[[3]]"
    assert result.fired("drift") == []
    assert all(result.hints(n) == [] for n in range(4))


# -------------------------------------------------------------------------------- drift: schemas


def test_columns_changed_by_another_process_get_a_hint(db: Path) -> None:
    read = tool_call("read_schema", table="customers")
    result = run_agent(db, [
        read,
        another_process(db, "ALTER TABLE customers ADD COLUMN email TEXT", read),
        "customers now has an email column.",
    ], "What columns does customers have?")
    assert result.fired("drift") == ["schema_drift"]
    (hint,) = result.hints(2)
    assert "The columns of customers changed since you last read them" in hint and "email" in hint


def test_writing_a_column_the_table_lacks_gets_a_hint(db: Path) -> None:
    result = run_agent(db, [
        tool_call("read_schema", table="customers"),
        tool_call("insert_rows", table="customers", rows=[{"id": 4, "name": "Edsger", "country": "NL"}]),
        tool_call("insert_rows", table="customers", rows=[{"id": 4, "name": "Edsger", "region": "EU"}]),
        "Added Edsger.",
    ], "Add the customer Edsger from the Netherlands")
    fired = [v for v in result.verdicts if v.plugin == "data:drift"]
    assert [v.error_class for v in fired] == ["schema_drift"]
    assert fired[0].evidence["unknown_columns"] == ["country"]
    assert "no column named country" in str(result.tool_reply(2).content)  # the database refused it too
    assert any("customers has no column(s) country" in h for h in result.hints(2))
    assert count(db, "customers") == 4


def test_writing_known_columns_is_quiet(db: Path) -> None:
    result = run_agent(db, [
        tool_call("read_schema", table="customers"),
        tool_call("read_schema", table="customers"),
        tool_call("insert_rows", table="customers", rows=[{"id": 4, "name": "Edsger", "region": "EU"}]),
        "Added Edsger.",
    ], "Add the customer Edsger from the Netherlands")
    assert count(db, "customers") == 4
    assert result.fired("drift") == []
    assert all(result.hints(n) == [] for n in range(4))
