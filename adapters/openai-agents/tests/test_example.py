"""The runnable example runs offline and shows the hint, the block and the corrected run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "openai_agents_agent.py"


def test_example_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_MODEL")}
    store = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, str(EXAMPLE), "--store", str(store)], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "scripted model, offline" in text
    assert "final output: I refunded 100.00 on order A17, the most our policy allows." in text
    assert "refunds made: [('A17', 100.0)]" in text  # the 120 refund never ran
    assert "recovery retry: tool_error" in text
    assert "block: Refunds are limited to 100.00" in text
    assert "status=finished" in text and "DELEGATE message: handoff to billing" in text
    assert store.exists()
