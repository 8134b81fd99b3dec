"""The per-turn state checkpoint: a copy at the turn, encoded later to the payload ``to_dict`` gives."""

from __future__ import annotations

from typing import Any

from immunity_llamaindex.snapshot import StateEncoder, StateSnapshot, fingerprint, snapshot_state
from immunity_llamaindex.testing import RollbackOnWrong, ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
from llama_index.core.memory import ChatMemoryBuffer
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import DictState, InMemoryStateStore


def _store() -> InMemoryStateStore[Any]:
    memory = ChatMemoryBuffer.from_defaults(token_limit=4000)
    memory.put(ChatMessage(role="user", content="first"))
    return InMemoryStateStore(DictState(_data={"memory": memory, "scratchpad": [ChatMessage(role="assistant",
                                                                                             content="a")],
                                           "counts": {"calls": 1}, "n": 1}))


async def test_a_change_made_in_place_after_the_checkpoint_is_not_in_it() -> None:
    ser = JsonSerializer()
    store = _store()
    before = store.to_dict(ser)
    snap = snapshot_state(store, ser)
    assert isinstance(snap, StateSnapshot)

    # what the workflow does after a turn: change the values it got from the store in place
    scratchpad = await store.get("scratchpad")
    scratchpad.append(ChatMessage(role="tool", content="WRONG"))
    scratchpad[0].blocks.append(TextBlock(text="WRONG"))
    scratchpad[0].additional_kwargs["k"] = "WRONG"
    memory = await store.get("memory")
    memory.put(ChatMessage(role="assistant", content="WRONG"))
    (await store.get("counts"))["calls"] = 99
    await store.set("n", 2)
    assert "WRONG" in str(store.to_dict(ser))

    restored = await snap.state()
    assert "WRONG" not in str(InMemoryStateStore(restored).to_dict(ser))
    # a restored state is the snapshot's copy: changing it leaves the snapshot as it was
    restored._data["scratchpad"].append(ChatMessage(role="tool", content="later"))
    assert len((await snap.state())._data["scratchpad"]) == 1
    assert snap.to_dict() == before  # the payload ``to_dict`` gave at the turn
    # once encoded (the store's writer did), a rollback reads the payload back: the same state
    again = await snap.state()
    assert InMemoryStateStore(again).to_dict(ser) == before
    # the payload reads back with the store's own ``from_dict``
    back = await InMemoryStateStore.from_dict(snap.model_dump(mode="json"), ser).get_state()
    assert back._data["n"] == 1 and [m.content for m in back._data["memory"].get_all()] == ["first"]



def lookup(id: int) -> str:
    """Look up a record."""
    return {1: "record 1: ok", 2: "record 2: the answer", 9: "record 9: WRONG"}[int(id)]


