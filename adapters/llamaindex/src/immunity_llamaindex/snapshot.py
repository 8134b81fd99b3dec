"""The context's state at a model turn, for in-run rollback, without encoding it on the turn.

``checkpoints="state"`` records the workflow's state before every model turn. Encoding it with
the workflow's serializer each turn (``ctx.store.to_dict``) costs time on the agent's path and
grows with the chat history. When no immunity store writes the checkpoint, the payload is needed
only by a rollback, so the turn takes a :class:`StateSnapshot` instead: a structural copy of the
committed state (containers, models and chat messages copied, content blocks shared), about half
the CPU of ``to_dict``, encoded only if something asks for the payload, and copied back into the
live store by a rollback. The workflow changes its state in place (``scratchpad.append``, the chat
memory's lists), so the copy is what keeps a later change out of the checkpoint. With a store the
turn encodes as before: copying and then encoding on the store's writer thread measured more CPU
in all (see the adapter's README); it encodes incrementally instead (below).

With a store, :class:`StateEncoder` encodes the turn's state to the very payload ``to_dict`` gives,
reusing what has not changed since the run's previous turn: the encoding of each state value
whose contents are the same (the chat memory, counters) and of each chat message already in a
list (the scratchpad grows by a few messages a turn). What "the same" means is a
:func:`fingerprint`, a walk that serialises nothing.

Shared, not copied: message content blocks (``TextBlock``, ``ToolCallBlock``, ...), which
LlamaIndex replaces and never edits; strings, numbers and other immutable values; fields declared
``Field(exclude=True)`` (live handles such as a tokenizer); objects that cannot be deep-copied.
"""

from __future__ import annotations

import copy
from collections import deque
from enum import Enum
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from pydantic import BaseModel, PrivateAttr, model_serializer
from pydantic_core import PydanticUndefined
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import (
    DictState,
    InMemorySerializedState,
    InMemoryStateStore,
    create_in_memory_payload,
)

__all__ = ["StateEncoder", "StateSnapshot", "copy_state", "snapshot_state"]

#: Types whose values are never changed in place (enum types are added when first seen).
_ATOMS: set[type] = {str, int, float, bool, bytes, type(None), complex, range}


def _blocks() -> tuple[type, ...]:
    from llama_index.core.base.llms import types

    found: list[type] = []
    for name in dir(types):
        obj = getattr(types, name)
        if isinstance(obj, type) and issubclass(obj, BaseModel) and "block_type" in getattr(obj, "model_fields", {}):
            found.append(obj)
    return tuple(found)


_SHARED: tuple[type, ...] = _blocks()
_MODEL_COPY = BaseModel.__copy__


