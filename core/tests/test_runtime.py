"""Every per-run hook through the runtime, fail-open / fail-closed, the step budget, tolerance."""

import time

import pluggy
import pytest
from immunity.domain import ActionMapping, Domain, Rule
from immunity.errors import ImmunityError, PluginError
from immunity.models import (
    ActionType,
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Verdict,
)
from immunity.outcomes import set_outcome
from immunity.runtime import Runtime
from immunity.testing import FakeAdapter, FakeRun, ScriptStep

hookimpl = pluggy.HookimplMarker("immunity")


class Recorder:
    def __init__(self):
        self.events, self.steps, self.configured, self.unconfigured = [], [], 0, 0

    @hookimpl
    def immunity_configure(self, config):
        self.configured += 1

    @hookimpl
    def immunity_unconfigure(self, config):
        self.unconfigured += 1

    @hookimpl
    def immunity_observe(self, event, run, state):
        self.events.append(event.kind)

    @hookimpl
    def immunity_observe_step(self, step, run, state):
        self.steps.append((step.index, step.action_type, step.tool))


def test_observe_and_steps_through_runtime():
    rec = Recorder()
    rt = Runtime(store=":memory:", plugins=[rec])
    assert rec.configured == 1
    run = FakeRun(rt, task="fix it")
    run.model(tool_calls=[{"name": "search_code", "arguments": {"q": "x"}}])
    run.tool("search_code", {"q": "x"}, result="found x in a.py")
    run.model("done: fixed")
    run.final("done: fixed")
    run.end("success")
    assert rec.events == ["run_start", "model_start", "model_end", "tool_start", "tool_end", "model_start",
                          "model_end", "final_answer", "run_end"]
    assert rec.steps == [(0, ActionType.SEARCH, "search_code"), (1, ActionType.RESPOND, None)]
    stored = rt.store.get_run(run.run.run_id)
    assert stored.outcome.value == "success" and stored.status == "finished" and stored.steps == 2
    steps = rt.store.steps(run.run.run_id)
    assert [s.action_type for s in steps] == [ActionType.SEARCH, ActionType.DONE]  # final answer relabels
    assert [e.kind for e in rt.store.events(run.run.run_id)][0] == EventKind.RUN_START
    rt.close()
    assert rec.unconfigured == 1


class MapEverythingToPlan:
    @hookimpl
    def immunity_map_action(self, tool, arguments, text, run, domain):
        if tool == "special":
            return ActionMapping(ActionType.PLAN, 0.9, mapped_by="test")
        return None


def test_map_action_plugin_wins_and_domain_rules_apply():
    billing = Domain(name="billing", rules=[Rule(tool="refund", action="EDIT", side_effect=True),
                                           Rule(tool="sql", action="EDIT", when=r"\bdelete\b", destructive=True),
                                           Rule(tool="sql", action="SEARCH")])

    class DomainPlugin:
        @hookimpl
        def immunity_register_domains(self, register):
            register("billing", billing)

    rt = Runtime(store=None, plugins=[MapEverythingToPlan(), DomainPlugin()], domain="billing")
    run = FakeRun(rt, domain="billing")
    run.tool("special", {})
    run.tool("refund", {"id": 1})
    run.tool("sql", {"q": "DELETE FROM t"})
    run.tool("sql", {"q": "select 1"})
    run.tool("frobnicate", {})
    acts = [(s.action_type, s.side_effect, s.data.get("mapped_by")) for s in run.state.steps]
    assert acts == [(ActionType.PLAN, False, "test"), (ActionType.EDIT, True, "billing"),
                    (ActionType.EDIT, False, "billing"), (ActionType.SEARCH, False, "billing"),
                    (ActionType.OTHER, False, "heuristic")]
    assert run.state.steps[2].data["destructive"] is True
    rt.close()


class BlockRm:
    @hookimpl
    def immunity_verify(self, event, step, run, state):
        if event.kind == EventKind.TOOL_START and "rm -rf" in str(event.arguments):
            return Verdict(ok=False, block=True, error_class="unsafe_action", severity="error",
                           message="rm -rf", hint="Do not delete the repository.")
        return None


