"""The CrewAI adapter driven through CrewAI's real runtime (Crew.kickoff / kickoff_async / akickoff)
with a scripted model that emits native tool calls. Offline; in-memory store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from immunity import (
    Event,
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Severity,
    Verdict,
    hookimpl,
)
from immunity.domain import Domain, Rule
from immunity.interventions.quoting import QUOTE_TOOL
from immunity_crewai.adapter import CrewAIAdapter
from immunity_crewai.testing import ScriptedLLM, ToolCall, text_of


def hint_messages(call: list[dict[str, Any]]) -> list[str]:
    return [str(m["content"]) for m in call if m.get("role") == "user" and "[immunity]" in str(m.get("content"))]


def crew_tool_messages(call: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool results CrewAI put in a call (not the tool-role quotes of immunity's hints)."""
    return [m for m in call if m.get("role") == "tool" and m.get("name") != QUOTE_TOOL]


def kinds(rt: Any, run_id: str) -> list[str]:
    rt.flush()
    return [e.kind.value for e in rt.store.events(run_id)]


def only_run(rt: Any) -> Any:
    sessions = [s for s in rt.sessions.values() if s.run.framework == "crewai"]
    assert len(sessions) == 1, sessions
    return sessions[0]


# ---------------------------------------------------------------------------------------------- plugin
def test_import_does_not_import_crewai() -> None:
    code = ("import sys, immunity_crewai, immunity_crewai.adapter, immunity_crewai.events; "
            "assert 'crewai' not in sys.modules, sorted(m for m in sys.modules if m.startswith('crewai'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registered_as_plugin_and_matches_crews(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    assert rt.pm.registry("adapters")["crewai"] is CrewAIAdapter
    crew = kit.crew(ScriptedLLM(script=["ok"]))
    assert CrewAIAdapter.matches(crew) and not CrewAIAdapter.matches(object())
    adapter = rt.protect(crew)  # found through matches()
    assert isinstance(adapter, CrewAIAdapter) and adapter.instrumented
    assert CrewAIAdapter.framework_version() is not None and CrewAIAdapter.version_supported()


# ---------------------------------------------------------------------------------------------- observe
def test_observes_and_stores_a_run(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "The value of a is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew, node_events="all")
    out = crew.kickoff()

    session = only_run(rt)
    run_id = session.run.run_id
    assert run_id == f"crewai-{crew._kickoff_event_id}"  # CrewAI's kickoff id, kept across checkpoint restores
    assert kinds(rt, run_id) == ["run_start", "node_start", "model_start", "model_end", "tool_start", "tool_end",
                                 "model_start", "model_end", "final_answer", "node_end", "run_end"]
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == out.raw == "The value of a is value-of-a."
    assert run.task == "Find the value of a" and run.agent == "analyst" and run.framework == "crewai"
    assert run.tokens == out.token_usage.total_tokens > 0  # per-call usage from CrewAI's own accounting
    events = rt.store.events(run_id)
    model_ends = [e for e in events if e.kind == EventKind.MODEL_END]
    assert model_ends[0].data["tool_calls"][0]["name"] == "lookup" and model_ends[0].model == "scripted"
    assert all(e.usage and e.usage["total_tokens"] > 0 for e in model_ends)
    starts = [e for e in events if e.kind == EventKind.MODEL_START]
    assert starts[0].messages[-1]["role"] == "user" and "Find the value of a" in starts[0].messages[-1]["content"]
    tool_end = next(e for e in events if e.kind == EventKind.TOOL_END)
    assert tool_end.tool == "lookup" and tool_end.result == "value-of-a" and tool_end.arguments == {"key": "a"}
    steps = rt.store.steps(run_id)
    assert [(s.tool, s.action_type.value) for s in steps][-1] == (None, "DONE")
    assert steps[0].tool == "lookup" and steps[0].result == "value-of-a"


def test_handoff_between_agents_of_a_crew(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    crew = kit.crew(None, tasks=2, llms=[ScriptedLLM(script=["first done"]), ScriptedLLM(script=["second done"])])
    rt.protect(crew, node_events="all")
    out = crew.kickoff()
    run_id = only_run(rt).run.run_id
    events = rt.store.events(run_id) if rt.flush() is None else []
    handoffs = [e for e in events if e.kind == EventKind.HANDOFF]
    assert [(h.agent, h.target) for h in handoffs] == [("worker0", "worker1")]
    assert [e.node for e in events if e.kind == EventKind.NODE_START] == ["task0", "task1"]
    assert rt.store.get_run(run_id).final_answer == out.raw == "second done"


# ---------------------------------------------------------------------------------------------- verify / block
class BlockDeletes:
    @hookimpl
    def immunity_verify(self, event: Event, step: Any) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, block=True, error_class="unsafe_action", severity=Severity.ERROR,
                           message="deleting a whole table is not allowed",
                           hint="[immunity] delete_records is not allowed here: archive the rows instead.")
        return None


def test_blocked_tool_is_not_run_and_the_model_is_told_why(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[BlockDeletes()])
    llm = ScriptedLLM(script=[ToolCall("delete_records", {"table": "orders"}), "I did not delete anything."])
    crew = kit.crew(llm, [kit.DeleteRecords()])
    rt.protect(crew)
    out = crew.kickoff()

    assert "delete_records" not in kit.calls  # the tool never ran
    tool_msgs = [m for m in llm.calls[1] if m.get("role") == "tool"]
    assert tool_msgs[-1]["content"] == ("Blocked by immunity: [immunity] delete_records is not allowed here: "
                                        "archive the rows instead.")
    assert out.raw == "I did not delete anything."
    run_id = only_run(rt).run.run_id
    rt.flush()
    step = rt.store.steps(run_id)[0]
    assert step.tool == "delete_records" and step.data.get("blocked") and "blocked by immunity" in step.error
    assert [i.kind for i in rt.store.interventions(run_id)] == [InterventionKind.BLOCK]
    assert "tool_end" not in kinds(rt, run_id)


# ---------------------------------------------------------------------------------------------- intervene: hint
class HintAfterLookup:
    """A non-blocking finding on a tool result: its hint goes into the next model call."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_END and event.tool == "lookup" and event.result == "value-of-a":
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING,
                           message="a is a stale key", hint="[immunity] Key a is stale; look up a2 as well.")
        return None


def hinted_script() -> list[Any]:
    def second(messages: list[dict[str, Any]]) -> Any:
        return ToolCall("lookup", {"key": "a2"}) if hint_messages(messages) else "done without hint"

    return [ToolCall("lookup", {"key": "a"}), second, "a is value-of-a, a2 is value-of-a2."]


def check_hint_delivered_once(rt: Any, llm: ScriptedLLM, crew: Any, out: Any, kit: Any) -> None:
    assert hint_messages(llm.calls[0]) == []
    assert hint_messages(llm.calls[1]) == ["[immunity] Key a is stale; look up a2 as well."]
    assert llm.calls[1][-1]["content"] == "[immunity] Key a is stale; look up a2 as well."  # last: this call
    assert hint_messages(llm.calls[2]) == []  # next call only: it is not kept in the history
    assert [c["key"] for c in kit.calls["lookup"]] == ["a", "a2"]  # the model followed it
    task_output = crew.tasks[0].output
    assert task_output.messages and not any("[immunity]" in str(m.get("content")) for m in task_output.messages)
    assert out.raw == "a is value-of-a, a2 is value-of-a2."
    run_id = only_run(rt).run.run_id
    rt.flush()
    ivs = rt.store.interventions(run_id)
    assert [(i.kind, i.text) for i in ivs] == [(InterventionKind.HINT, "[immunity] Key a is stale; look up a2 as well.")]


def test_hint_reaches_the_next_model_call_only(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[HintAfterLookup()])
    llm = ScriptedLLM(script=hinted_script())
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = crew.kickoff()
    check_hint_delivered_once(rt, llm, crew, out, kit)


def test_kickoff_async(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[HintAfterLookup()])
    llm = ScriptedLLM(script=hinted_script())
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = asyncio.run(crew.kickoff_async())
    check_hint_delivered_once(rt, llm, crew, out, kit)


def test_akickoff_native_async(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[HintAfterLookup()])
    llm = ScriptedLLM(script=hinted_script())
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = asyncio.run(crew.akickoff())
    check_hint_delivered_once(rt, llm, crew, out, kit)
    assert rt.store.get_run(only_run(rt).run.run_id).status == "finished"


def test_text_protocol_models_are_covered_too(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[HintAfterLookup()])
    script = hinted_script()
    script[-1] = "Thought: I have both.\nFinal Answer: a is value-of-a, a2 is value-of-a2."
    llm = ScriptedLLM(script=script, native_tools=False)
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = crew.kickoff()
    assert [c["key"] for c in kit.calls["lookup"]] == ["a", "a2"]
    assert any(h.startswith("[immunity] Key a is stale") for h in hint_messages(llm.calls[1]))
    assert hint_messages(llm.calls[2]) == []
    assert out.raw == "a is value-of-a, a2 is value-of-a2."
    rt.flush()
    assert rt.store.get_run(only_run(rt).run.run_id).final_answer == out.raw


# ---------------------------------------------------------------------------------------------- recover: retry
def test_retry_with_a_typed_hint_after_a_tool_error(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()

    def retry(messages: list[dict[str, Any]]) -> Any:
        hints = hint_messages(messages)
        return ToolCall("lookup", {"key": "a"}) if hints and "lookup failed (tool_error)" in hints[0] else "gave up"

    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "bad-a"}), retry, "a is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = crew.kickoff()

    assert out.raw == "a is value-of-a." and [c["key"] for c in kit.calls["lookup"]] == ["bad-a", "a"]
    tool_msg = crew_tool_messages(llm.calls[1])[-1]
    assert tool_msg["content"].startswith("Error executing tool:")  # CrewAI's own error result...
    assert hint_messages(llm.calls[1])[0].startswith("[immunity] lookup failed (tool_error)")  # ...plus the hint
    run_id = only_run(rt).run.run_id
    rt.flush()
    recs = rt.store.recoveries(run_id)
    assert [(r.kind, r.reason) for r in recs] == [(RecoveryKind.RETRY, "tool_error")]
    steps = rt.store.steps(run_id)
    assert steps[0].error and "no such key" in steps[0].error and steps[1].result == "value-of-a"


class FailBareAnswers:
    """The task's answer must name its source; otherwise the task is re-run (task guardrail)."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.FINAL_ANSWER and "source:" not in (event.output or ""):
            return Verdict(ok=False, error_class="unsupported_claim", severity=Severity.ERROR,
                           message="the answer names no source",
                           hint="[immunity] Name the source of the value (source: <tool>).")
        return None


def test_task_is_retried_through_crewai_guardrail(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[FailBareAnswers()])

    def second_attempt(messages: list[dict[str, Any]]) -> Any:
        return "a is value-of-a (source: lookup)" if "Name the source" in text_of(messages) else "still bare"

    llm = ScriptedLLM(script=["a is value-of-a", second_attempt])
    crew = kit.crew(llm, [kit.Lookup()])
    guardrails_before = list(crew.tasks[0]._guardrails)
    rt.protect(crew)
    out = crew.kickoff()

    assert out.raw == "a is value-of-a (source: lookup)"
    assert len(llm.calls) == 2 and "Name the source" in text_of(llm.calls[1])  # CrewAI re-ran the task
    assert crew.tasks[0]._guardrails == guardrails_before  # the guardrail was only there while it ran
    run_id = only_run(rt).run.run_id
    rt.flush()
    recs = rt.store.recoveries(run_id)
    assert any(r.kind == RecoveryKind.RETRY and r.reason == "task answer failed its checks" for r in recs)
    assert rt.store.get_run(run_id).final_answer == out.raw


# ---------------------------------------------------------------------------------------------- stop
class StopOnWire:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="policy_violation", severity=Severity.CRITICAL,
                           message="deleting records ends this run")
        return None


def test_clean_stop_returns_the_stop_answer(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[StopOnWire()])
    llm = ScriptedLLM(script=[ToolCall("delete_records", {"table": "users"}), "should never be asked"])
    crew = kit.crew(llm, [kit.DeleteRecords()])
    rt.protect(crew)
    out = crew.kickoff()  # no exception reaches the caller

    assert out.raw == "Stopped by immunity: deleting records ends this run."
    assert "delete_records" not in kit.calls and len(llm.calls) == 1  # no tool run, no further model call
    run_id = only_run(rt).run.run_id
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "stopped" and run.final_answer == out.raw
    assert [i.kind for i in rt.store.interventions(run_id)] == [InterventionKind.STOP]


def test_circuit_breaker_stops_a_failing_run(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    rt.config.max_consecutive_failures = 3
    llm = ScriptedLLM(script=[ToolCall("flaky", {"attempt": i}) for i in range(1, 10)])
    crew = kit.crew(llm, [kit.Flaky()])
    rt.protect(crew)
    out = crew.kickoff()

    assert [c["attempt"] for c in kit.calls["flaky"]] == [1, 2, 3] and len(llm.calls) == 3
    assert out.raw.startswith("circuit breaker: 3 failed steps in a row")
    run_id = only_run(rt).run.run_id
    rt.flush()
    assert rt.store.get_run(run_id).status == "stopped"
    assert rt.store.recoveries(run_id)[-1].kind == RecoveryKind.ABORT


# ---------------------------------------------------------------------------------------------- rewrite / ask / cache
class Interventions:
    """Turns a finding on a tool call into the intervention named in ``kind``."""

    def __init__(self, kind: InterventionKind, tool: str, arguments: dict[str, Any] | None = None):
        self.kind, self.tool, self.arguments = kind, tool, arguments

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == self.tool:
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING, message="check this")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, event: Event) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.tool == self.tool:
            return Intervention(kind=self.kind, text="Send this email to a customer?", arguments=self.arguments)
        return None


