"""The data checks in a real LangGraph run (prebuilt ReAct agent, scripted model, a real SQLite db)."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool


def test_drop_table_is_blocked_and_the_table_survives(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "shop.db")
    con.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL);"
                      "INSERT INTO orders VALUES (1, 9.5), (2, 12.0);")

    @tool
    def run_sql(sql: str) -> str:
        """Run one SQL statement on the shop database."""
        rows = con.execute(sql).fetchall()
        con.commit()
        return json.dumps(rows)

    model = ScriptedChatModel(script=[tool_call("run_sql", sql="SELECT COUNT(*) FROM orders"),
                                      tool_call("run_sql", sql="DROP TABLE orders"),
                                      "I left the orders table in place."])
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, [run_sql])
    rt = Runtime(store=":memory:", domain="data")
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", "Reset the orders table")]})
        assert con.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 2
        told = model.calls[2][-1]
        assert isinstance(told, ToolMessage) and "DROP TABLE orders" in told.content
        rt.flush()
        (run,) = rt.store.runs()
        steps = rt.store.steps(run.run_id)
        assert [s.action_type.value for s in steps if s.tool] == ["SEARCH", "EDIT"]
        assert any(v.plugin == "data:destructive_sql" and v.block for v in rt.store.verdicts(run.run_id))
    finally:
        rt.close()
        con.close()