def test_verify_blocks_tool_and_records_verdict():
    rt = Runtime(store=":memory:", plugins=[BlockRm()])
    run = FakeRun(rt)
    d = run.tool("bash", {"command": "rm -rf /"})
    assert d.block and d.message == "Do not delete the repository."
    assert d.intervention.kind == InterventionKind.BLOCK
    step = run.state.steps[-1]
    assert step.data["blocked"] and "blocked by immunity" in step.error
    v = rt.store.verdicts(run.run.run_id)
    assert v[0].error_class == "unsafe_action" and v[0].plugin.endswith("BlockRm") or v[0].plugin
    assert rt.store.interventions(run.run.run_id)[0].kind == InterventionKind.BLOCK
    rt.close()


class WrongType:
    @hookimpl
    def immunity_verify(self, event, step, run, state):
        return "not a verdict"


def test_verify_wrong_return_type_is_recorded_and_ignored():
    rt = Runtime(store=":memory:", plugins=[WrongType()])
    run = FakeRun(rt)
    d = run.tool("search", {"q": 1})
    assert d.ok
    errs = rt.store.plugin_errors(run.run.run_id)
    assert errs and "expected Verdict" in errs[0]["error"]
    rt.close()


class Exploding:
    @hookimpl
    def immunity_observe(self, event, run, state):
        raise RuntimeError("observer exploded")

    @hookimpl
    def immunity_verify(self, event, step, run, state):
        raise ValueError("verifier exploded")


def test_fail_open_other_plugins_still_run_and_errors_are_stored():
    rec = Recorder()
    rt = Runtime(store=":memory:", plugins=[Exploding(), rec])
    adapter = FakeAdapter(rt, tools={"lookup": lambda **kw: "ok"})
    session = adapter.run([ScriptStep(tool="lookup", arguments={"id": 1}), ScriptStep(answer="fine")])
    assert session.run.final_answer == "fine"
    assert "tool_end" in rec.events  # the exploding observer did not hide events from the others
    errs = rt.store.plugin_errors(session.run.run_id)
    assert {e["hook"] for e in errs} == {"immunity_observe", "immunity_verify"}
    assert any("observer exploded" in e["error"] for e in errs)
    assert session.run.metadata["plugin_errors"]
    rt.close()


def test_fail_closed_reraises():
    rt = Runtime(store=None, plugins=[Exploding()], fail_closed=True)
    with pytest.raises(PluginError, match="observer exploded"):
        rt.start_run(task="x")
    rt.close()


class Slow:
    calls = 0

    @hookimpl
    def immunity_observe(self, event, run, state):
        Slow.calls += 1
        t = time.thread_time()
        while time.thread_time() - t < 0.01:  # burn CPU: over the budget in wall time too
            pass


def test_step_budget_skips_a_slow_plugin_for_the_rest_of_the_runtime():
    rt = Runtime(store=":memory:", plugins=[Slow()], step_budget_ms=2)
    run = FakeRun(rt)
    for i in range(5):
        run.tool("search", {"q": i})
    deadline = time.monotonic() + 2
    while Slow.calls < 3 and time.monotonic() < deadline:  # an abandoned call may start late
        time.sleep(0.01)
    assert Slow.calls == 3  # skipped after three overruns
    errs = rt.store.plugin_errors(run.run.run_id)
    assert any(e["hook"] == "budget" for e in errs)
    FakeRun(rt).tool("search", {"q": 9})  # a later run does not call it either
    time.sleep(0.05)
    assert Slow.calls == 3
    rt.close()


class CustomPolicy:
    @hookimpl
    def immunity_intervene(self, verdicts, event, run, state):
        return Intervention(kind=InterventionKind.HINT, text=f"custom: {verdicts[0].error_class}")

    @hookimpl
    def immunity_recover(self, event, verdicts, run, state):
        return Recovery(kind=RecoveryKind.SKIP, reason="custom skip")


