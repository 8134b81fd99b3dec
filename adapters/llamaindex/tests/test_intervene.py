"""Verify, intervene and recover inside real LlamaIndex agent runs (scripted model, offline)."""

from __future__ import annotations

from typing import Any

import pytest
from immunity import hookimpl
from immunity.config import Config
from immunity.errors import PluginError
from immunity.models import (
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Severity,
    Verdict,
)
from immunity_llamaindex.testing import RollbackOnWrong, ScriptedLLM, react_action, react_answer, tool_call
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.workflow import HumanResponseEvent, InputRequiredEvent


class Files:
    """A tiny file system the tools act on, so a test can see what really happened."""

    def __init__(self) -> None:
        self.files = {"a.txt": "alpha", "b.txt": "beta"}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> list[Any]:
        def read_file(path: str) -> str:
            """Read a file."""
            self.calls.append(("read_file", {"path": path}))
            if path not in self.files:
                raise FileNotFoundError(f"no such file: {path}")
            return self.files[path]

        def delete_file(path: str) -> str:
            """Delete a file."""
            self.calls.append(("delete_file", {"path": path}))
            self.files.pop(path, None)
            return f"deleted {path}"

        return [read_file, delete_file]


class BlockDeletes:
    """A verifier that blocks every delete before it runs."""

    @hookimpl
    def immunity_verify(self, event: Any, step: Any) -> Any:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_file":
            return Verdict(ok=False, block=True, error_class="unsafe_action", severity=Severity.ERROR,
                           message="deleting files is not allowed",
                           hint="Deleting files is not allowed here; read them instead.")
        return None


def has(llm: ScriptedLLM, text: str) -> list[int]:
    return [i for i in range(len(llm.calls)) if llm.saw(text, i)]


async def memory_texts(handler: Any) -> list[str]:
    memory = await handler.ctx.store.get("memory")
    return [m.content or "" for m in await memory.aget_all()]


@pytest.mark.parametrize("kind", ["function", "react"])
async def test_blocking_verdict_stops_the_tool_and_tells_the_model(make_runtime: Any, kind: str) -> None:
    rt = make_runtime(plugins=[BlockDeletes()])
    fs = Files()
    if kind == "function":
        llm = ScriptedLLM([tool_call("delete_file", {"path": "a.txt"}), "I left a.txt alone."])
        agent: Any = FunctionAgent(tools=fs.tools(), llm=llm)
    else:
        llm = ScriptedLLM([react_action("delete_file", {"path": "a.txt"}), react_answer("I left a.txt alone.")])
        agent = ReActAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Clean up a.txt")
    assert str(await handler) == "I left a.txt alone."

    assert fs.calls == [] and "a.txt" in fs.files  # the tool never ran
    assert has(llm, "Blocked by immunity: Deleting files is not allowed here") == [1]  # told as the tool's result
    run_id = guard.run_id_for(handler)
    rt.flush()
    step = rt.store.steps(run_id)[0]
    assert step.tool == "delete_file" and step.data.get("blocked") and "blocked by immunity" in step.error
    verdicts = rt.store.verdicts(run_id)
    assert verdicts[0].block and verdicts[0].error_class == "unsafe_action"
    assert [i.kind for i in rt.store.interventions(run_id)] == [InterventionKind.BLOCK]
    guard.uninstrument()


class HintAfterRead:
    """A verifier that flags the first read's result, so the policy queues a hint."""

    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_END and event.tool == "read_file" and event.result == "alpha":
            return Verdict(ok=False, error_class="wrong_tool", severity=Severity.WARNING,
                           message="a.txt is not the file", hint="[immunity] HINT-7: the answer is in b.txt.")
        return None