def _copy(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    if isinstance(value, Enum):
        _ATOMS.add(kind)
        return value
    hit = memo.get(id(value))
    if hit is not None:
        return hit
    if kind is list:
        out_list: list[Any] = []
        memo[id(value)] = out_list
        out_list.extend([v if type(v) in _ATOMS else _copy(v, memo) for v in value])
        return out_list
    if kind is dict:
        out_dict: dict[Any, Any] = {}
        memo[id(value)] = out_dict
        for k, v in value.items():
            out_dict[k] = v if type(v) in _ATOMS else _copy(v, memo)
        return out_dict
    if kind is tuple:
        return memo.setdefault(id(value), tuple([_copy(v, memo) for v in value]))
    if kind is set or kind is frozenset:
        return memo.setdefault(id(value), kind(_copy(v, memo) for v in value))
    if kind is deque:
        out_deque: deque[Any] = deque(maxlen=value.maxlen)
        memo[id(value)] = out_deque
        out_deque.extend(_copy(v, memo) for v in value)
        return out_deque
    if kind is ChatMessage:  # the bulk of a chat state: its own short path (its blocks are shared)
        msg = _shallow(value)
        memo[id(value)] = msg
        d = msg.__dict__
        d["blocks"] = list(value.blocks)
        extra = value.additional_kwargs
        d["additional_kwargs"] = _copy(extra, memo) if extra else {}
        return msg
    if isinstance(value, BaseModel):
        if isinstance(value, _SHARED):
            return value
        return _copy_model(value, memo)
    try:
        out = copy.deepcopy(value, memo)
    except Exception:  # a live handle (a client, a lock): shared, as the workflow's own edit copy does
        out = value
    memo[id(value)] = out
    return out


def _shallow(value: BaseModel) -> Any:
    """``value.model_copy()``: a new model with the same fields, extras and private attributes."""
    cls = type(value)
    if cls.__copy__ is not _MODEL_COPY:
        return value.model_copy()
    out = cls.__new__(cls)  # pydantic's own __copy__, without its call overhead
    _set = object.__setattr__
    _set(out, "__dict__", dict(value.__dict__))
    _set(out, "__pydantic_extra__", None if value.__pydantic_extra__ is None else dict(value.__pydantic_extra__))
    _set(out, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
    private = value.__pydantic_private__
    _set(out, "__pydantic_private__",
         None if private is None else {k: v for k, v in private.items() if v is not PydanticUndefined})
    return out


def _copy_model(value: BaseModel, memo: dict[int, Any]) -> BaseModel:
    out = _shallow(value)
    memo[id(value)] = out
    fields = type(value).model_fields
    contents = vars(out)
    for name, child in value.__dict__.items():
        if type(child) in _ATOMS:
            continue  # the shallow copy holds it already
        field = fields.get(name)
        if field is None or field.exclude is not True:
            contents[name] = _copy(child, memo)
    for store in (out.__pydantic_extra__, out.__pydantic_private__):
        if store:
            for name, child in list(store.items()):
                store[name] = _copy(child, memo)
    return out


def copy_state(state: BaseModel) -> BaseModel:
    """A copy of a workflow state model that no later in-place change of ``state`` reaches
    (content blocks and immutable values are shared)."""
    return _copy_model(state, {})


class StateSnapshot(BaseModel):
    """A copy of the context's state at one turn. Serialised (by pydantic, e.g. when the store's
    writer builds the checkpoint row) as the payload ``InMemoryStateStore.to_dict`` gives, encoded
    once, on first use."""

    _state: Any = PrivateAttr(default=None)
    _serializer: Any = PrivateAttr(default=None)
    _payload: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, state: BaseModel, serializer: Any) -> StateSnapshot:
        snap = cls()
        snap._state, snap._serializer = copy_state(state), serializer
        return snap

    async def state(self) -> BaseModel:
        """A fresh copy of the recorded state, to put into a live store (the snapshot stays as it was)."""
        state = self._state
        if state is not None:
            return copy_state(state)
        return await InMemoryStateStore.from_dict(self.to_dict(), self._serializer).get_state()

    def to_dict(self) -> dict[str, Any]:
        """The serialised state (the format ``InMemoryStateStore.from_dict`` reads). Once encoded,
        the copy is let go (a rollback decodes the payload), so a run keeps one form of each turn."""
        payload = self._payload
        if payload is None:
            payload = self._payload = create_in_memory_payload(self._state, self._serializer).model_dump()
            self._state = None
        return payload

    @model_serializer
    def _serialise(self) -> dict[str, Any]:
        return self.to_dict()


def fingerprint(value: Any) -> Any:
    """A value that equals an earlier fingerprint of ``value`` only while ``value`` would encode
    the same, or ``None`` when that cannot be told cheaply (an unknown object, a model with extra
    fields). It holds the models and messages it covers (compared by identity first, then by
    their fields), never a mutable container, so a change made in place to a list, dict or
    message shows. Content blocks count by identity, as in :func:`copy_state` (LlamaIndex
    replaces a block, never edits one)."""
    kind = type(value)
    if kind in _ATOMS:
        return (kind, value)
    if isinstance(value, Enum):
        _ATOMS.add(kind)
        return (kind, value)
    if kind is list or kind is tuple:
        items = []
        for v in value:
            f = fingerprint(v)
            if f is None:
                return None
            items.append(f)
        return (kind, tuple(items))
    if kind is dict:
        pairs = []
        for k, v in value.items():
            f = fingerprint(v)
            if f is None or type(k) not in _ATOMS:
                return None
            pairs.append((type(k), k, f))
        return (kind, tuple(pairs))
    if kind is ChatMessage:
        if value.__pydantic_extra__:
            return None
        extra = fingerprint(value.additional_kwargs)
        if extra is None:
            return None
        return (kind, value, value.role, tuple(value.blocks), extra)
    if isinstance(value, _SHARED):
        return (kind, value)
    if isinstance(value, BaseModel):
        if value.__pydantic_extra__:
            return None
        fields = kind.model_fields
        parts: list[Any] = []
        for store in (value.__dict__, value.__pydantic_private__ or {}):
            for name, child in store.items():
                field = fields.get(name)
                if field is not None and field.exclude is True:
                    continue
                f = fingerprint(child)
                if f is None:
                    return None
                parts.append((name, f))
        return (kind, value, tuple(parts))
    return None


def _message_key(message: ChatMessage) -> Any:
    """What a chat message's encoding depends on (see :func:`fingerprint`), or ``None``."""
    if message.__pydantic_extra__:
        return None
    extra = message.additional_kwargs
    if not extra:
        extra_key: Any = ()
    elif all(type(v) is str for v in extra.values()):  # a tool result's {"tool_call_id": ...}
        extra_key = tuple(extra.items())
    else:
        extra_key = fingerprint(extra)
    if extra_key is None:
        return None
    return (message, message.role, tuple(message.blocks), extra_key)


class StateEncoder:
    """Encodes a context's state store, turn after turn of one run, to the payload
    ``InMemoryStateStore.to_dict(JsonSerializer())`` gives, encoding again only the state values and
    chat messages that changed since the previous turn. A list of chat messages (the scratchpad)
    is the JSON text of each message joined as ``json.dumps`` joins a list's items. Anything it
    does not know (another kind of store or state, a value it cannot encode) goes to ``to_dict``."""

    def __init__(self) -> None:
        self._serializer = JsonSerializer()
        self._values: dict[str, tuple[Any, str]] = {}
        #: the keys whose value changed between two turns (a counter, the last tool results)
        self._volatile: set[str] = set()
        self._messages: dict[int, tuple[Any, str]] = {}

    def _message(self, message: ChatMessage, seen: dict[int, tuple[Any, str]]) -> str:
        key = _message_key(message)
        hit = self._messages.get(id(message))
        if key is not None and hit is not None and hit[0] == key:
            text = hit[1]
        else:
            text = self._serializer.serialize(message)
        if key is not None:  # the key holds the message: its id stays its own while cached
            seen[id(message)] = (key, text)
        return text

    def encode(self, store: Any) -> dict[str, Any]:
        try:
            state = store.checkpoint().state if type(store) is InMemoryStateStore else None
        except Exception:
            state = None
        if type(state) is not DictState:
            payload: dict[str, Any] = store.to_dict(self._serializer)
            return payload
        values, volatile = self._values, self._volatile
        seen: dict[int, tuple[Any, str]] = {}
        data: dict[str, str] = {}
        try:
            for key, value in state.items():
                if type(value) is list and value and all(type(v) is ChatMessage for v in value):
                    data[key] = "[" + ", ".join([self._message(v, seen) for v in value]) + "]"
                    values.pop(key, None)
                    continue
                if key in volatile:  # changed on an earlier turn: not worth a fingerprint
                    data[key] = self._serializer.serialize(value)
                    continue
                f = fingerprint(value)
                hit = values.get(key)
                if f is not None and hit is not None and hit[0] == f:
                    data[key] = hit[1]
                    continue
                data[key] = text = self._serializer.serialize(value)
                if f is None or hit is not None:
                    volatile.add(key)
                    values.pop(key, None)
                else:
                    values[key] = (f, text)
        except Exception:  # the workflow's own path decides (its warnings, its errors)
            values.clear()
            self._messages = {}
            payload = store.to_dict(self._serializer)
            return payload
        self._messages = seen  # only the messages of this turn's state stay cached
        for key in [k for k in values if k not in data]:
            del values[key]
        return InMemorySerializedState(state_type=type(state).__name__, state_module=type(state).__module__,
                                       state_data={"_data": data}).model_dump()


def snapshot_state(store: Any, serializer: Any, *, stored: bool = False) -> StateSnapshot | dict[str, Any]:
    """The state of a context's store now. Not ``stored`` (no immunity store will write the
    checkpoint): a :class:`StateSnapshot` of an in-memory store's committed state
    (``store.checkpoint()``, copied, not encoded). Otherwise, or for another kind of store, the
    store's ``to_dict`` payload: the row needs it anyway, and a copy encoded later costs more CPU
    in all than encoding on the turn."""
    take = None if stored else getattr(store, "checkpoint", None)
    if take is not None:
        try:
            state = take().state
        except Exception:  # not an in-memory JSON store: its own payload instead
            state = None
        if isinstance(state, BaseModel):
            return StateSnapshot.of(state, serializer)
    payload: dict[str, Any] = store.to_dict(serializer)
    return payload