async def rolled_back_run(rt: Any) -> tuple[ScriptedLLM, Any, Any]:
    """A FunctionAgent whose second lookup is wrong: rolled back, hinted, then answered."""

    def third(messages: list[Any]) -> Any:
        hinted = any("ROLLBACK" in (m.content or "") for m in messages)
        return tool_call("lookup", {"id": 2}) if hinted else "I give up."

    llm = ScriptedLLM([tool_call("lookup", {"id": 1}), tool_call("lookup", {"id": 9}), third, "The answer is 2."])
    agent = FunctionAgent(tools=[lookup], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Find the answer")
    assert str(await handler) == "The answer is 2."
    return llm, guard, handler


async def test_without_a_store_the_turn_copies_and_a_rollback_restores_the_copy(make_runtime: Any) -> None:
    rt = make_runtime(store=None, plugins=[RollbackOnWrong()])
    llm, guard, handler = await rolled_back_run(rt)
    # the call after the rollback: the good step is kept, the bad one is gone, the hint is there
    assert llm.saw("record 1: ok", 2) and not llm.saw("WRONG", 2) and llm.saw("ROLLBACK", 2)
    assert not llm.saw("WRONG", 3) and llm.saw("record 2: the answer", 3)
    cps = rt.sessions[guard.run_id_for(handler)].checkpoints
    assert [c.ref["turn"] for c in cps] == [1, 2, 4] and all(isinstance(c.ref["state"], StateSnapshot) for c in cps)
    # turn 2's copy still holds turn 2's state, though the workflow went on changing its lists in place
    assert "record 1: ok" in str(cps[1].ref["state"].to_dict()) and "WRONG" not in str(cps[1].ref["state"].to_dict())
    guard.uninstrument()


async def test_with_a_store_the_turn_encodes_the_payload_the_row_holds(make_runtime: Any) -> None:
    rt = make_runtime()
    llm = ScriptedLLM([tool_call("lookup", {"id": 1}), "done"])
    agent = FunctionAgent(tools=[lookup], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Find it")
    assert str(await handler) == "done"
    run_id = guard.run_id_for(handler)
    rt.flush()
    rows = rt.store.checkpoints(run_id)
    live = rt.sessions[run_id].checkpoints
    assert len(rows) == len(live) == 2
    for row, cp in zip(rows, live, strict=True):
        assert type(cp.ref["state"]) is dict and row.ref["state"] == cp.ref["state"]
        state = await InMemoryStateStore.from_dict(row.ref["state"], JsonSerializer()).get_state()
        assert "memory" in state._data
    # the second turn's checkpoint has the first tool call's result; the first has none
    assert [c.ref["turn"] for c in rows] == [1, 2]
    assert "record 1: ok" not in str(rows[0].ref["state"]) and "record 1: ok" in str(rows[1].ref["state"])
    guard.uninstrument()


async def test_the_encoder_gives_to_dicts_payload_and_sees_changes_made_in_place() -> None:
    ser = JsonSerializer()
    store = _store()
    encoder = StateEncoder()
    assert encoder.encode(store) == store.to_dict(ser)
    assert encoder.encode(store) == store.to_dict(ser)  # all of it reused

    # the changes a workflow makes between turns, each in place, each seen on the next encoding
    scratchpad = await store.get("scratchpad")
    scratchpad.append(ChatMessage(role="tool", content="r1", additional_kwargs={"tool_call_id": "c1"}))
    assert encoder.encode(store) == store.to_dict(ser)
    scratchpad[0].blocks.append(TextBlock(text="more"))
    assert encoder.encode(store) == store.to_dict(ser)
    scratchpad[1].additional_kwargs["tool_call_id"] = "c2"
    assert encoder.encode(store) == store.to_dict(ser)
    scratchpad[0].role = MessageRole.USER
    assert encoder.encode(store) == store.to_dict(ser)
    memory = await store.get("memory")
    memory.put(ChatMessage(role="assistant", content="second"))
    assert encoder.encode(store) == store.to_dict(ser)
    memory.token_limit = 10
    assert encoder.encode(store) == store.to_dict(ser)
    (await store.get("counts"))["calls"] = 2
    assert encoder.encode(store) == store.to_dict(ser)
    await store.set("n", True)  # same JSON-equal value of another type: encoded again
    assert encoder.encode(store) == store.to_dict(ser)
    await store.set("scratchpad", [])
    await store.set("extra", {"nested": [1, 2.5, None, "x"]})
    assert encoder.encode(store) == store.to_dict(ser)
    # what the payload decodes to is the state at that moment
    back = await InMemoryStateStore.from_dict(encoder.encode(store), ser).get_state()
    assert back._data["counts"] == {"calls": 2} and back._data["n"] is True
    assert [m.content for m in back._data["memory"].get_all()] == ["first", "second"]


def test_fingerprints_tell_values_apart_and_give_up_on_unknown_objects() -> None:
    assert fingerprint(1) != fingerprint(True) and fingerprint(1) != fingerprint(1.0)
    assert fingerprint({"a": [1, "b"]}) == fingerprint({"a": [1, "b"]})
    assert fingerprint({"a": [1, "b"]}) != fingerprint({"a": [1, "c"]})
    assert fingerprint(object()) is None and fingerprint([1, object()]) is None
    msg = ChatMessage(role="user", content="hi")
    before = fingerprint(msg)
    msg.blocks.append(TextBlock(text="there"))
    assert fingerprint(msg) != before


async def test_a_rollback_with_a_store_restores_the_encoded_state(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[RollbackOnWrong()])
    llm, guard, handler = await rolled_back_run(rt)
    assert llm.saw("record 1: ok", 2) and not llm.saw("WRONG", 2) and llm.saw("ROLLBACK", 2)
    run_id = guard.run_id_for(handler)
    rt.flush()
    rows = rt.store.checkpoints(run_id)
    assert [c.ref["turn"] for c in rows] == [1, 2, 4] and all(type(c.ref["state"]) is dict for c in rows)
    assert "record 1: ok" in str(rows[1].ref["state"]) and "WRONG" not in str(rows[1].ref["state"])
    guard.uninstrument()
