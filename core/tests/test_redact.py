"""Redaction: planted secrets appear nowhere in the store, exports, hints or packs."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.learning.packs import load_pack, pattern_matrix, save_pack
from immunity.models import Event, EventKind, FailurePattern, PatternPack
from immunity.redact import Redactor, from_config
from immunity.runtime import Runtime
from immunity.testing import FakeRun

OPENAI = "sk-proj-" + "Q" * 8 + "a1b2c3d4e5f6g7h8i9j0"
AWS_ID = "AKIA" + "IOSFODNN7EXAMPL3"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9EXAMPLE"
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.signature0123"
PASSWORD = "hunter2-Pa55"
PEM_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2BZ"
PRIVATE_KEY = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nabc\n-----END RSA PRIVATE KEY-----"
GITHUB = "ghp_" + "x7" * 18
SECRETS = [OPENAI, AWS_ID, AWS_SECRET, BEARER, PASSWORD, PEM_BODY, GITHUB]


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize("text, kept, gone", [
    (f"key {OPENAI} here", "key ", OPENAI),
    (f"{AWS_ID}:{AWS_SECRET}", "", AWS_ID),
    (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = ", AWS_SECRET),
    (f"Authorization: Bearer {BEARER}", "Authorization: Bearer ", BEARER),
    (f"login --password={PASSWORD} --user bob", "--user bob", PASSWORD),
    (json.dumps({"cfg": {"secret": PASSWORD}}), '"secret": "', PASSWORD),
    (f"conf: {PRIVATE_KEY} end", " end", PEM_BODY),
    (f"cut: -----BEGIN PRIVATE KEY-----\n{PEM_BODY}", "cut: ", PEM_BODY),
    (f"token {GITHUB}", "token ", GITHUB),
])
def test_builtin_detectors(text, kept, gone):
    out = Redactor().text(text)
    assert gone not in out and kept in out and "[REDACTED:" in out


def test_ordinary_text_is_left_alone():
    r = Redactor()
    for text in ["max_tokens=100 total_tokens: 5", "pass the tests in tests/test_x.py", "Asia is big",
                 "def f(key): return d[key]", "bob@example.com wrote 555-123-4567"]:
        assert r.text(text) == text


def test_options_emails_phones_user_patterns_and_switch_off():
    r = Redactor({"ticket": r"TCK-\d{6}"}, emails=True, phones=True)
    out = r.text("mail bob@example.com, call +1 555-123-4567, ticket TCK-123456")
    assert "bob@example.com" not in out and "555-123-4567" not in out and "TCK-123456" not in out
    assert "[REDACTED:ticket]" in out
    assert Redactor(enabled=False).text(f"password={PASSWORD}") == f"password={PASSWORD}"
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Redactor(["(unclosed"])


def test_values_under_secret_keys_are_masked_and_numbers_kept():
    out = Redactor().value({"args": {"Password": "x y z", "api_key": "k", "n": 3, "ok": True},
                            "list": [f"token={GITHUB}"], "deep": {"x-auth-token": "abc"}})
    assert out == {"args": {"Password": "[REDACTED:secret]", "api_key": "[REDACTED:secret]", "n": 3, "ok": True},
                   "list": ["token=[REDACTED:secret]"], "deep": {"x-auth-token": "[REDACTED:secret]"}}


def test_plugin_hook_registers_patterns(make_runtime):
    import pluggy

    hookimpl = pluggy.HookimplMarker("immunity")

    class Plugin:
        @hookimpl
        def immunity_register_redaction_patterns(self, register):
            register("employee", re.compile(r"EMP-\d{4}"))

    rt = make_runtime(plugins=[Plugin()])
    assert rt.redactor.text("employee EMP-1234 left") == "employee [REDACTED:plugin_employee] left"


def test_bad_user_pattern_is_a_warning_not_an_error(make_runtime, caplog):
    rt = make_runtime(redact={"patterns": ["(bad"]})
    assert "bad redaction options" in caplog.text
    assert rt.redactor.text(f"password={PASSWORD}") == "password=[REDACTED:secret]"
    assert from_config(type("C", (), {"options": {"redact": False}})()).enabled is False


def _planted_run(rt: Runtime) -> tuple[FakeRun, list[str]]:
    run = FakeRun(rt, task=f"deploy with {OPENAI} and password={PASSWORD}")
    hints: list[str] = []
    s = run.session
    s.model_start([{"role": "user", "content": f"my AWS keys are {AWS_ID} / {AWS_SECRET}"}], model="m")
    s.model_end(f"I will use Bearer {BEARER}")
    for _ in range(3):  # a failing tool whose output carries secrets: retry / repeated-error hints quote it
        run.tool("deploy", {"token": GITHUB, "password": PASSWORD, "key_file": PRIVATE_KEY},
                 error=f"503 Service Unavailable: auth with {OPENAI} failed, password={PASSWORD}",
                 result=f"Authorization: Bearer {BEARER}")
        d = s.model_start([{"role": "user", "content": "go on"}], model="m")
        hints += d.inject
    s.emit(Event(kind=EventKind.TOOL_END, tool="read", result=PRIVATE_KEY))
    run.final(f"done; the key was {AWS_ID}")
    run.end("failure")
    return run, hints


def test_planted_secrets_reach_no_store_export_hint_or_pack(tmp_path):
    db = tmp_path / "s.db"
    rt = Runtime(store=str(db))
    run, hints = _planted_run(rt)
    rt.close()
    assert hints, "the failing tool should have produced hints"
    assert all(not _leaks(h) for h in hints), hints
    assert any("<tool-output>" in h and "[REDACTED:" in h for h in hints)

    conn = sqlite3.connect(db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert "deploy" in dump and "[REDACTED:" in dump
    assert _leaks(dump) == []
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the WAL and journal files too
    assert not [s for s in SECRETS if s.encode() in raw]

    out = tmp_path / "export.jsonl"
    res = CliRunner().invoke(build_cli(), ["export", "--store", str(db), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "[REDACTED:" in out.read_text() and _leaks(out.read_text()) == []
    res = CliRunner().invoke(build_cli(), ["runs", "--store", str(db), "show", run.run.run_id])
    assert res.exit_code == 0 and _leaks(res.output) == []

    pack = PatternPack(name="p", embedder="hashing", dimension=2, patterns=[FailurePattern(
        error_class="loop", description=f"tool failed with {OPENAI}", vector=[1.0, 0.0],
        examples=[f"password={PASSWORD}", PRIVATE_KEY], intervention=f"use {GITHUB}")],
        interventions={"loop": [f"Bearer {BEARER}"]}, provenance={"tasks": [f"{AWS_ID}"]})
    save_pack(pack, tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert _leaks(text) == [] and "[REDACTED:" in text
    assert pattern_matrix(load_pack(tmp_path / "p.json"))[0].tolist() == [1.0, 0.0]


def test_export_of_an_old_unredacted_store_is_redacted(tmp_path):
    db = tmp_path / "old.db"
    rt = Runtime(store=str(db), redact={"enabled": False})  # a store written without redaction
    run, _ = _planted_run(rt)
    rt.close()
    conn = sqlite3.connect(db)
    assert _leaks("\n".join(conn.iterdump()))
    conn.close()
    res = CliRunner().invoke(build_cli(), ["export", "--store", str(db), "--output", "-"])
    assert res.exit_code == 0 and "[REDACTED:" in res.output and _leaks(res.output) == []