def test_intervene_and_recover_plugins_win_over_defaults():
    rt = Runtime(store=":memory:", plugins=[CustomPolicy()])
    run = FakeRun(rt)
    run.tool("bash", {"command": "make"}, error="make: *** [all] Error 2")
    d = run.tool("bash", {"command": "make"}, error="make: *** [all] Error 2")
    assert d.intervention.text == "custom: repeated_tool_error"
    assert d.recovery.kind == RecoveryKind.SKIP
    m = run.model("thinking")
    assert m.inject == ["custom: repeated_tool_error"]
    assert run.model("again").inject == []  # delivered once, to the next call only
    rt.close()


def test_default_recovery_retries_with_hint_then_circuit_breaker_stops():
    rt = Runtime(store=":memory:", max_consecutive_failures=3)
    run = FakeRun(rt)
    d1 = run.tool("fetch", {"url": "a"}, error="ValueError: no such page")
    assert d1.recovery.kind == RecoveryKind.RETRY and "fetch failed" in d1.recovery.hint
    assert run.session.state.hints_pending == [d1.recovery.hint]  # queued for the next model call
    run.tool("fetch", {"url": "b"}, error="KeyError: 'title'")
    d3 = run.tool("fetch", {"url": "c"}, error="ValueError: bad url")
    assert d3.recovery.kind == RecoveryKind.ABORT and "circuit breaker" in d3.recovery.reason
    assert d3.stop and "circuit breaker" in d3.final_answer
    run.end()
    assert rt.store.get_run(run.run.run_id).status == "stopped"
    rt.close()


def test_loop_is_hinted_then_blocked_then_stopped():
    rt = Runtime(store=":memory:")
    run = FakeRun(rt)
    decisions = [run.tool("get_status", {"id": 7}, result="pending") for _ in range(6)]
    kinds = [d.intervention.kind if d.intervention else None for d in decisions]
    assert kinds[2] == InterventionKind.HINT  # third identical call: hint
    assert decisions[3].block  # fourth would-be identical call: blocked
    assert any(d.stop for d in decisions[3:])  # keeps going: stopped
    rt.close()


def test_tolerance_never_repeats_the_same_hint_and_caps_interventions():
    class SameVerdict:
        @hookimpl
        def immunity_verify(self, event, step, run, state):
            if event.kind == EventKind.TOOL_END:
                return Verdict(ok=False, error_class="goal_drift", message="drift", hint="stay on task")

    rt = Runtime(store=":memory:", plugins=[SameVerdict()])
    rt.config.max_interventions = 2
    run = FakeRun(rt)
    kinds = [run.tool("search", {"q": i}).intervention.kind for i in range(4)]
    assert kinds[0] == InterventionKind.HINT
    assert kinds[1] == InterventionKind.WARN  # same hint twice in a row -> record only
    rt.close()


def test_critical_verdict_stops_the_run():
    class Critical:
        @hookimpl
        def immunity_verify(self, event, step, run, state):
            if event.kind == EventKind.TOOL_END:
                return Verdict(ok=False, error_class="runaway_cost", severity="critical", message="over budget")

    rt = Runtime(store=":memory:", plugins=[Critical()])
    run = FakeRun(rt)
    d = run.tool("search", {"q": 1})
    assert d.stop and "over budget" in d.final_answer
    assert run.model("x").stop
    rt.close()


def test_side_effecting_tool_is_not_repeated():
    billing = Domain(name="billing", rules=[Rule(tool="refund", action="EDIT", side_effect=True)])

    class DomainPlugin:
        @hookimpl
        def immunity_register_domains(self, register):
            register("billing", billing)

    rt = Runtime(store=":memory:", plugins=[DomainPlugin()], domain="billing")
    session = rt.start_run(task="refund order 1", run_id="run-fixed")
    first = session.tool_start("refund", {"order": 1}, tool_call_id="c1")
    assert first.cached_result is None
    session.tool_end("refund", "refunded $10", tool_call_id="c1")
    retried = session.tool_start("refund", {"order": 1}, tool_call_id="c1")  # the same call again (retry/resume)
    assert retried.cached_result == "refunded $10"
    fresh = session.tool_start("refund", {"order": 1}, tool_call_id="c2")  # a new, deliberate call runs
    assert fresh.cached_result is None
    session.tool_end("refund", "refunded $10 again", tool_call_id="c2")
    session.rollback()  # after a rollback, the same arguments are not executed again
    assert session.tool_start("refund", {"order": 1}, tool_call_id="c9").cached_result is not None
    assert session.tool_start("refund", {"order": 2}, tool_call_id="c10").cached_result is None
    rt.close()



