"""The LLM verifier inside a runtime: tiers, verdicts reaching the next model call, pre-execution
blocks, and fail-open on every kind of endpoint failure (recorded and visible in the timeline and
in ``immunity doctor``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.errors import PluginError
from immunity.models import Outcome
from immunity.timeline import render_run
from immunity_llm_verifier.testing import FakeEndpoint, FakeRequest, verdict

TASK = "Archive the orders older than 2020 into orders_archive; do not touch other tables."
SCOPE = verdict(False, "scope_creep", message="deletes the users table, which the task does not mention",
                hint="Only archive old orders; restore the users table.")


def _flag_users(req: FakeRequest) -> Any:
    return SCOPE if "users" in req.step_to_check else verdict(True)


def _run(rt: Any, *steps: tuple[str, dict[str, Any], str]) -> Any:
    s = rt.start_run(task=TASK)
    for tool, args, result in steps:
        s.tool_start(tool, args)
        s.tool_end(tool, result)
    return s


def _errors(rt: Any, s: Any) -> list[dict[str, Any]]:
    rt.flush()
    return [e for e in rt.store.plugin_errors(s.run.run_id) if e["plugin"] == "llm_verifier"]


# ------------------------------------------------------------------------------------------ verdicts
def test_l2_and_l3_steps_are_checked_and_the_hint_reaches_the_next_model_call(make_runtime: Any,
                                                                            monkeypatch: Any) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    ep = FakeEndpoint(_flag_users)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(api_key_env="JUDGE_KEY"))
    s = rt.start_run(task=TASK)
    s.tool_start("search_orders", {"before": "2020-01-01"})
    s.tool_end("search_orders", "1432 orders")                       # SEARCH: L1 only, no call
    assert ep.calls == 0
    s.tool_start("run_script", {"path": "archive.py"})
    d = s.tool_end("run_script", "archived 1432 rows")                # EXECUTE: L2
    assert ep.calls == 1 and [v.ok for v in d.verdicts if v.plugin == "llm_verifier"] == [True]
    s.tool_start("delete_table", {"table": "users"})
    d = s.tool_end("delete_table", "deleted users")                     # EDIT with a side effect: L3
    llm = [v for v in d.verdicts if v.plugin == "llm_verifier"]
    assert len(llm) == 1 and not llm[0].ok and llm[0].error_class == "scope_creep"
    assert llm[0].evidence["tier"] == "L3" and llm[0].evidence["model"] == "fake-judge"
    assert llm[0].hint == "[immunity] Only archive old orders; restore the users table."
    assert d.intervention is not None and d.intervention.verdict_plugin == "llm_verifier"
    nxt = s.model_start([{"role": "user", "content": TASK}])
    assert nxt.inject == ["[immunity] Only archive old orders; restore the users table."]
    # what went over the wire
    req = ep.requests[-1]
    assert req.headers["authorization"] == "Bearer sk-test-123"
    assert req.body["model"] == "fake-judge" and req.body["temperature"] == 0
    assert TASK in req.prompt and "delete_table" in req.step_to_check and "deleted users" in req.step_to_check
    assert "run_script" in req.prompt and "[verified]" in req.prompt  # the L2 step passed: marked verified
    s.end(Outcome.FAILURE)
    rt.flush()
    stored = rt.store.verdicts(s.run.run_id)
    assert [v.error_class for v in stored if v.plugin == "llm_verifier"] == ["scope_creep"]
    assert s.run.metadata["llm_verifier"]["calls"] == 2 and s.run.metadata["llm_verifier"]["tokens"] == 200


def test_final_answer_is_l3(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(False, "incomplete", hint="Also archive the order items.")
                      if "final answer" in req.prompt else verdict(True))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = rt.start_run(task=TASK)
    s.model_end("Archived the orders.")
    d = s.final_answer("Archived the orders.")
    assert ep.calls == 1 and "Archived the orders." in ep.requests[0].step_to_check
    assert [v.error_class for v in d.verdicts if not v.ok] == ["incomplete"]
    assert d.verdicts[0].evidence["phase"] == "final"


def test_not_on_the_path_unless_switched_on(make_runtime: Any) -> None:
    ep = FakeEndpoint(_flag_users)
    rt = make_runtime(llm_verifier=ep.options())   # options alone do not switch it on
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    s.final_answer("done")
    assert ep.calls == 0 and "llm_verifier" not in s.run.metadata
    assert "llm_verifier" in rt.inactive  # its per-event hooks are not called at all


def test_pre_execution_check_blocks_a_side_effecting_call(make_runtime: Any) -> None:
    ep = FakeEndpoint(_flag_users)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(tiers={"L3": {"pre_execution": True}}))
    s = rt.start_run(task=TASK)
    d = s.tool_start("delete_table", {"table": "users"}, tool_call_id="c1")
    assert d.block and d.message == "[immunity] Only archive old orders; restore the users table."
    assert "(not executed yet)" in ep.requests[0].step_to_check
    # a passing pre-execution check is not asked again after the call
    d = s.tool_start("update_orders", {"before": "2020", "set": "archived"}, tool_call_id="c2")
    assert not d.block and ep.calls == 2
    s.tool_end("update_orders", "archived", tool_call_id="c2")
    assert ep.calls == 2


def test_warning_before_execution_does_not_block_and_severity_is_capped(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(False, "wrong_parameters", severity="warning")
                      if "c1" not in req.prompt and "users" in req.step_to_check else
                      verdict(False, "scope_creep", severity="critical"))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(tiers={"L3": {"pre_execution": True}}))
    s = rt.start_run(task=TASK)
    d = s.tool_start("delete_table", {"table": "users"})
    assert not d.block and [v.severity.value for v in d.verdicts if not v.ok] == ["warning"]
    s.tool_end("delete_table", "dropped")
    d = s.tool_start("delete_table", {"table": "orders"})
    # the model said critical; capped at error by default, so it blocks but does not stop the run
    assert d.block and not d.stop
    assert [v.severity.value for v in d.verdicts if not v.ok] == ["error"]


def test_min_confidence_turns_unsure_flags_into_passes(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(False, "goal_drift", confidence=0.3))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(min_confidence=0.5))
    s = rt.start_run(task=TASK)
    s.tool_start("run_script", {"path": "x.py"})
    d = s.tool_end("run_script", "ok")
    assert [v.ok for v in d.verdicts] == [True] and d.verdicts[0].evidence["below_min_confidence"] == "goal_drift"


# ------------------------------------------------------------------------------------------ fail-open
def test_http_500_is_recorded_and_the_run_goes_on(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: httpx.Response(500, text="upstream exploded"))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    d = s.model_start([{"role": "user", "content": "next"}])
    assert d.ok and d.inject == []
    errs = _errors(rt, s)
    assert len(errs) == 1 and "HTTP 500" in errs[0]["error"] and "upstream exploded" in errs[0]["error"]
    assert errs[0]["hook"] == "immunity_verify" and "VerifierUnavailable" in errs[0]["error"]


def test_429_with_retry_after_is_retried_within_the_deadline(make_runtime: Any) -> None:
    replies = iter([httpx.Response(429, headers={"Retry-After": "0.2"}, text="slow down"), SCOPE])
    ep = FakeEndpoint(lambda req: next(replies))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(timeout_s=2))
    t0 = time.monotonic()
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    assert time.monotonic() - t0 >= 0.2
    assert ep.calls == 2 and _errors(rt, s) == []
    assert [v.error_class for v in rt.store.verdicts(s.run.run_id)] == ["scope_creep"]


def test_429_with_a_retry_after_past_the_deadline_fails_open(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: httpx.Response(429, headers={"Retry-After": "120"}))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(timeout_s=1))
    t0 = time.monotonic()
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    assert time.monotonic() - t0 < 1.0  # did not wait 120 s
    (err,) = _errors(rt, s)
    assert "429" in err["error"] and "Retry-After 120" in err["error"]


@pytest.mark.parametrize("content", ["The step looks fine to me.", "{\"ok\": maybe}"])
def test_unparseable_reply_is_recorded(make_runtime: Any, content: str) -> None:
    ep = FakeEndpoint(lambda req: content)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    (err,) = _errors(rt, s)
    assert "gave no JSON verdict" in err["error"]
    assert s.run.metadata["llm_verifier"]["problems"] == 1


def test_reply_that_is_not_a_chat_completion(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: httpx.Response(200, text="<html>login</html>"))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    (err,) = _errors(rt, s)
    assert "did not return a chat completion" in err["error"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local TCP server that accepts connections and never answers (a hung endpoint)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conns.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
    stop.set()
    t.join(1)
    for c in conns:
        c.close()
    srv.close()


def test_hard_timeout_on_a_hung_endpoint(make_runtime: Any, silent_server: str) -> None:
    rt = make_runtime(verifiers=["llm"], llm_verifier={"base_url": silent_server, "model": "m", "timeout_s": 0.3})
    t0 = time.monotonic()
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.0
    (err,) = _errors(rt, s)
    assert "VerifierTimeout" in err["error"] and "within 0.3s" in err["error"]


def test_timeout_is_not_fatal_even_fail_closed(make_runtime: Any) -> None:
    def hang(req: FakeRequest) -> Any:
        raise httpx.ReadTimeout("timed out")

    ep = FakeEndpoint(hang)
    rt = make_runtime(verifiers=["llm"], fail_closed=True, llm_verifier=ep.options())
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"))  # no PluginError: a timeout is a limit
    assert "VerifierTimeout" in _errors(rt, s)[0]["error"]


def test_endpoint_error_fails_the_run_when_fail_closed(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: httpx.Response(500))
    rt = make_runtime(verifiers=["llm"], fail_closed=True, llm_verifier=ep.options())
    s = rt.start_run(task=TASK)
    s.tool_start("delete_table", {"table": "users"})
    with pytest.raises(PluginError, match="llm_verifier"):
        s.tool_end("delete_table", "dropped")


def test_misconfigured_endpoint_connection_refused(tmp_path: Path, make_runtime: Any) -> None:
    """Port 9 (discard) on localhost: nothing listens. The run finishes; the problem is in the run's
    timeline and in ``immunity doctor``; after three failures in a row the verifier stops calling."""
    db = str(tmp_path / "runs.db")
    rt = make_runtime(store=db, verifiers=["llm"],
                      llm_verifier={"base_url": "http://127.0.0.1:9/v1", "model": "judge", "timeout_s": 2})
    s = rt.start_run(task=TASK)
    for i in range(5):
        s.tool_start("write_file", {"path": f"f{i}.txt"})
        d = s.tool_end("write_file", "written")
        assert not [v for v in d.verdicts if v.plugin == "llm_verifier"]
    s.final_answer("Archived.")
    s.end(Outcome.SUCCESS)
    rt.flush()
    errs = _errors(rt, s)
    assert len(errs) == 3 and all("cannot reach http://127.0.0.1:9/v1" in e["error"] for e in errs)
    assert "no more LLM checks in this run" in errs[-1]["error"]
    assert s.run.metadata["llm_verifier"]["calls"] == 3
    assert s.run.status == "finished" and s.run.outcome == Outcome.SUCCESS
    timeline = render_run(rt.store, rt.store.get_run(s.run.run_id))
    assert "plugin error in llm_verifier (immunity_verify)" in timeline
    rt.close()
    out = CliRunner().invoke(build_cli(), ["doctor"], env={"IMMUNITY_STORE": db})
    assert "llm_verifier in immunity_verify: VerifierUnavailable: cannot reach" in out.output
    shown = CliRunner().invoke(build_cli(), ["runs", "--store", db, "show", s.run.run_id])
    assert "plugin error in llm_verifier" in shown.output


def test_bad_options_are_recorded_once_per_run(make_runtime: Any) -> None:
    rt = make_runtime(verifiers=["llm"], llm_verifier={"model": "judge"})  # no endpoint, no chat model
    s = _run(rt, ("delete_table", {"table": "users"}, "dropped"), ("write_file", {"path": "a"}, "ok"))
    d = s.final_answer("done")
    assert d.verdicts == [] or all(v.plugin != "llm_verifier" for v in d.verdicts)
    (err,) = _errors(rt, s)
    assert "neither base_url" in err["error"]
    # core's L1 rules still run for this run
    assert "rules" in [n for n, _ in rt._verifiers]


# ------------------------------------------------------------------------------------------ budgets
def test_call_budget_stops_calling_and_says_so_once(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(True))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(max_calls=2))
    s = _run(rt, *[("write_file", {"path": f"f{i}"}, "ok") for i in range(5)])
    assert ep.calls == 2
    (err,) = _errors(rt, s)
    assert "budget used up (2/2 calls" in err["error"] and "VerifierBudgetExhausted" in err["error"]
    assert s.run.metadata["llm_verifier"]["stopped"].startswith("budget used up")


def test_token_budget_counts_reported_usage(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(True), tokens=700)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(max_tokens=1500))
    s = _run(rt, *[("write_file", {"path": f"f{i}"}, "ok") for i in range(5)])
    assert ep.calls == 3  # 700, 1400, 2100 >= 1500: the fourth is not made
    assert s.run.metadata["llm_verifier"]["tokens"] == 2100
    assert len(_errors(rt, s)) == 1


def test_token_budget_estimates_when_usage_is_missing(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(True), tokens=None)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = _run(rt, ("write_file", {"path": "f"}, "ok"))
    est = s.run.metadata["llm_verifier"]["tokens"]
    assert est > len(ep.requests[0].prompt) // 5


def test_slow_checks_do_not_get_the_verifier_or_the_rules_skipped(make_runtime: Any) -> None:
    """Core skips a plugin after three step-budget overruns; a model call always overruns it."""
    def slow(req: FakeRequest) -> Any:
        time.sleep(0.25)
        return verdict(True)

    ep = FakeEndpoint(slow)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options())
    s = rt.start_run(task=TASK)
    for i in range(5):
        s.tool_start("write_file", {"path": f"f{i}"})
        s.tool_end("write_file", "ok")
    seen = []
    for _ in range(3):  # L1 rules still see the loop
        s.tool_start("write_file", {"path": "same"})
        seen += s.tool_end("write_file", "ok").verdicts
    assert ep.calls == 8
    assert "llm_verifier" not in s._skipped and not any("rules" in p for p in s._skipped)
    assert any(v.error_class == "loop" and v.plugin == "verifier:rules" for v in seen)
    rt.flush()
    assert [e for e in rt.store.plugin_errors(s.run.run_id) if e["hook"] == "budget"] == []


# ------------------------------------------------------------------------------------------ chat models
def test_langchain_chat_model_transport(make_runtime: Any) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    model = FakeListChatModel(responses=['{"ok": true, "error_class": "none"}',
                                         '```json\n{"ok": false, "error_class": "scope_creep", "hint": "No."}\n```'])
    rt = make_runtime(verifiers=["llm"], llm_verifier={"chat_model": model})
    s = rt.start_run(task=TASK)
    s.tool_start("run_script", {"path": "a.py"})
    assert [v.ok for v in s.tool_end("run_script", "ok").verdicts] == [True]
    s.tool_start("delete_table", {"table": "users"})
    (v,) = [v for v in s.tool_end("delete_table", "dropped").verdicts if v.plugin == "llm_verifier"]
    assert v.error_class == "scope_creep" and v.hint == "[immunity] No." and v.evidence["model"] == "FakeListChatModel"


def test_chat_model_timeout_and_failure(make_runtime: Any) -> None:
    class Hung:
        model_name = "hung"

        def invoke(self, messages: list[dict[str, str]]) -> Any:
            time.sleep(5)

    class Broken:
        def invoke(self, messages: list[dict[str, str]]) -> Any:
            raise ConnectionError("no route to model")

    rt = make_runtime(verifiers=["llm"], llm_verifier={"chat_model": Hung(), "timeout_s": 0.2,
                                                        "tiers": {"L3": {"chat_model": Broken()}}})
    t0 = time.monotonic()
    s = _run(rt, ("run_script", {"path": "a.py"}, "ok"), ("delete_table", {"table": "users"}, "dropped"))
    assert time.monotonic() - t0 < 2
    errs = [e["error"] for e in _errors(rt, s)]
    assert "VerifierTimeout: chat model hung did not answer within 0.2s" in errs[0]
    assert "ConnectionError: no route to model" in errs[1]


def test_pre_checked_call_without_a_call_id_is_not_asked_twice(make_runtime: Any) -> None:
    ep = FakeEndpoint(lambda req: verdict(True))
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(tiers={"L3": {"pre_execution": True}}))
    s = rt.start_run(task=TASK)
    s.tool_start("update_orders", {"set": "archived"})
    s.tool_end("update_orders", "archived")
    s.tool_start("run_script", {"path": "check.py"})   # L2: never checked before it runs
    s.tool_end("run_script", "ok")
    assert [("not executed yet" in r.step_to_check, "run_script" in r.step_to_check) for r in ep.requests] == \
        [(True, False), (False, True)]
