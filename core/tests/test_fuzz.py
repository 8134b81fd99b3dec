"""Fuzzing (Hypothesis) plus a corpus of known-bad inputs: importers, pack loading and the CLI.

Each property: no traceback, no hang (every example under its deadline), and no loss of what the
store already held. The examples are few and small (``max_examples``), so the whole file takes a
few seconds in CI.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from click.testing import CliRunner  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from immunity.cli import build_cli  # noqa: E402
from immunity.errors import PackError  # noqa: E402
from immunity.importers import import_paths  # noqa: E402
from immunity.learning.packs import content_hash, verify_document  # noqa: E402
from immunity.models import PatternPack  # noqa: E402
from immunity.runtime import Runtime  # noqa: E402
from immunity.store import SQLiteStore  # noqa: E402
from immunity.testing import FakeRun  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("IMMUNITY_FUZZ_EXAMPLES", "25")), deadline=5000,
                derandomize=not os.environ.get("IMMUNITY_FUZZ_EXAMPLES"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | \
    st.text(max_size=40)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4), max_leaves=20)
FORMAT_KEYS = ["id", "messages", "outcome", "traj", "reward", "task_id", "trial", "trajectory", "info", "history",
               "question_ID", "instance_id", "format", "version", "run", "steps", "events", "role", "content",
               "tool_calls"]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system", "x"]),
                                 "content": json_values}, optional={"tool_calls": json_values, "name": json_values})
records = st.dictionaries(st.sampled_from(FORMAT_KEYS), json_values | st.lists(message, max_size=4), max_size=6) | \
    json_values


@functools.cache
def _seed_store() -> tuple[str, str, int]:
    """A store with one live run in it (copied for every example)."""
    d = tempfile.mkdtemp(prefix="immunity-fuzz-")
    db = os.path.join(d, "seed.db")
    rt = Runtime(store=db)
    run = FakeRun(rt, task="live run")
    for i in range(4):
        run.tool("search", {"q": i}, result=f"r{i}")
    run.end("success")
    rt.close()
    return db, run.run.run_id, 4


def _steps(db: str, run_id: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("select count(*) from steps where run_id = ?", [run_id]).fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def _workdir():
    d = tempfile.mkdtemp(prefix="immunity-fuzz-")
    old = os.getcwd()
    os.chdir(d)
    try:
        yield Path(d)
    finally:
        os.chdir(old)
        shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, items: list[Any], layout: str, cut: float) -> None:
    if layout == "list":
        data = json.dumps(items, allow_nan=True).encode()
    else:
        data = b"\n".join(json.dumps(x, allow_nan=True).encode() if not isinstance(x, bytes) else x
                          for x in items) + b"\n"
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    if cut < 1.0:
        data = data[: int(len(data) * cut)]
    path.write_bytes(data)


# ---------------------------------------------------------------------------------------------- importers
@FUZZ
@given(items=st.lists(records | st.binary(max_size=30), min_size=1, max_size=5),
       layout=st.sampled_from(["lines", "list"]), gz=st.booleans(), cut=st.sampled_from([1.0, 1.0, 0.7, 0.3]),
       fmt=st.sampled_from(["auto", "chat", "tau-bench", "mini-swe-agent", "swe-agent", "who-and-when", "immunity"]),
       policy=st.sampled_from(["skip", "replace", "rename"]))
def test_fuzz_importers_never_raise_and_keep_what_was_stored(items, layout, gz, cut, fmt, policy):
    seed, live, n = _seed_store()
    with _workdir() as d:
        if layout == "list":
            items = [x for x in items if not isinstance(x, bytes)]
        # a record may claim the live run's id: it must not replace it unless asked to
        items.append({"id": live, "messages": [{"role": "user", "content": "hijack"}]})
        src = d / ("in.jsonl.gz" if gz and layout == "lines" else "in.json.gz" if gz else
                   "in.jsonl" if layout == "lines" else "in.json")
        _write(src, items, layout, cut)
        db = str(d / "s.db")
        shutil.copy(seed, db)
        report = import_paths([str(d)], fmt, db, on_conflict=policy)
        assert report.runs >= 0 and all(p.message for p in report.problems)
        if policy != "replace":
            assert _steps(db, live) == n


# ---------------------------------------------------------------------------------------------- packs
@functools.cache
def _base_pack() -> str:
    spec = {"name": "fuzz", "version": "1.0.0", "threshold": 0.5,
            "patterns": [{"error_class": "loop", "description": "same call again",
                          "signature": "actverify failed repeatederror3to4", "weight": 2.0,
                          "intervention": "[immunity] change the call"}]}
    with _workdir() as d:
        (d / "spec.json").write_text(json.dumps(spec))
        res = CliRunner().invoke(build_cli(), ["pack", "build", "spec.json", "--out", "p.json"])
        assert res.exit_code == 0, res.output
        return (d / "p.json").read_text()


def _targets(doc: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    out = [(doc, k) for k in list(doc)]
    pats = doc.get("patterns")
    if isinstance(pats, list) and pats and isinstance(pats[0], dict):
        out += [(pats[0], k) for k in list(pats[0])]
    model = doc.get("model")
    members = model.get("members") if isinstance(model, dict) else None
    for m in members if isinstance(members, list) else []:
        if isinstance(m, dict):
            out += [(m, k) for k in list(m)]
            if isinstance(m.get("logistic"), dict):
                out += [(m["logistic"], k) for k in list(m["logistic"])]
    return out


@FUZZ
@given(data=st.data(), rehash=st.booleans())
def test_fuzz_pack_loading_refuses_cleanly_or_loads_a_typed_pack(data, rehash):
    doc = json.loads(_base_pack())
    for _ in range(data.draw(st.integers(1, 3))):
        target, key = data.draw(st.sampled_from(_targets(doc)))
        target[key] = data.draw(json_values | st.sampled_from(["-inf", "nan", 1e308 * 10, -0.0, 2**64, True]))
    if rehash:
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            doc["content_hash"] = content_hash(doc)
    try:
        pack = verify_document(doc, source="fuzz")
    except PackError as exc:
        assert str(exc) and "\n" not in str(exc)[:300]
        return
    assert isinstance(pack, PatternPack)
    assert pack.threshold is None or isinstance(pack.threshold, float | int)
    for p in pack.patterns:
        assert isinstance(p.weight, float | int) and p.weight == p.weight and abs(p.weight) != float("inf")


# ---------------------------------------------------------------------------------------------- CLI
WORDS = ["runs", "show", "export", "import", "pack", "verify", "inspect", "install", "list", "schema", "plugins",
         "--store", "s.db", "notdb.txt", ".", "missing.db", "--limit", "-1", "0", "1e9", "nan", "9" * 30,
         "--format", "chat", "auto", "--on-conflict", "merge", "--output", "-o", "-", "/proc/nope/x", "--json",
         "--run", "--source", "--key", "--dir", "--out", "in.jsonl", "bad.json", "n" * 300, "--help"]
COMMANDS = [["runs"], ["runs", "show"], ["export"], ["import"], ["pack", "verify"], ["pack", "inspect"],
            ["pack", "install"], ["pack", "list"], ["pack", "sign"], ["schema"]]


def _cli_dir(d: Path) -> None:
    seed, _, _ = _seed_store()
    shutil.copy(seed, d / "s.db")
    (d / "notdb.txt").write_text("not a database")
    (d / "in.jsonl").write_text('{"id": "x", "messages": [{"role": "user", "content": "hi"}]}\n{bad\n')
    (d / "bad.json").write_text('{"format": "immunity-pattern-pack", "format_version": 1, "name": "x", '
                                '"threshold": NaN}')


def _invoke(args: list[str]) -> Any:
    env = {"IMMUNITY_STORE": "s.db", "IMMUNITY_PACKS_DIR": "packs"}
    return CliRunner().invoke(build_cli(), args, env=env, catch_exceptions=True)


def _clean(res: Any) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 1, 2), res.exit_code
    if res.exit_code == 1 and "Error:" in res.output:
        assert len([ln for ln in res.output.splitlines() if ln.startswith("Error:")]) == 1


@FUZZ
@given(cmd=st.sampled_from(COMMANDS), rest=st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=5))
def test_fuzz_cli_answers_every_input_without_a_traceback(cmd, rest):
    _, live, n = _seed_store()
    with _workdir() as d:
        _cli_dir(d)
        _clean(_invoke(cmd + rest))
        assert _steps(str(d / "s.db"), live) == n


# ---------------------------------------------------------------------------------------------- corpus
CORPUS = [
    (["runs", "--store", "notdb.txt"], "notdb.txt"),
    (["runs", "--store", "."], "store"),
    (["runs", "--store", "s.db", "--limit", "9" * 30], "--limit"),
    (["runs", "--store", "s.db", "--limit", "0"], "--limit"),
    (["export", "--store", "notdb.txt", "-o", "-"], "notdb.txt"),
    (["export", "--store", "s.db", "-o", "/proc/nope/out.jsonl"], "Error:"),
    (["eval", "--bootstrap", "0", "in.jsonl"], "--bootstrap"),
    (["eval", "--bootstrap", "1e9", "in.jsonl"], "--bootstrap"),
    (["eval", "--folds", "1", "in.jsonl"], "--folds"),
    (["learn", "in.jsonl", "--out", "p.json", "--min-similarity", "nan"], "--min-similarity"),
    (["pack", "verify", "bad.json"], "refused"),
    (["pack", "inspect", "n" * 5000], "no pattern pack"),
    (["pack", "verify", "n" * 5000], "Error:"),
    (["learn", "in.jsonl", "--out", "p.json", "--name", "n" * 5000], "Error:"),
    (["import", "--store", "s.db", "--on-conflict", "merge", "in.jsonl"], "--on-conflict"),
    (["import", "--store", "notdb.txt", "in.jsonl"], "Error:"),
    (["import", "--store", "s.db", "--format", "nope", "in.jsonl"], "--format"),
]


@pytest.mark.parametrize("args, says", CORPUS, ids=lambda a: " ".join(a)[:60] if isinstance(a, list) else None)
def test_corpus_of_bad_cli_input_gives_one_line_errors(args, says):
    _, live, n = _seed_store()
    with _workdir() as d:
        _cli_dir(d)
        res = _invoke(args)
        _clean(res)
        assert res.exit_code != 0 and says in res.output, res.output
        assert _steps(str(d / "s.db"), live) == n


@contextlib.contextmanager
def _read_only(path: Path):
    """``path`` made unwritable for this process: a mode bit for a user; root ignores mode bits, so
    for root the file is made immutable (``chattr +i``), which binds root too."""
    if os.geteuid() != 0:
        os.chmod(path, stat.S_IRUSR)
        yield
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: a file cannot be made read-only for root")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], capture_output=True)


def test_a_read_only_store_is_a_one_line_error():
    with _workdir() as d:
        _cli_dir(d)
        (d / "in2.jsonl").write_text('{"id": "y", "messages": [{"role": "user", "content": "hi"}]}\n')
        before = (d / "s.db").read_bytes()
        with _read_only(d / "s.db"):
            res = _invoke(["import", "--store", "s.db", "in2.jsonl"])
        _clean(res)
        assert res.exit_code != 0
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert (d / "s.db").read_bytes() == before


def test_ten_megabyte_arguments_are_clipped_in_the_store():
    with _workdir() as d:
        rt = Runtime(store=str(d / "big.db"))
        run = FakeRun(rt, task="big")
        run.tool("write", {"content": "x" * 10_000_000}, result="ok")
        run.end("success")
        rt.close()
        store = SQLiteStore(str(d / "big.db"), background=False)
        try:
            step = store.steps(run.run.run_id)[0]
        finally:
            store.close()
        assert len(step.arguments["content"]) < 20_000 and "more characters" in step.arguments["content"]
        assert os.path.getsize(d / "big.db") < 2_000_000
