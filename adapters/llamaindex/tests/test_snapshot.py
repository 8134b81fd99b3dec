"""The per-turn state checkpoint: a copy at the turn, encoded later to the payload ``to_dict`` gives."""

from __future__ import annotations

from typing import Any

from immunity_llamaindex.snapshot import StateSnapshot, snapshot_state
from immunity_llamaindex.testing import ScriptedLLM, tool_call
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


async def test_the_stored_checkpoint_row_holds_the_state_payload(make_runtime: Any) -> None:
    rt = make_runtime()

    def lookup(id: int) -> str:
        """Look up a record."""
        return f"record {id}"

    llm = ScriptedLLM([tool_call("lookup", {"id": 1}), "done"])
    agent = FunctionAgent(tools=[lookup], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Find it")
    assert str(await handler) == "done"
    run_id = guard.run_id_for(handler)
    rt.flush()
    rows = rt.store.checkpoints(run_id)
    live = [c for s in rt.sessions.values() for c in s.checkpoints if c.run_id == run_id]
    assert len(rows) == len(live) == 2
    for row, cp in zip(rows, live, strict=True):
        assert isinstance(cp.ref["state"], StateSnapshot)
        assert row.ref["state"] == cp.ref["state"].to_dict()  # encoded on the writer, as to_dict would
        state = await InMemoryStateStore.from_dict(row.ref["state"], JsonSerializer()).get_state()
        assert "memory" in state._data
    # the second turn's checkpoint has the first tool call and its result; the first has neither
    assert "record 1" not in str(rows[0].ref["state"]) and "record 1" in str(rows[1].ref["state"])
    guard.uninstrument()
