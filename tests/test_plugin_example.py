"""The one-module plugin in examples/plugin_example installs with plain pip and is discovered."""

import json


def test_example_plugin_installs_and_runs(fresh_venv, repo_root):
    fresh_venv.install(repo_root / "examples" / "plugin_example")
    rows = {r["name"]: r for r in json.loads(fresh_venv.run("immunity", "plugins"))}
    assert rows["no_secrets"]["distribution"] == "immunity-no-secrets"
    assert set(rows["no_secrets"]["hooks"]) == {"immunity_observe", "immunity_verify"}
    assert rows["no_secrets"]["error"] is None
    code = """
import immunity_no_secrets as p
from immunity.runtime import Runtime
from immunity.testing import FakeRun
with Runtime(store=":memory:") as rt:
    run = FakeRun(rt)
    blocked = run.tool("http_post", {"body": "password=hunter2"})
    fine = run.tool("http_post", {"body": "hello"})
    print(blocked.block, blocked.verdicts[0].plugin, fine.block, len(p.SEEN_RUNS))
"""
    out = fresh_venv.run("python", "-c", code)
    assert out.split() == ["True", "no_secrets", "False", "1"]


def test_core_alone_has_no_framework(fresh_venv):
    """Frameworks never leak into core's environment."""
    code = "import importlib.util as u; print([m for m in ('langgraph','crewai','llama_index','agents') if u.find_spec(m)])"
    assert fresh_venv.run("python", "-c", code).strip() == "[]"
