"""The example runs offline (scripted model) in a fresh process, and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "llamaindex_agent.py"


def test_example_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    store = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, str(EXAMPLE), "--store", str(store)], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "model: scripted (offline)" in text
    assert "answer: I refunded 100.00 on order A-17" in text
    assert "refunds made: [('A-17', 100.0)]" in text  # the 250.00 refund was blocked before it ran
    assert "hint kept in the agent's memory: False" in text
    assert "recovery retry: tool_error" in text and "blocked by immunity" in text
    assert store.exists() and store.stat().st_size > 0