@pytest.mark.parametrize("streaming", [False, True])
async def test_hint_reaches_the_next_model_call_only(make_runtime: Any, streaming: bool) -> None:
    rt = make_runtime(plugins=[HintAfterRead()])
    fs = Files()
    llm = ScriptedLLM([tool_call("read_file", {"path": "a.txt"}), tool_call("read_file", {"path": "b.txt"}),
                       "b.txt says beta."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm, streaming=streaming)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="What does the file say?")
    assert str(await handler) == "b.txt says beta."

    assert has(llm, "HINT-7") == [1]  # exactly the call after the flagged step, and not the one after
    hint_msg = llm.calls[1][-1]
    assert hint_msg.role.value == "user" and hint_msg.content == "[immunity] HINT-7: the answer is in b.txt."
    assert len(llm.calls[2]) == len(llm.calls[1]) - 1 + 2  # next call: no hint, plus the new call and result
    texts = await memory_texts(handler)
    assert texts and not any("HINT-7" in t for t in texts)  # the agent's memory never kept it
    scratch = await handler.ctx.store.get("scratchpad", default=[])
    assert not any("HINT-7" in (m.content or "") for m in scratch)
    rt.flush()
    model_starts = [e for e in rt.store.events(guard.run_id_for(handler)) if e.kind == EventKind.MODEL_START]
    assert "HINT-7" not in str(model_starts[1].messages)  # the event shows what the agent sent ...
    assert [i.kind for i in rt.store.interventions(guard.run_id_for(handler))] == [InterventionKind.HINT]
    guard.uninstrument()


