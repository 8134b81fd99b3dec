"""The runnable example (offline, in a subprocess) and the default ``immunity demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from immunity.interventions.quoting import split
from immunity.models import EventKind, InterventionKind
from immunity_langgraph.adapter import LangGraphAdapter
from immunity_langgraph.demo import make_agent, run_demo

ROOT = Path(__file__).resolve().parents[3]


def test_example_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "langgraph_agent.py"), "--store", str(db)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "answer: Done: freed 2950 MB by deleting the rotated .gz logs; current logs are kept."
    assert lines[1] == "files left: /var/log/app.log, /var/log/nginx/access.log"  # the current logs survived
    assert "run langgraph-cleanup-1  langgraph" in out.stdout and "status=finished" in out.stdout
    assert "verdict unsafe_action [error] by no_recursive_delete" in out.stdout
    assert "> block: [immunity] Blocked: a recursive delete" in out.stdout
    assert db.exists()


def test_demo_catches_and_corrects_a_repeated_tool_error(make_runtime: Any) -> None:
    rt = make_runtime()
    assert LangGraphAdapter.demo(rt).startswith("langgraph-demo-")
    agent = make_agent()
    model = agent[0]
    run_id = run_demo(rt, agent)
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.framework == "langgraph"
    assert run.final_answer.startswith("The tests pass")
    steps = rt.store.steps(run_id)
    assert [(s.tool, s.failed) for s in steps] == [("run_tests", True), ("run_tests", True), ("edit_file", False),
                                                    ("run_tests", False), (None, False)]
    hints = [iv for iv in rt.store.interventions(run_id) if iv.kind == InterventionKind.HINT]
    assert hints and "Do not retry the same way" in hints[0].text
    # the hint went into the model call right after the second failure, and only that one
    words = split(hints[0].text).words  # a quoted tool output travels as tool-role data before the words
    with_hint = [i for i, call in enumerate(model.calls) if any(m.content == words for m in call)]
    assert with_hint == [2]
    assert len([e for e in rt.store.events(run_id) if e.kind == EventKind.MODEL_START]) == len(model.calls) == 5


def test_immunity_demo_command_defaults_to_langgraph(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("immunity")
    out = subprocess.run([str(exe), "demo", "--store", str(tmp_path / "demo.db")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("immunity demo on langgraph ")
    assert "repeated_tool_error" in out.stdout and "final answer: The tests pass" in out.stdout