def test_emit_rejects_non_events_without_raising():
    rt = Runtime(store=":memory:")
    session = rt.start_run()
    d = session.emit({"kind": "tool_start"})  # type: ignore[arg-type]
    assert d.ok
    assert any("immunity Event" in e["error"] for e in rt.store.plugin_errors(session.run.run_id))
    rt.close()


def test_protect_finds_registered_adapter_and_reports_unknown():
    class ThingAdapter(FakeAdapter):
        name = "thing"

        @classmethod
        def matches(cls, obj):
            return isinstance(obj, Thing)

    class Thing:
        pass

    class AdapterPlugin:
        @hookimpl
        def immunity_register_adapters(self, register):
            register("thing", ThingAdapter)

    rt = Runtime(store=None, plugins=[AdapterPlugin()])
    adapter = rt.protect(Thing())
    assert isinstance(adapter, ThingAdapter) and adapter.instrumented
    with pytest.raises(ImmunityError, match="no installed adapter recognises"):
        rt.protect(object())
    rt.close()
    assert not adapter.instrumented  # close() detaches


def test_named_verifier_switched_on_by_config():
    class Strict:
        name = "strict"

        def __init__(self, config):
            self.config = config

        def verify(self, event, step, run, state):
            if step is not None and step.tool == "forbidden":
                return [Verdict(ok=False, error_class="wrong_tool", message="forbidden tool")]
            return []

    class VerifierPlugin:
        @hookimpl
        def immunity_register_verifiers(self, register):
            register("strict", Strict)

    off = Runtime(store=None, plugins=[VerifierPlugin()])
    assert FakeRun(off).tool("forbidden", {}).verdicts == []
    on = Runtime(store=None, plugins=[VerifierPlugin()], verifiers=["strict"])
    assert FakeRun(on).tool("forbidden", {}).verdicts[0].plugin == "verifier:strict"
    missing = Runtime(store=":memory:", verifiers=["nope"])
    run = FakeRun(missing)
    run.tool("search", {})
    assert any("nope" in e["error"] for e in missing.store.plugin_errors(run.run.run_id))
    for r in (off, on, missing):
        r.close()