async def test_retry_with_typed_hint_after_a_tool_error(rt: Any) -> None:
    fs = Files()

    def second(messages: list[Any]) -> Any:
        hinted = any("[immunity] read_file failed" in (m.content or "") for m in messages)
        return tool_call("read_file", {"path": "b.txt" if hinted else "c.txt"})

    llm = ScriptedLLM([tool_call("read_file", {"path": "c.txt"}), second, "It says beta."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Read the file")
    assert str(await handler) == "It says beta."
    assert fs.calls == [("read_file", {"path": "c.txt"}), ("read_file", {"path": "b.txt"})]
    assert has(llm, "no such file: c.txt")  # the framework's own error result reached the model
    run_id = guard.run_id_for(handler)
    rt.flush()
    recoveries = rt.store.recoveries(run_id)
    assert [r.kind for r in recoveries] == [RecoveryKind.RETRY] and recoveries[0].reason == "tool_error"
    steps = rt.store.steps(run_id)
    assert steps[0].error.startswith("FileNotFoundError") and steps[1].result == "beta"
    guard.uninstrument()


class RetryThrice:
    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_END and event.failed:
            return Recovery(kind=RecoveryKind.RETRY, max_attempts=3, reason="flaky")
        return None


async def test_retry_re_executes_the_tool_when_the_policy_asks(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[RetryThrice()])
    attempts: list[int] = []

    async def flaky(n: int) -> str:
        """A service that times out on its first call."""
        attempts.append(n)
        if len(attempts) < 2:
            raise TimeoutError("service timed out")
        return f"value {n}"

    llm = ScriptedLLM([tool_call("flaky", {"n": 4}), "Got it."])
    agent = FunctionAgent(tools=[flaky], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="go")
    assert str(await handler) == "Got it."
    assert attempts == [4, 4] and len(llm.calls) == 2  # re-run inside the same turn, no extra model call
    assert llm.calls[1][-1].content == "value 4"  # the model saw only the successful result
    rt.flush()
    steps = rt.store.steps(guard.run_id_for(handler))
    assert [(s.tool, bool(s.error)) for s in steps[:2]] == [("flaky", True), ("flaky", False)]
    guard.uninstrument()



@pytest.mark.parametrize("checkpoints", ["state", "full"])
async def test_rollback_to_the_last_verified_checkpoint_skips_the_bad_step(make_runtime: Any, checkpoints: str) -> None:
    rt = make_runtime(plugins=[RollbackOnWrong()])

    def lookup(id: int) -> str:
        """Look up a record."""
        return {1: "record 1: ok", 2: "record 2: the answer", 9: "record 9: WRONG"}[int(id)]

    def third(messages: list[Any]) -> Any:
        hinted = any("ROLLBACK" in (m.content or "") for m in messages)
        return tool_call("lookup", {"id": 2}) if hinted else "I give up."

    llm = ScriptedLLM([tool_call("lookup", {"id": 1}), tool_call("lookup", {"id": 9}), third, "The answer is 2."])
    agent = FunctionAgent(tools=[lookup], llm=llm)
    guard = rt.protect(agent, checkpoints=checkpoints)
    handler = agent.run(user_msg="Find the answer")
    assert str(await handler) == "The answer is 2."

    # the call after the rollback: the good step is kept, the bad step is gone, the hint is there
    assert llm.saw("record 1: ok", 2) and not llm.saw("WRONG", 2) and llm.saw("ROLLBACK", 2)
    assert not llm.saw("WRONG", 3) and llm.saw("record 2: the answer", 3)
    assert not any("WRONG" in t for t in await memory_texts(handler))  # nor in the agent's memory
    run_id = guard.run_id_for(handler)
    rt.flush()
    rollbacks = [e for e in rt.store.events(run_id) if e.kind == EventKind.CUSTOM and "rollback" in e.data]
    assert len(rollbacks) == 1 and rollbacks[0].data["turn"] == 2
    cps = rt.store.checkpoints(run_id)
    assert len(cps) == 3 and all(("state" if checkpoints == "state" else "snapshot") in c.ref for c in cps)  # one per turn before the rollback
    # turns 1, 2 and 4: turn 3 restored turn 2's checkpoint instead of recording one
    assert [c.ref["turn"] for c in cps] == [1, 2, 4] and all(c.verified for c in cps)
    assert [r.kind for r in rt.store.recoveries(run_id)][:1] == [RecoveryKind.ROLLBACK]
    guard.uninstrument()


class StopOnDelete:
    """A critical verdict: the run must stop before the delete runs."""

    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_file":
            return Verdict(ok=False, error_class="unsafe_action", severity=Severity.CRITICAL,
                           message="an irreversible delete")
        return None


async def test_resume_from_a_checkpoint_with_context_from_dict(make_runtime: Any, tmp_path: Any) -> None:
    store = str(tmp_path / "runs.db")
    rt = make_runtime(plugins=[StopOnDelete()], store=store)
    fs = Files()
    script = [tool_call("read_file", {"path": "a.txt"}), tool_call("delete_file", {"path": "a.txt"})]
    agent = FunctionAgent(tools=fs.tools(), llm=ScriptedLLM(script))
    guard = rt.protect(agent, checkpoints="full")
    handler = agent.run(user_msg="Tidy up", run_id="tidy-1")
    result = await handler
    assert "Stopped by immunity" in str(result)  # a clean stop: the answer, not an exception
    assert fs.calls == [("read_file", {"path": "a.txt"})] and "a.txt" in fs.files
    run_id = guard.run_id_for(handler)
    assert run_id == "llamaindex-tidy-1"
    rt.flush()
    assert rt.store.get_run(run_id).status == "stopped"
    guard.uninstrument()
    rt.close()

    # another runtime and a fresh agent object, as in a new process: only the store carries over
    rt2 = make_runtime(store=store)
    fs2 = Files()
    llm2 = ScriptedLLM([lambda msgs: "a.txt says alpha; nothing deleted." if any(
        "RESUME" in (m.content or "") for m in msgs) else "no hint"])
    agent2 = FunctionAgent(tools=fs2.tools(), llm=llm2)
    guard2 = rt2.protect(agent2, checkpoints="full")
    ctx = guard2.restore(agent2, run_id, hint="[immunity] RESUME: answer from what you read; do not delete.")
    handler2 = agent2.run(ctx=ctx)
    assert str(await handler2) == "a.txt says alpha; nothing deleted."
    assert guard2.run_id_for(handler2) == run_id  # the same immunity run goes on
    # resumed at the turn after the read: the model sees the read's result and the hint, no delete
    assert llm2.texts(0) == ["Tidy up", "", "alpha",
                             "[immunity] RESUME: answer from what you read; do not delete."]
    assert fs2.calls == []
    rt2.flush()
    run = rt2.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "a.txt says alpha; nothing deleted."
    guard2.uninstrument()


async def test_resume_after_a_stop_in_the_same_runtime_goes_on(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[StopOnDelete()])
    fs = Files()
    script = [tool_call("read_file", {"path": "a.txt"}), tool_call("delete_file", {"path": "a.txt"}),
              lambda msgs: "a.txt says alpha; nothing deleted." if any(
                  "RESUME" in (m.content or "") for m in msgs) else "no hint"]
    agent = FunctionAgent(tools=fs.tools(), llm=ScriptedLLM(script))
    guard = rt.protect(agent, checkpoints="full")
    handler = agent.run(user_msg="Tidy up", run_id="tidy-2")
    assert "Stopped by immunity" in str(await handler)
    run_id = guard.run_id_for(handler)
    assert rt.session(run_id).ended

    ctx = guard.restore(agent, run_id, hint="[immunity] RESUME: answer from what you read; do not delete.")
    handler2 = agent.run(ctx=ctx)
    assert str(await handler2) == "a.txt says alpha; nothing deleted."  # the earlier stop is not replayed
    assert guard.run_id_for(handler2) == run_id and fs.calls == [("read_file", {"path": "a.txt"})]
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "a.txt says alpha; nothing deleted."


async def test_circuit_breaker_stops_the_run_cleanly(make_runtime: Any) -> None:
    rt = make_runtime(config=Config(store=":memory:", max_consecutive_failures=2))
    fs = Files()
    llm = ScriptedLLM([tool_call("read_file", {"path": f"x{i}.txt"}) for i in range(6)])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Read everything")
    result = await handler  # no exception reaches the caller
    assert "circuit breaker" in str(result)
    assert len(llm.calls) == 2 and len(fs.calls) == 2  # stopped before a third model call
    run_id = guard.run_id_for(handler)
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.status == "stopped" and "circuit breaker" in run.final_answer
    assert RecoveryKind.ABORT in [r.kind for r in rt.store.recoveries(run_id)]
    guard.uninstrument()


class Raises:
    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        raise RuntimeError("verifier bug")


async def test_fail_open_when_a_plugin_raises(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[Raises()])
    fs = Files()
    llm = ScriptedLLM([tool_call("read_file", {"path": "a.txt"}), "alpha."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("adapter bug")

    guard.bridge._model_start = broken  # an error inside the adapter itself, too
    handler = agent.run(user_msg="Read a.txt")
    assert str(await handler) == "alpha."
    assert fs.calls == [("read_file", {"path": "a.txt"})]
    rt.flush()
    errors = rt.store.plugin_errors(guard.run_id_for(handler))
    where = {(e["plugin"], e["hook"]) for e in errors}
    assert ("immunity_llamaindex", "span_enter") in where
    assert any(hook == "immunity_verify" for _, hook in where)
    guard.uninstrument()


async def test_fail_closed_ends_the_run_with_the_error(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[Raises()], fail_closed=True)
    fs = Files()
    llm = ScriptedLLM([tool_call("read_file", {"path": "a.txt"}), "alpha."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    with pytest.raises(PluginError):
        await agent.run(user_msg="Read a.txt")
    assert fs.calls == []
    guard.uninstrument()


class RewritePath:
    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_START and event.arguments == {"path": "A.TXT"}:
            return Verdict(ok=False, error_class="wrong_parameters", message="paths are lower case")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, verdicts: list[Verdict], event: Any) -> Any:
        if event.kind == EventKind.TOOL_START:
            return Intervention(kind=InterventionKind.REWRITE, text="lower-cased the path",
                                arguments={"path": event.arguments["path"].lower()})
        return None


async def test_rewrite_runs_the_tool_with_new_arguments(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[RewritePath()])
    fs = Files()
    llm = ScriptedLLM([tool_call("read_file", {"path": "A.TXT"}), "alpha."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Read A.TXT")
    assert str(await handler) == "alpha."
    assert fs.calls == [("read_file", {"path": "a.txt"})] and llm.calls[1][-1].content == "alpha"
    rt.flush()
    assert rt.store.steps(guard.run_id_for(handler))[0].result == "alpha"
    guard.uninstrument()


class SideEffects:
    """A domain in which deleting is a side effect (so a repeat is answered from the first call)."""

    @hookimpl
    def immunity_register_domains(self, register: Any) -> None:
        from immunity.domain import Domain, Rule

        register("files", Domain(name="files", rules=[Rule(tool="delete_file", action="EDIT", side_effect=True),
                                                      Rule(tool="read_file", action="SEARCH")]))


async def test_side_effect_is_not_repeated_after_a_rollback(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[SideEffects(), RollbackOnWrong()], domain="files")
    fs = Files()
    fs.files["c.txt"] = "WRONG data"
    llm = ScriptedLLM([tool_call("delete_file", {"path": "b.txt"}), tool_call("read_file", {"path": "c.txt"}),
                       tool_call("delete_file", {"path": "b.txt"}), "Deleted."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Delete b.txt")
    assert str(await handler) == "Deleted."
    # after the rollback the model asks for the same delete again: it is not done twice ...
    assert fs.calls == [("delete_file", {"path": "b.txt"}), ("read_file", {"path": "c.txt"})]
    assert llm.calls[3][-1].content == "deleted b.txt"  # ... the model gets the first call's result
    rt.flush()
    steps = rt.store.steps(guard.run_id_for(handler))
    assert [(s.tool, s.data.get("replayed", False)) for s in steps if s.tool] == [
        ("delete_file", False), ("read_file", False), ("delete_file", True)]
    guard.uninstrument()


class AskBeforeDelete:
    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_file":
            return Verdict(ok=False, error_class="unsafe_action", message="delete needs approval")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, verdicts: list[Verdict], event: Any) -> Any:
        if event.kind == EventKind.TOOL_START:
            return Intervention(kind=InterventionKind.ASK_HUMAN, text=f"Allow {event.tool} {event.arguments}?")
        return None


@pytest.mark.parametrize("answer", ["yes", "no"])
async def test_ask_a_human_through_workflow_events(make_runtime: Any, answer: str) -> None:
    rt = make_runtime(plugins=[AskBeforeDelete()])
    fs = Files()
    llm = ScriptedLLM([tool_call("delete_file", {"path": "a.txt"}), "Done."])
    agent = FunctionAgent(tools=fs.tools(), llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Delete a.txt")
    questions: list[str] = []
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            questions.append(ev.prefix)
            handler.ctx.send_event(HumanResponseEvent(response=answer, immunity_call_id=ev.immunity_call_id))
    assert str(await handler) == "Done."
    assert questions == ["Allow delete_file {'path': 'a.txt'}?"]
    if answer == "yes":
        assert fs.calls == [("delete_file", {"path": "a.txt"})] and llm.calls[1][-1].content == "deleted a.txt"
    else:
        # the refusal is the tool's result, and immunity's retry hint quotes it as tool-role data
        tool_texts = [m.content or "" for m in llm.calls[1] if m.role.value == "tool"]
        assert fs.calls == [] and len(tool_texts) == 2
        assert all("Not approved by a human (no)" in t for t in tool_texts)
        assert llm.calls[1][-1].role.value == "user" and "Not approved" not in (llm.calls[1][-1].content or "")
    rt.flush()
    steps = [s for s in rt.store.steps(guard.run_id_for(handler)) if s.tool]
    assert len(steps) == 1 and bool(steps[0].error) == (answer == "no")
    guard.uninstrument()
