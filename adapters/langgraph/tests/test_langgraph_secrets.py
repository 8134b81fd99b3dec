"""Secrets through the real LangGraph runtime: planted keys and passwords reach neither the store,
nor `immunity export`, nor the hints immunity adds to the model's next call."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from immunity.cli import build_cli
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

OPENAI = "sk-proj-" + "Z" * 6 + "q1w2e3r4t5y6u7i8o9p0"
PASSWORD = "s3cret-Hunter2"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2lnbmF0dXJlMDEy"
SECRETS = [OPENAI, PASSWORD, BEARER]


def test_planted_secrets_stay_out_of_store_export_and_hints(make_runtime: Any, tool_graph: Any,
                                                            tmp_path: Path) -> None:
    attempts: list[str] = []

    @tool
    def login(user: str, password: str, api_key: str) -> str:
        """Log in to the billing API."""
        attempts.append(user)
        if len(attempts) == 1:
            raise ValueError(f"auth with {api_key} failed (password={password}, "
                             f"Authorization: Bearer {BEARER})")
        return f"logged in; session token={BEARER}"

    hints: list[str] = []

    def retry(messages: list[Any]) -> Any:
        hints.extend(m.content for m in messages if isinstance(m, HumanMessage) and "[immunity]" in m.content)
        return tool_call("login", user="bob", password=PASSWORD, api_key=OPENAI)

    db = tmp_path / "s.db"
    rt = make_runtime(store=str(db))
    model = ScriptedChatModel(script=[tool_call("login", user="bob", password=PASSWORD, api_key=OPENAI), retry,
                                      "Logged in."])
    graph = tool_graph(model, [login])
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", f"Log in as bob, my password is {PASSWORD} and key {OPENAI}")]},
                       {"configurable": {"thread_id": "secrets"}})
    assert out["messages"][-1].content == "Logged in."  # the agent's own flow is untouched
    rt.close()

    assert hints and all(not [s for s in SECRETS if s in h] for h in hints), hints
    # whatever wording the policy picked, quoted tool output is delimited data
    assert all("<tool-output>" in h for h in hints if "auth with" in h), hints
    conn = sqlite3.connect(db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert "login" in dump and "[REDACTED:" in dump
    assert [s for s in SECRETS if s in dump] == []
    res = CliRunner().invoke(build_cli(), ["export", "--store", str(db), "--output", "-"])
    assert res.exit_code == 0 and "login" in res.output
    assert [s for s in SECRETS if s in res.output] == []
