"""Attach and detach: lazy framework import, registration, idempotent instrument, exact restore."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import immunity
import pytest
from immunity.errors import ImmunityError
from immunity_langgraph import patches
from immunity_langgraph.adapter import LangGraphAdapter
from immunity_langgraph.testing import ScriptedChatModel


def test_import_does_not_import_the_framework() -> None:
    code = (
        "import sys\n"
        "import immunity_langgraph, immunity_langgraph.adapter\n"
        "immunity_langgraph.LangGraphAdapter\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langgraph', 'langchain_core', 'langchain'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_registered_through_the_entry_point(make_runtime: Any, tool_graph: Any) -> None:
    rt = make_runtime()
    assert rt.pm.registry("adapters")["langgraph"] is LangGraphAdapter
    assert LangGraphAdapter.version_supported() is True
    graph = tool_graph(ScriptedChatModel(script=[]), [])
    assert LangGraphAdapter.matches(graph)
    assert not LangGraphAdapter.matches(object())
    assert not LangGraphAdapter.matches(ScriptedChatModel(script=[]))  # a model is not a graph


def _snapshot(graph: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {f"{cls.__name__}.{name}": cls.__dict__[name] for cls, name in patches.patched_attributes()}
    snap.update({f"graph.{k}": v for k, v in graph.__dict__.items()})  # the graph object is never modified
    return snap


def test_instrument_is_idempotent_and_uninstrument_restores_everything(make_runtime: Any, tool_graph: Any) -> None:
    graph = tool_graph(ScriptedChatModel(script=[]), [])
    other = tool_graph(ScriptedChatModel(script=[]), [])
    before, before_other = _snapshot(graph), _snapshot(other)
    rt = make_runtime()
    adapter = rt.protect(graph)
    assert isinstance(adapter, LangGraphAdapter)
    patched = _snapshot(graph)
    for key in ("Pregel.stream", "Pregel.astream", "BaseChatModel._convert_input", "BaseChatModel._generate_with_cache",
                "BaseChatModel._agenerate_with_cache", "BaseTool.run", "BaseTool.arun"):
        assert patched[key] is not before[key], key
    assert {k: v for k, v in patched.items() if k.startswith("graph.")} == \
        {k: v for k, v in before.items() if k.startswith("graph.")}
    adapter.instrument(graph)  # again: nothing changes
    assert _snapshot(graph) == patched
    assert adapter.targets == [graph]
    adapter.instrument(other)  # a second graph on the same adapter
    assert len(adapter.targets) == 2
    # a second adapter shares the class-level wrappers; they stay until the last one leaves
    second = rt.protect(tool_graph(ScriptedChatModel(script=[]), []))
    adapter.uninstrument()
    assert patches.installed()
    second.uninstrument()
    after, after_other = _snapshot(graph), _snapshot(other)
    assert after.keys() == before.keys() and after_other.keys() == before_other.keys()
    for key, value in before.items():
        assert after[key] is value, key
    for key, value in before_other.items():
        assert after_other[key] is value, key
    assert not patches.GRAPHS
    assert not patches.installed()
    adapter.uninstrument()  # twice is fine


def test_protect_one_line_and_detach(tmp_path: Any, tool_graph: Any) -> None:
    graph = tool_graph(ScriptedChatModel(script=["hello"]), [])
    guard = immunity.protect(graph, store=str(tmp_path / "runs.db"))
    try:
        out = graph.invoke({"messages": [("user", "hi")]})
        assert out["messages"][-1].content == "hello"
        guard.runtime.flush()
        runs = guard.runtime.store.runs()
        assert len(runs) == 1 and runs[0].framework == "langgraph" and runs[0].status == "finished"
    finally:
        guard.runtime.close()
    assert not patches.GRAPHS


def test_a_protected_graph_can_still_be_copied(make_runtime: Any, tool_graph: Any) -> None:
    graph = tool_graph(ScriptedChatModel(script=["one", "two"]), [])
    rt = make_runtime()
    rt.protect(graph)
    copy = graph.with_config(recursion_limit=10)  # Pregel.copy() rebuilds the graph from its __dict__
    assert copy.invoke({"messages": [("user", "hi")]})["messages"][-1].content == "one"
    assert graph.invoke({"messages": [("user", "hi")]})["messages"][-1].content == "two"
    rt.flush()
    assert [r.final_answer for r in rt.store.runs()] == ["two"]  # the copy is another object: protect it too


def test_instrument_rejects_what_is_not_a_compiled_graph(make_runtime: Any) -> None:
    rt = make_runtime()
    with pytest.raises(ImmunityError):
        LangGraphAdapter(rt).instrument(None)
    with pytest.raises(ImmunityError):
        LangGraphAdapter(rt).instrument(object())