def test_threads_share_a_session_safely():
    import threading

    rt = Runtime(store=":memory:")
    session = rt.start_run()

    def work(i):
        for j in range(50):
            session.tool_start("search", {"q": f"{i}-{j}"}, tool_call_id=f"{i}-{j}")
            session.tool_end("search", "r", tool_call_id=f"{i}-{j}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.end()
    assert session.state.n_steps == 200
    assert len(rt.store.steps(session.run.run_id)) == 200
    rt.close()


def test_tool_circuit_breaker_blocks_a_tool_that_keeps_failing():
    rt = Runtime(store=":memory:", max_consecutive_failures=100)
    run = FakeRun(rt)
    for i in range(4):
        run.tool("flaky_api", {"n": i}, error=f"HTTP 500 on attempt {i}")
    d = run.tool("flaky_api", {"n": 99})
    assert d.block and "flaky_api" in d.message
    assert not run.tool("other_api", {"n": 1}).block  # only that tool's circuit is open
    rt.close()


def test_rollback_calls_compensations_newest_first_and_allows_a_retry():
    billing = Domain(name="billing", rules=[Rule(tool="charge", action="EDIT", side_effect=True),
                                           Rule(tool="email", action="EDIT", side_effect=True)])

    class DomainPlugin:
        @hookimpl
        def immunity_register_domains(self, register):
            register("billing", billing)

    undone = []
    rt = Runtime(store=":memory:", plugins=[DomainPlugin()], domain="billing")
    rt.compensate_with("charge", lambda amount: undone.append(("refund", amount)))
    rt.compensate_with("email", lambda to: (_ for _ in ()).throw(RuntimeError("mail server down")))
    run = FakeRun(rt)
    run.tool("lookup", {"id": 1})
    cp = run.session.checkpoint({"framework_ref": "after-lookup"}, verified=True)
    run.tool("charge", {"amount": 10}, result="charged 10")
    run.tool("email", {"to": "a@b"}, result="sent")
    done = run.session.rollback(cp)
    assert done == ["charge"] and undone == [("refund", 10)]  # email's compensation raised: recorded
    assert any("mail server down" in e["error"] for e in rt.store.plugin_errors(run.run.run_id))
    assert run.session.tool_start("charge", {"amount": 10}, tool_call_id="y").cached_result is None  # undone
    assert run.session.tool_start("email", {"to": "a@b"}, tool_call_id="z").cached_result == "sent"  # kept
    assert rt.store.recoveries(run.run.run_id)[-1].kind == RecoveryKind.ROLLBACK
    rt.close()


def test_side_effect_not_repeated_on_resume_in_a_new_process(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "resume.db"
    code = f"""
import pluggy
from immunity.domain import Domain, Rule
from immunity.runtime import Runtime
hookimpl = pluggy.HookimplMarker("immunity")
class P:
    @hookimpl
    def immunity_register_domains(self, register):
        register("billing", Domain(name="billing", rules=[Rule(tool="refund", action="EDIT", side_effect=True)]))
rt = Runtime(store={str(db)!r}, plugins=[P()], domain="billing")
s = rt.start_run(run_id="thread-7")
d = s.tool_start("refund", {{"order": 1}}, tool_call_id="call-1")
print("cached" if d.cached_result else "executed")
if not d.cached_result:
    s.tool_end("refund", "refunded", tool_call_id="call-1")
"""
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (first.strip(), second.strip()) == ("executed", "cached")


def test_resume_run_from_the_store_continues_steps_and_signals(tmp_path):
    db = str(tmp_path / "resume.db")
    rt = Runtime(store=db)
    run = FakeRun(rt, run_id="resumable")
    run.tool("get_status", {"id": 1}, error="HTTP 503")
    run.tool("get_status", {"id": 1}, error="HTTP 503")
    run.session.checkpoint({"ref": "cp"}, verified=False)
    run.end()
    rt.close()

    rt2 = Runtime(store=db)
    session = rt2.resume_run("resumable")
    assert session.state.n_steps == 2 and session.state.consecutive_failures == 2
    assert session.checkpoints and session.run.status == "running"
    session.tool_start("get_status", {"id": 2}, tool_call_id="x")
    session.tool_end("get_status", "ok", tool_call_id="x")
    session.end("success")
    assert [s.index for s in rt2.store.steps("resumable")] == [0, 1, 2]
    events = rt2.store.events("resumable")
    assert [e.kind for e in events][-3:] == ["tool_start", "tool_end", "run_end"]  # numbered after the old ones
    assert rt2.resume_run("no-such-run") is None
    rt2.close()


def test_blocked_calls_count_towards_the_run_circuit_breaker():
    rt = Runtime(store=":memory:", plugins=[BlockRm()], max_consecutive_failures=3)
    run = FakeRun(rt)
    decisions = [run.tool("bash", {"command": f"rm -rf /tmp/{i}"}) for i in range(3)]
    assert all(d.block for d in decisions)
    assert decisions[-1].stop and "circuit breaker" in decisions[-1].final_answer
    rt.close()


def test_ids_are_unique_and_cheap():
    from immunity.models import new_id

    ids = {new_id("x_") for _ in range(100_000)}
    assert len(ids) == 100_000


def test_start_run_with_a_known_id_continues_the_run(tmp_path):
    db = str(tmp_path / "cont.db")
    rt = Runtime(store=db)
    first = rt.start_run(run_id="t-1", task="x")
    first.tool_start("search", {"q": 1}, tool_call_id="a")
    first.tool_end("search", "r", tool_call_id="a")
    first.end()
    rt.close()
    rt2 = Runtime(store=db)
    again = rt2.start_run(run_id="t-1", task="x")
    assert again.state.n_steps == 1 and again.run.status == "running"
    rt2.close()


def test_observe_only_records_verdicts_but_never_acts():
    rt = Runtime(store=":memory:", plugins=[BlockRm()], observe_only=True)
    run = FakeRun(rt)
    d = run.tool("bash", {"command": "rm -rf /"}, error="boom")
    assert not d.block and d.intervention is None and d.recovery is None
    assert [v.error_class for v in d.verdicts] == ["unsafe_action"]
    rt.close()


def test_budget_exempt_plugins_are_not_skipped():
    class SlowButExempt:
        immunity_budget_exempt = True
        calls = 0

        @hookimpl
        def immunity_observe(self, event, run, state):
            SlowButExempt.calls += 1
            t = time.thread_time()
            while time.thread_time() - t < 0.01:
                pass

    rt = Runtime(store=None, plugins=[SlowButExempt()], step_budget_ms=2)
    run = FakeRun(rt)
    for i in range(5):
        run.tool("search", {"q": i})
    assert SlowButExempt.calls == 1 + 5 * 2  # run_start + tool_start/tool_end each time
    rt.close()


def test_domain_judges_a_test_run_that_exited_zero():
    judged = Domain(name="ci", rules=[Rule(tool="run_tests", action="VERIFY")],
                    judge_result=lambda step: "failed" not in (step.result or ""))

    class DomainPlugin:
        @hookimpl
        def immunity_register_domains(self, register):
            register("ci", judged)

    rt = Runtime(store=None, plugins=[DomainPlugin()], domain="ci")
    run = FakeRun(rt, domain="ci")
    run.tool("run_tests", {}, result="2 failed, 3 passed", return_code=0)
    assert run.state.last_verify_ok is False
    assert run.final("done").verdicts[0].error_class == "premature_done"
    rt.close()


def test_factories_receive_the_runtime_when_they_ask():
    seen = {}

    class Needy:
        def __init__(self, config, runtime=None):
            seen["runtime"] = runtime

        def verify(self, event, step, run, state):
            return []

    class P:
        @hookimpl
        def immunity_register_verifiers(self, register):
            register("needy", Needy)

    rt = Runtime(store=None, plugins=[P()], verifiers=["needy"])
    FakeRun(rt).tool("x", {})
    assert seen["runtime"] is rt
    rt.close()


def test_a_handoff_is_one_delegate_step_even_through_a_handoff_tool():
    rt = Runtime(store=":memory:")
    s = rt.start_run(task="x")
    # a handoff tool (DELEGATE by its name) followed by the handoff it carried out: one step
    s.tool_start("transfer_to_writer", {"reason": "writing"}, tool_call_id="c1", agent="researcher")
    s.tool_end("transfer_to_writer", "ok", tool_call_id="c1", agent="researcher")
    s.handoff("researcher", "writer")
    # a handoff tool the name does not reveal, matched by its call id: relabelled DELEGATE
    s.tool_start("lookup", {"key": "a"}, tool_call_id="c2", agent="writer")
    s.tool_start("go_back", {"why": "done"}, tool_call_id="c3", agent="writer")
    s.tool_end("go_back", "ok", tool_call_id="c3", agent="writer")
    s.tool_end("lookup", "v", tool_call_id="c2", agent="writer")
    s.handoff("writer", "researcher", tool_call_id="c3")
    # a handoff with no tool call (a crew's next task, a node's Command): its own step
    s.message("thinking", agent="researcher")
    s.handoff("researcher", "critic", arguments={"task": "review"})
    s.end()
    rt.flush()
    steps = rt.store.steps(s.run.run_id)
    assert [(st.agent, st.tool, st.action_type.value, st.data.get("target")) for st in steps] == [
        ("researcher", "transfer_to_writer", "DELEGATE", "writer"),
        ("writer", "go_back", "DELEGATE", "researcher"),
        ("writer", "lookup", "SEARCH", None),
        ("researcher", None, "RESPOND", None),
        ("researcher", None, "DELEGATE", "critic"),
    ]
    assert steps[0].arguments == {"reason": "writing"} and steps[-1].arguments == {"task": "review"}
    assert s.state.action_counts["DELEGATE"] == 3 and s.state.action_counts["OTHER"] == 0
    rt.close()


def test_keys_stored_in_the_older_form_still_stop_a_repeat_on_resume(tmp_path):
    """A run whose idempotency keys were stored as the call's hash alone (32 digits, before keys
    began with the run's own digits) is resumed by a new runtime: the call is not repeated, and a
    rollback still forgets it."""
    import hashlib
    import json

    from immunity.runtime import idempotency_key

    db = str(tmp_path / "old-keys.db")
    billing = Domain(name="billing", rules=[Rule(tool="refund", action="EDIT", side_effect=True)])

    class P:
        @hookimpl
        def immunity_register_domains(self, register):
            register("billing", billing)

    rt = Runtime(store=db, plugins=[P()], domain="billing")
    s = rt.start_run(run_id="old-run")
    s.tool_start("lookup", {"id": 1}, tool_call_id="l1")
    s.tool_end("lookup", "found", tool_call_id="l1")
    rt.close()
    from immunity.store import SQLiteStore

    store = SQLiteStore(db)
    for args in ({"order": 1}, {"call_id": "call-1"}):
        old = hashlib.sha256(json.dumps(["old-run", "refund", args], sort_keys=True).encode()).hexdigest()[:32]
        assert old != idempotency_key("old-run", "refund", args)
        store.save("idempotency", {"key": old, "run_id": "old-run", "tool": "refund", "result": "refunded",
                                   "ts": 1.0})
    store.close()

    rt2 = Runtime(store=db, plugins=[P()], domain="billing")
    s2 = rt2.start_run(run_id="old-run")
    assert s2.tool_start("refund", {"order": 1}, tool_call_id="call-1").cached_result == "refunded"
    assert s2.tool_start("refund", {"order": 1}, tool_call_id="call-2").cached_result is None  # a new call
    old_call = hashlib.sha256(json.dumps(["old-run", "refund", {"call_id": "call-1"}],
                                         sort_keys=True).encode()).hexdigest()[:32]
    rt2.forget_result(old_call)  # what a rollback does with the key a resumed step carries
    assert rt2.idempotent_result(idempotency_key("old-run", "refund", {"call_id": "call-1"}), "old-run") is None
    rt2.close()


def _reads(session, n, tag):
    for i in range(n):
        session.tool_start("read_file", {"path": f"{tag}{i}.py"}, tool_call_id=f"{tag}{i}")
        session.tool_end("read_file", f"contents of {tag}{i}", tool_call_id=f"{tag}{i}")


def test_finished_runs_kept_in_memory_let_go_of_their_old_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(Runtime, "ENDED_STEPS", 50)
    monkeypatch.setattr(Runtime, "KEEP_ENDED", 2)
    monkeypatch.setattr(Runtime, "TRIMMED_STEPS", 3)
    rt = Runtime(store=str(tmp_path / "runs.db"))
    stopped = rt.start_run(task="waits for a resume")
    _reads(stopped, 20, "s")
    stopped.state.stop_requested = "a person must approve"
    stopped.end()
    assert stopped.run.status == "stopped"
    done = []
    for r in range(6):
        s = rt.start_run(task=f"task {r}")
        _reads(s, 20, f"r{r}-")
        s.end("success")
        done.append(s)
    # every session is still there, with its counts; the oldest finished ones hold their last 3 steps
    assert [rt.session(s.run.run_id) for s in done] == done
    held = [len(s.state.steps.held()) for s in done]
    assert held[-2:] == [20, 20]  # the newest two are never trimmed
    assert sum(n for n in held[:-2]) <= 50 and 3 in held and held[0] == 3
    assert all(s.state.n_steps == 20 and s.state.signature_counts.total() == 20 for s in done)
    assert len(stopped.state.steps.held()) == 20  # a stopped run keeps its steps
    # the store has every step; a late outcome and a resume still work on a trimmed run
    rt.flush()
    assert len(rt.store.steps(done[0].run.run_id)) == 20
    set_outcome(rt, done[0].run.run_id, "failure")
    assert done[0].run.outcome.value == "failure"
    again = rt.resume_run(done[0].run.run_id)
    assert again is done[0] and not again.ended
    _reads(again, 2, "again")
    assert again.state.n_steps == 22 and again.state.last_step.tool == "read_file"
    rt.close()
