"""The per-turn state checkpoint: a copy at the turn, encoded later to the payload ``to_dict`` gives."""

from __future__ import annotations

from typing import Any

from immunity_llamaindex.snapshot import StateSnapshot, snapshot_state
from immunity_llamaindex.testing import RollbackOnWrong, ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, TextBlock
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


async def test_without_a_store_the_turn_copies_and_a_rollback_restores_the_copy(make_runtime: Any) -> None:
    rt = make_runtime(store=None, plugins=[RollbackOnWrong()])

    def third(messages: list[Any]) -> Any:
        hinted = any("ROLLBACK" in (m.content or "") for m in messages)
        return tool_call("lookup", {"id": 2}) if hinted else "I give up."

    llm = ScriptedLLM([tool_call("lookup", {"id": 1}), tool_call("lookup", {"id": 9}), third, "The answer is 2."])
    agent = FunctionAgent(tools=[lookup], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Find the answer")
    assert str(await handler) == "The answer is 2."
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
