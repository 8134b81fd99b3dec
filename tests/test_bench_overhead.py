"""bench/bench_overhead.py runs through every registered driver and writes its figures (the
figures themselves are measured by running the script, not here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "bench" / "bench_overhead.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_round_per_arm_through_langgraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langgraph")
    pytest.importorskip("immunity_langgraph")
    out = tmp_path / "overhead.json"
    assert _script().main(["--frameworks", "langgraph", "--runs", "2", "--warmup", "0", "--latencies", "0,1",
                           "--tools", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["frameworks"] == ["langgraph"] and data["config"]["versions"]["langgraph"]
    assert [r["latency_ms"] for r in data["results"]] == [0.0, 1.0]
    for r in data["results"]:
        assert r["steps"] == 5  # 2 tool calls + 3 model calls, the same in every arm
        for arm in ("memory", "file"):
            assert r[arm]["runs_recorded"] == 2  # every protected run was recorded, and only those
            assert r[arm]["ratio"] > 0 and r[arm]["ms_per_step"] > 0
    table = capsys.readouterr().out
    assert "langgraph" in table and "added med" in table


def test_unknown_framework_is_refused() -> None:
    with pytest.raises(SystemExit):
        _script().main(["--frameworks", "nope", "--runs", "1"])