def test_rewrite_runs_the_tool_with_new_arguments(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[Interventions(InterventionKind.REWRITE, "lookup", {"key": "a-fixed"})])
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "ok"])
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    crew.kickoff()
    assert kit.calls["lookup"] == [{"key": "a-fixed"}]
    assert [m for m in llm.calls[1] if m.get("role") == "tool"][-1]["content"] == "value-of-a-fixed"
    rt.flush()
    assert rt.store.steps(only_run(rt).run.run_id)[0].result == "value-of-a-fixed"


@pytest.mark.parametrize(("answer", "runs"), [("yes", True), ("no", False)])
def test_ask_human_approves_or_blocks(make_runtime: Any, kit: Any, answer: str, runs: bool) -> None:
    rt = make_runtime(plugins=[Interventions(InterventionKind.ASK_HUMAN, "send_email")])
    asked: list[tuple[str, str, dict[str, Any]]] = []

    def human(question: str, tool: str, args: dict[str, Any]) -> str:
        asked.append((question, tool, args))
        return answer

    llm = ScriptedLLM(script=[ToolCall("send_email", {"to": "c@x.org", "body": "hi"}), "done"])
    crew = kit.crew(llm, [kit.SendEmail()])
    rt.protect(crew, ask_human=human)
    crew.kickoff()
    assert asked == [("Send this email to a customer?", "send_email", {"to": "c@x.org", "body": "hi"})]
    assert ("send_email" in kit.calls) is runs
    tool_msg = crew_tool_messages(llm.calls[1])[-1]["content"]
    assert tool_msg.startswith("sent to c@x.org") if runs else tool_msg.startswith("Blocked: a human did not approve")


def test_ask_human_uses_crewai_console_prompt_by_default(make_runtime: Any, kit: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rt = make_runtime(plugins=[Interventions(InterventionKind.ASK_HUMAN, "send_email")])
    monkeypatch.setattr("builtins.input", lambda *a: "no")
    llm = ScriptedLLM(script=[ToolCall("send_email", {"to": "c@x.org", "body": "hi"}), "done"])
    crew = kit.crew(llm, [kit.SendEmail()])
    rt.protect(crew)
    crew.kickoff()
    assert "send_email" not in kit.calls


class ShopDomain:
    @hookimpl
    def immunity_register_domains(self, register: Any) -> None:
        register("shop", Domain(name="shop", rules=[Rule(tool="send_email", action="EDIT", side_effect=True),
                                                    Rule(tool="lookup", action="SEARCH")]))


def test_a_new_call_with_the_same_arguments_runs(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(domain="shop", plugins=[ShopDomain()])
    email = ToolCall("send_email", {"to": "c@x.org", "body": "your refund"})
    llm = ScriptedLLM(script=[email, email, "sent twice, as asked"])
    crew = kit.crew(llm, [kit.SendEmail()], cache=False)  # CrewAI's own tool cache off
    rt.protect(crew)
    crew.kickoff()
    assert len(kit.calls["send_email"]) == 2  # two deliberate calls: both run
    rt.flush()
    steps = [s for s in rt.store.steps(only_run(rt).run.run_id) if s.tool]
    assert all(s.side_effect for s in steps) and steps[0].data["tool_call_id"] == "call_1"  # the model's call id


# ---------------------------------------------------------------------------------------------- fail open
class RaisingVerifier:
    @hookimpl
    def immunity_verify(self, event: Event) -> None:
        raise RuntimeError("verifier bug")


def test_a_plugin_that_raises_does_not_break_the_crew(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime(plugins=[RaisingVerifier()])
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "a is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = crew.kickoff()
    assert out.raw == "a is value-of-a."
    rt.flush()
    errors = rt.store.plugin_errors(only_run(rt).run.run_id)
    assert errors and all("verifier bug" in e["error"] for e in errors)


def test_an_error_inside_the_adapter_is_recorded_and_the_crew_goes_on(make_runtime: Any, kit: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import immunity_crewai.events as ev

    def broken(messages: Any) -> Any:
        raise ValueError("translation bug")

    monkeypatch.setattr(ev, "_plain_messages", broken)
    rt = make_runtime()
    llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "a is value-of-a."])
    crew = kit.crew(llm, [kit.Lookup()])
    rt.protect(crew)
    out = crew.kickoff()
    assert out.raw == "a is value-of-a." and kit.calls["lookup"] == [{"key": "a"}]
    rt.flush()
    errors = rt.store.plugin_errors(only_run(rt).run.run_id)
    assert {(e["plugin"], e["hook"]) for e in errors} == {("immunity_crewai", "pre_model_call")}
    assert "translation bug" in errors[0]["error"]


def test_fail_closed_aborts_the_crew(make_runtime: Any, kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import immunity_crewai.events as ev
    from crewai.hooks import HookAborted

    monkeypatch.setattr(ev, "_plain_messages", lambda m: (_ for _ in ()).throw(ValueError("translation bug")))
    rt = make_runtime(fail_closed=True)
    crew = kit.crew(ScriptedLLM(script=["never"]), [kit.Lookup()])
    rt.protect(crew)
    with pytest.raises(HookAborted, match="translation bug"):
        crew.kickoff()


# ---------------------------------------------------------------------------------------------- attach / detach
def test_instrument_is_idempotent_and_uninstrument_restores_exactly(make_runtime: Any, kit: Any) -> None:
    from crewai.events import crewai_event_bus
    from crewai.hooks import InterceptionPoint, get_hooks

    before_hooks = {p: get_hooks(p) for p in InterceptionPoint}
    before_bus = dict(crewai_event_bus._sync_handlers)
    rt = make_runtime()
    crew = kit.crew(ScriptedLLM(script=["fine"]))
    adapter = CrewAIAdapter(rt)
    adapter.instrument(crew)
    adapter.instrument(crew)  # again: nothing registered twice
    for point in InterceptionPoint:
        added = [h for h in get_hooks(point) if not any(h is b for b in before_hooks[point])]
        assert len(added) == (0 if point in (InterceptionPoint.INPUT,) else 1), point
    crew.kickoff()
    adapter.uninstrument()
    adapter.uninstrument()  # again: a no-op
    for point in InterceptionPoint:
        after = get_hooks(point)
        assert len(after) == len(before_hooks[point]) and all(a is b for a, b in zip(after, before_hooks[point],
                                                                                   strict=True))
    assert dict(crewai_event_bus._sync_handlers) == before_bus
    assert crew.tasks[0]._guardrails == []
    # detached: a second kickoff is not observed
    n = len(rt.sessions)
    crew.agents[0].llm = ScriptedLLM(script=["fine"])
    crew.kickoff()
    assert len(rt.sessions) == n


def test_other_crews_are_not_watched(make_runtime: Any, kit: Any) -> None:
    rt = make_runtime()
    watched = kit.crew(ScriptedLLM(script=["watched"]))
    other = kit.crew(ScriptedLLM(script=["other"]))
    rt.protect(watched)
    other.kickoff()
    assert rt.sessions == {}
    watched.kickoff()
    assert len(rt.sessions) == 1


def test_attaching_to_something_else_is_refused(make_runtime: Any, kit: Any) -> None:
    from immunity.errors import ImmunityError

    crew = kit.crew(ScriptedLLM(script=["x"]))
    with pytest.raises(ImmunityError, match="crewai.Crew"):
        CrewAIAdapter(make_runtime()).instrument(crew.agents[0])


# ---------------------------------------------------------------------------------------------- demo
def test_demo_catches_and_corrects_a_repeated_error(make_runtime: Any) -> None:
    rt = make_runtime()
    run_id = CrewAIAdapter.demo(rt)
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "It is sunny and 21C in Paris."
    assert any(v.error_class == "repeated_tool_error" for v in rt.store.verdicts(run_id))
    steps = rt.store.steps(run_id)
    assert [s.arguments for s in steps if s.tool] == [{"city": "Paris, FR"}, {"city": "Paris, FR"}, {"city": "Paris"}]
    assert not CrewAIAdapter(rt).instrumented


# ---------------------------------------------------------------------------------------------- recover: rollback
class RollbackOnPublishError:
    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Event) -> Recovery | None:
        if event.kind == EventKind.TOOL_END and event.tool == "publish" and event.failed:
            return Recovery(kind=RecoveryKind.ROLLBACK, reason="publish failed",
                            hint="[immunity] publish needs a title: give the article one.")
        return None


def rollback_crew(kit: Any, tmp_path: Any, **crew_kw: Any) -> tuple[Any, ScriptedLLM, ScriptedLLM]:
    from crewai.state import CheckpointConfig

    def write(messages: list[dict[str, Any]]) -> Any:
        if any("needs a title" in h for h in hint_messages(messages)):
            return ToolCall("publish", {"title": "Value of a", "text": "a is value-of-a"})
        return ToolCall("publish", {"text": "a is value-of-a"})

    research = ScriptedLLM(script=["a is value-of-a"])
    writer = ScriptedLLM(script=[write, write, "published 'Value of a'"])
    crew = kit.crew(None, tasks=2, llms=[research, writer], tools_per_task=[[], [kit.Publish()]],
                    checkpoint=CheckpointConfig(location=str(tmp_path / "checkpoints"), on_events=["task_completed"]),
                    **crew_kw)
    return crew, research, writer


def until_checkpointed(kit: Any, tmp_path: Any, attempt: Any, tries: int = 4) -> Any:
    """Run ``attempt(folder)`` (a first kickoff of ``rollback_crew``) until CrewAI's own writer saved
    the checkpoint after task 1, and return what it returned.

    CrewAI writes checkpoints on a worker thread that serialises the crew's event record while the
    crew goes on; now and then that raises "dictionary changed size during iteration" and no file is
    written (an upstream race that immunity cannot prevent). Without that file there is nothing to roll
    back to, and the adapter says so; these tests are about what happens when the file exists."""
    from crewai.events import crewai_event_bus

    for n in range(tries):
        kit.calls.clear()
        folder = tmp_path / f"attempt{n}"
        folder.mkdir()
        result = attempt(folder)
        for _ in range(3):
            crewai_event_bus.flush()
        if any((folder / "checkpoints").rglob("*.json")):
            return result
    pytest.fail(f"CrewAI wrote no checkpoint in {tries} kickoffs")


@pytest.mark.parametrize("how", ["kickoff", "kickoff_async", "akickoff"])
def test_a_rollback_re_runs_the_task_inside_the_same_kickoff(make_runtime: Any, kit: Any, tmp_path: Any,
                                                             how: str) -> None:
    rt = make_runtime(plugins=[RollbackOnPublishError()])
    crew, research, writer = rollback_crew(kit, tmp_path)
    adapter = rt.protect(crew)  # rollback="task", the default: no resume() call
    out = crew.kickoff() if how == "kickoff" else asyncio.run(getattr(crew, how)())

    assert out.raw == "published 'Value of a'"
    assert adapter.rolled_back() == []
    assert len(research.calls) == 1  # the task before the checkpoint is not run again
    assert [c["title"] for c in kit.calls["publish"]] == ["", "Value of a"]
    assert len(writer.calls) == 3  # the bad publish call; the task again: the titled call, the answer
    retry = " ".join(str(m.get("content")) for m in writer.calls[1])
    # CrewAI's guardrail retry prompt: the rollback, the earlier task's output (kept), the hint
    assert "rolled back by immunity (publish failed)" in retry and "a is value-of-a" in retry
    assert hint_messages(writer.calls[1]) == ["[immunity] publish needs a title: give the article one."]
    run_id = only_run(rt).run.run_id
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == out.raw and "resumed" not in run.metadata
    rollbacks = [r for r in rt.store.recoveries(run_id) if r.kind == RecoveryKind.ROLLBACK]
    starts = {c.checkpoint_id: c for c in rt.store.checkpoints(run_id) if c.ref.get("task_start")}
    assert len(rollbacks) == 2 and rollbacks[-1].checkpoint_id in starts  # asked, then done: back to the task's start
    assert starts[rollbacks[-1].checkpoint_id].ref["task_name"] == "task1"
    assert starts[rollbacks[-1].checkpoint_id].verified
    assert kinds(rt, run_id).count("run_end") == 1
    assert [(s.agent, s.tool) for s in rt.store.steps(run_id) if s.tool] == [
        ("worker1", "publish"), ("worker1", "publish")]


def test_the_tasks_own_guardrails_check_the_answer_after_a_rollback_not_the_placeholder(
        make_runtime: Any, kit: Any, tmp_path: Any) -> None:
    seen: list[str] = []

    def no_placeholder(output: Any) -> tuple[bool, Any]:
        seen.append(output.raw)
        return True, output.raw

    rt = make_runtime(plugins=[RollbackOnPublishError()])
    crew, _, writer = rollback_crew(kit, tmp_path, guardrails={1: [no_placeholder]})
    task = crew.tasks[1]
    rt.protect(crew)
    out = crew.kickoff()
    assert out.raw == "published 'Value of a'" and len(writer.calls) == 3
    # the user's guardrail saw the retried attempt's answer once, never the rolled-back placeholder
    assert seen == ["published 'Value of a'"]
    # immunity's guardrail is gone again, and CrewAI's per-position retry counts are the user's
    assert task._guardrails == [no_placeholder] and task._guardrail_retry_counts.get(0, 0) == 0


@pytest.mark.parametrize("compensate", [False, True], ids=["no-compensation", "compensation"])
def test_a_rolled_back_task_does_not_repeat_a_side_effect_and_compensates_when_told(
        make_runtime: Any, kit: Any, tmp_path: Any, compensate: bool) -> None:
    email = ToolCall("send_email", {"to": "editor@x.org", "body": "article coming"})

    def publish(messages: list[dict[str, Any]]) -> Any:
        # the hint came with the call before this one (the email): this model remembers it
        titled = any("needs a title" in h for call in writer.calls for h in hint_messages(call))
        return ToolCall("publish", {"title": "Value of a", "text": "a"} if titled else {"text": "a"})

    rt = make_runtime(domain="shop", plugins=[ShopDomain(), RollbackOnPublishError()])
    undone: list[dict[str, Any]] = []
    if compensate:
        rt.compensate_with("send_email", lambda **kw: undone.append(kw))
    writer = ScriptedLLM(script=[email, publish, email, publish, "published"])
    crew = kit.crew(None, tasks=2, llms=[ScriptedLLM(script=["a is value-of-a"]), writer],
                    tools_per_task=[[], [kit.SendEmail(), kit.Publish()]], cache=False)
    rt.protect(crew)
    assert crew.kickoff().raw == "published"
    assert [c["title"] for c in kit.calls["publish"]] == ["", "Value of a"]  # one rollback
    if compensate:  # undone by its compensation at the rollback, so the task's new attempt sends it again
        assert undone == [{"to": "editor@x.org", "body": "article coming"}]
        assert len(kit.calls["send_email"]) == 2
    else:  # not undone: the new attempt gets the first result back instead of sending it twice
        assert len(kit.calls["send_email"]) == 1
        replayed = [m["content"] for m in writer.calls[3] if m.get("role") == "tool"]
        assert replayed[0] == "sent to editor@x.org (message #1)"


def test_a_rollback_stops_for_resume_when_the_task_cannot_be_re_run(make_runtime: Any, kit: Any,
                                                                    tmp_path: Any) -> None:
    def attempt(folder: Any) -> Any:
        rt = make_runtime(plugins=[RollbackOnPublishError()])
        crew, _, _ = rollback_crew(kit, folder)
        crew.tasks[1].guardrail_max_retries = 0  # CrewAI would raise on a failed guardrail: no retry to use
        adapter = rt.protect(crew)
        return rt, adapter, crew.kickoff()

    rt, adapter, out = until_checkpointed(kit, tmp_path, attempt)
    assert out.raw == "Rolled back by immunity: publish failed"
    assert adapter.rolled_back() == [only_run(rt).run.run_id]
    assert adapter.resume().raw == "published 'Value of a'"


def test_rollback_stop_then_resume_from_a_verified_checkpoint(make_runtime: Any, kit: Any, tmp_path: Any) -> None:
    from crewai.events import crewai_event_bus

    def attempt(folder: Any) -> Any:
        rt = make_runtime(plugins=[RollbackOnPublishError()])
        crew, research, writer = rollback_crew(kit, folder)
        adapter = rt.protect(crew, rollback="stop")
        return rt, research, writer, adapter, folder, crew.kickoff()  # the bad publish call: stopped cleanly

    rt, research, writer, adapter, folder, out = until_checkpointed(kit, tmp_path, attempt)

    assert out.raw == "Rolled back by immunity: publish failed"
    run_id = only_run(rt).run.run_id
    assert adapter.rolled_back() == [run_id]
    rt.flush()
    assert rt.store.get_run(run_id).status == "rolling_back"

    out = adapter.resume()  # from the checkpoint after task 1 (verified), with the hint

    assert out.raw == "published 'Value of a'"
    assert len(research.calls) == 1  # task 1 was not run again: CrewAI restored its output
    assert [c["title"] for c in kit.calls["publish"]] == ["", "Value of a"]  # the bad step is not repeated
    assert hint_messages(writer.calls[-2]) == ["[immunity] publish needs a title: give the article one."]
    assert list(rt.sessions) == [run_id]  # the same immunity run continued
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == out.raw and run.metadata["resumed"] == 1
    crewai_event_bus.flush()
    rt.flush()
    assert [r.kind for r in rt.store.recoveries(run_id)].count(RecoveryKind.ROLLBACK) == 2  # asked, then done
    assert kinds(rt, run_id).count("run_end") == 1
    # task 1's first checkpoint is missing: CrewAI cannot serialise a task whose tool raised (it logs
    # "Auto-checkpoint failed"); the resumed task 1 is checkpointed and verified
    recorded = [(c.ref["task_name"], c.verified) for c in rt.store.checkpoints(run_id)]
    assert rt.store.checkpoints(run_id)[0].ref["location"].endswith(".json")
    written = sorted((folder / "checkpoints").rglob("*.json"))
    if recorded == [("task0", True)] and len(written) == 1:
        # CrewAI's own checkpoint writer can race with the events it records (its worker thread
        # serialises the event record while the crew goes on: "dictionary changed size during
        # iteration"); then it wrote no file for task 1, so there is nothing for immunity to record
        pytest.xfail("CrewAI did not write the resumed task's checkpoint (its writer raced)")
    assert recorded == [("task0", True), ("task1", True)]


def test_a_rolled_back_run_continues_from_the_store_in_another_runtime(make_runtime: Any, kit: Any,
                                                                        tmp_path: Any) -> None:
    from crewai.events import crewai_event_bus

    def attempt(folder: Any) -> Any:
        db = str(folder / "runs.db")
        rt = make_runtime(store=db, plugins=[RollbackOnPublishError()])
        crew, _, _ = rollback_crew(kit, folder)
        adapter = rt.protect(crew, rollback="stop")
        crew.kickoff()  # stopped for the rollback; this runtime is then left behind (a process that went away)
        return db, rt, crew, adapter

    db, rt, crew, adapter = until_checkpointed(kit, tmp_path, attempt)
    run_id = only_run(rt).run.run_id
    crewai_event_bus.flush()
    rt.flush()
    stored = rt.store.get_run(run_id)
    assert stored.status == "rolling_back"
    steps, checkpoints = rt.store.steps(run_id), rt.store.checkpoints(run_id)
    assert steps and checkpoints
    adapter.uninstrument()

    other = make_runtime(store=db)  # a new runtime on the same store
    session = CrewAIAdapter(other).continue_run(run_id, crew)
    assert session is not None and other.session(run_id) is session
    assert session.state.n_steps == len(steps) == session.run.steps  # the stored steps, folded in once
    assert [c.checkpoint_id for c in session.checkpoints] == [c.checkpoint_id for c in checkpoints]
    assert session.state.tokens == stored.tokens == session.run.tokens
    assert session.run.metadata["resumed"] == 1 and session.run.status == "running" and not session.ended
    assert session.take_hints() == ["[immunity] publish needs a title: give the article one."]
    assert CrewAIAdapter(other).continue_run("crewai-never-seen", crew) is None
    other.flush()
    assert other.store.get_run(run_id).metadata["resumed"] == 1


# ---------------------------------------------------------------------------------------------- example
def test_example_runs_offline(tmp_path: Any) -> None:
    import os
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "examples" / "crewai_crew.py"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(HOME=str(tmp_path), IMMUNITY_EXAMPLE_STORE=str(tmp_path / "example.db"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "crew on a scripted model (offline)" in out
    assert "answer: Your refund request for the laptop (1499.00 EUR) was passed on" in out
    assert "status=finished steps=4" in out
    assert "recovery retry: [immunity] get_order failed (tool_error)" in out
    assert "intervention block: [immunity] Refunds above 100 EUR need a human" in out
    assert (tmp_path / "example.db").exists()


def test_a_side_effect_is_not_repeated_after_a_rollback(make_runtime: Any, kit: Any, tmp_path: Any) -> None:
    from crewai.state import CheckpointConfig

    rt = make_runtime(domain="shop", plugins=[ShopDomain(), RollbackOnPublishError()])
    email = ToolCall("send_email", {"to": "editor@x.org", "body": "article coming"})

    def publish(messages: list[dict[str, Any]]) -> Any:
        # the hint came with the call before this one (the email): this model remembers it
        titled = any("needs a title" in h for call in writer.calls for h in hint_messages(call))
        return ToolCall("publish", {"title": "Value of a", "text": "a"} if titled else {"text": "a"})

    writer = ScriptedLLM(script=[email, publish, email, publish, "published"])
    crew = kit.crew(None, tasks=2, llms=[ScriptedLLM(script=["a is value-of-a"]), writer],
                    tools_per_task=[[], [kit.SendEmail(), kit.Publish()]], cache=False,
                    checkpoint=CheckpointConfig(location=str(tmp_path / "cp"), on_events=["task_completed"]))
    adapter = rt.protect(crew, rollback="stop")
    crew.kickoff()  # email sent, publish fails, rollback requested
    out = adapter.resume()  # task 2 again: the same email is not sent twice

    assert out.raw == "published"
    assert len(kit.calls["send_email"]) == 1
    replayed = [m["content"] for m in writer.calls[3] if m.get("role") == "tool"]
    assert replayed[0] == "sent to editor@x.org (message #1)"  # the model got the first result back
    rt.flush()
    steps = [s for s in rt.store.steps(only_run(rt).run.run_id) if s.tool == "send_email"]
    assert [s.data.get("replayed", False) for s in steps] == [False, True]


def test_the_default_policy_rolls_a_task_back_inside_the_kickoff(make_runtime: Any, kit: Any) -> None:
    """No recovery plugin: core's policy rolls back to the task's start when an error repeats after a
    side effect (the checkpoint the adapter records at each task start is what it goes back to)."""
    rt = make_runtime(domain="shop", plugins=[ShopDomain()])
    email = ToolCall("send_email", {"to": "editor@x.org", "body": "article coming"})
    untitled = ToolCall("publish", {"text": "a"})
    writer = ScriptedLLM(script=[email, untitled, untitled, email, ToolCall("publish", {"title": "A", "text": "a"}),
                                 "published"])
    crew = kit.crew(None, tasks=2, llms=[ScriptedLLM(script=["a is value-of-a"]), writer],
                    tools_per_task=[[], [kit.SendEmail(), kit.Publish()]], cache=False)
    rt.protect(crew)
    assert crew.kickoff().raw == "published"
    assert len(kit.calls["send_email"]) == 1 and [c["title"] for c in kit.calls["publish"]] == ["", "", "A"]
    run_id = only_run(rt).run.run_id
    rt.flush()
    rollbacks = [r for r in rt.store.recoveries(run_id) if r.kind == RecoveryKind.ROLLBACK]
    assert len(rollbacks) == 2 and rollbacks[0].checkpoint_id == rollbacks[1].checkpoint_id
    assert "Your changes after step" in (rollbacks[0].hint or "")
    assert hint_messages(writer.calls[3])  # the task's new attempt starts with the hint of that step
    assert "rolled back by immunity" in " ".join(str(m.get("content")) for m in writer.calls[3])
    assert rt.store.get_run(run_id).status == "finished"
