"""The SQLite store (sqlite-utils, WAL, ``Migrations``).

Writes from the hot path go into a bounded queue that a background thread drains in batches, each
batch one ``BEGIN IMMEDIATE`` transaction (so SQLite's busy_timeout applies when several threads
or processes write one file). The writer cannot die: a record the database refuses is sanitised
(lone surrogates escaped, huge integers as text) or, failing that, reported as a plugin error of
its run, and any other exception is logged and the loop goes on; :meth:`SQLiteStore.save`
restarts a writer thread that stopped anyway. When the database is unavailable (locked for
longer than the busy timeout, disk full) the backlog is kept and retried in chunks.

When the queue is full, a producer waits up to ``block_ms`` and then appends to a spill file
next to the database (``<db>.spill.<pid>.<id>.jsonl``); the writer reads it back in order once it
has caught up, and a spill file left behind by a process that was killed (or ``<db>.unsaved.jsonl``
from older versions) is read back, in chunks, by the next open. Nothing is dropped silently.

Reads go through a second connection (WAL readers never wait for the writer); the read methods
flush this process's queue first so a process sees its own writes, and hot-path lookups
(``get_run(flush=False)``, :meth:`idempotency_results`) do not. ``durability="run"`` (the
default) makes a run's end durable before ``end`` returns. See ``docs/store.md``.

Core tables (plain plural nouns): ``runs``, ``events``, ``steps``, ``verdicts``, ``interventions``,
``recoveries``, ``checkpoints``, ``patterns``, ``plugin_errors``. A plugin's own tables carry its
name as a prefix (``bandit_arms``) and are created through :attr:`SQLiteStore.db`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import logging
import operator
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import pydantic_core
import sqlite_utils
from pydantic import BaseModel
from sqlite_utils import Migrations

from immunity.errors import StoreError
from immunity.models import Checkpoint, Event, FailurePattern, Intervention, Recovery, Run, Step, Verdict
from immunity.redact import default_redactor

log = logging.getLogger("immunity.store")

migrations = Migrations("immunity")


@migrations()
def m001_core_tables(db: sqlite_utils.Database) -> None:
    db.table("runs").create({
        "run_id": str, "task": str, "task_id": str, "domain": str, "framework": str, "agent": str,
        "outcome": str, "failure_step": int, "source": str, "started_at": float, "ended_at": float,
        "tokens": int, "cost": float, "steps": int, "status": str, "final_answer": str, "metadata": str,
    }, pk="run_id")
    db.table("events").create({
        "event_id": str, "run_id": str, "seq": int, "kind": str, "ts": float, "agent": str, "node": str,
        "model": str, "tool": str, "tool_call_id": str, "body": str,
    }, pk="event_id")
    db.table("steps").create({
        "run_id": str, "idx": int, "action_type": str, "confidence": float, "tool": str, "arguments": str,
        "text": str, "result": str, "error": str, "return_code": int, "agent": str, "side_effect": int,
        "tokens": int, "cost": float, "ts": float, "data": str,
    }, pk=("run_id", "idx"))
    db.table("verdicts").create({
        "id": int, "run_id": str, "step": int, "ok": int, "error_class": str, "severity": str, "message": str,
        "hint": str, "evidence": str, "plugin": str, "block": int, "ts": float,
    }, pk="id")
    db.table("interventions").create({
        "intervention_id": str, "run_id": str, "step": int, "kind": str, "text": str, "arguments": str,
        "error_class": str, "pattern_id": str, "verdict_plugin": str, "variant": str, "source": str,
        "ts": float, "delivered": int, "outcome": str,
    }, pk="intervention_id")
    db.table("recoveries").create({
        "recovery_id": str, "run_id": str, "step": int, "kind": str, "hint": str, "checkpoint_id": str,
        "max_attempts": int, "delay_s": float, "fallback": str, "reason": str, "ts": float,
    }, pk="recovery_id")
    db.table("checkpoints").create({
        "checkpoint_id": str, "run_id": str, "step": int, "verified": int, "ref": str, "ts": float,
    }, pk="checkpoint_id")
    db.table("patterns").create({
        "pattern_id": str, "pack": str, "error_class": str, "domain": str, "body": str,
    }, pk="pattern_id")
    db.table("plugin_errors").create({
        "id": int, "run_id": str, "plugin": str, "hook": str, "error": str, "ts": float,
    }, pk="id")
    db.table("idempotency").create({"key": str, "run_id": str, "tool": str, "result": str, "ts": float}, pk="key")
    db.table("events").create_index(["run_id", "seq"])
    db.table("verdicts").create_index(["run_id"])
    db.table("interventions").create_index(["run_id"])
    db.table("checkpoints").create_index(["run_id"])
    db.table("runs").create_index(["task_id"])


@migrations()
def m002_idempotency_by_run(db: sqlite_utils.Database) -> None:
    # the runtime reads a run's idempotency keys once per run, by run id
    db.table("idempotency").create_index(["run_id"], if_not_exists=True)


#: adapters' old framework names, renamed to one name per adapter (its registry name)
RENAMED_FRAMEWORKS = {"llama-index-core": "llamaindex", "openai_agents": "openai-agents"}


@migrations()
def m003_one_framework_name_per_adapter(db: sqlite_utils.Database) -> None:
    """Runs stored under an adapter's old framework name, and the bandit's contexts built from it,
    take the adapter's one name (so old and new runs of a framework count together)."""
    tables = set(db.table_names())
    for old, new in RENAMED_FRAMEWORKS.items():
        db.execute("update runs set framework = ? where framework = ?", [new, old])
        if "bandit_arms" in tables:
            db.execute("update or ignore bandit_arms set context = replace(context, ?, ?) where context like ?",
                       [f"framework={old}", f"framework={new}", f"%framework={old}"])
        if "bandit_pulls" in tables:
            db.execute("update bandit_pulls set context = replace(context, ?, ?) where context like ?",
                       [f"framework={old}", f"framework={new}", f"%framework={old}"])


@migrations()
def m004_messages(db: sqlite_utils.Database) -> None:
    # model-call histories, stored once per message; events refer to them by hash
    db.table("messages").create({"hash": str, "body": str}, pk="hash", if_not_exists=True)


@migrations()
def m005_variant_lineage(db: sqlite_utils.Database) -> None:
    """Evolved intervention variants: lineage (parent, generator, generation) and status
    (proposed / candidate / promoted / retired); see :mod:`immunity.interventions.evolution`. The
    interventions plugin also creates the table on first use (stores without these migrations, such
    as the PostgreSQL plugin's, get it that way, like the other bandit tables)."""
    from immunity.interventions.evolution import LINEAGE_DDL

    db.execute(LINEAGE_DDL)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str, ensure_ascii=False)


#: Messages of a model call's history an event refers to (the latest ones); longer histories
#: record how many were left out.
MESSAGE_REFS = 500
#: Characters of one message's text kept in the store.
MESSAGE_TEXT_LIMIT = 4000


def _message_row(message: Any) -> tuple[str, str]:
    """``(content hash, JSON)`` of one message, its text clipped to :data:`MESSAGE_TEXT_LIMIT`
    (``"clipped": <original length>`` records it)."""
    m = dict(message) if isinstance(message, dict) else {"content": message}
    content = m.get("content")
    if not isinstance(content, str) and content is not None:
        content = json.dumps(content, default=str, ensure_ascii=False)
        if len(content) > MESSAGE_TEXT_LIMIT:
            m["content"] = content
    if isinstance(m.get("content"), str) and len(m["content"]) > MESSAGE_TEXT_LIMIT:
        m["clipped"] = len(m["content"])
        m["content"] = m["content"][:MESSAGE_TEXT_LIMIT] + f"... [{m['clipped'] - MESSAGE_TEXT_LIMIT} more characters]"
    blob = json.dumps(m, sort_keys=True, default=str, ensure_ascii=False)
    digest = hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return digest, blob


def _loads(value: Any, default: Any = None) -> Any:
    if value in (None, ""):
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


#: Longest text kept in any field of a stored record (a 10 MB tool argument is clipped to this).
MAX_STORED_TEXT = 16_000


def to_row(table: str, record: Any, redactor: Any = None, *, message_refs: bool = False) -> dict[str, Any]:
    """A model (or dict) as a row of ``table``; with a ``redactor`` (see :mod:`immunity.redact`)
    every string in it is redacted, and clipped to :data:`MAX_STORED_TEXT`, before it is JSON-encoded.

    With a redactor, the row is first built straight from the record's fields (one JSON encoding
    per column, in pydantic's Rust serializer) and the record's texts are checked with
    :meth:`~immunity.redact.Redactor.may_change_any`; only a record that may hold a secret, a string
    over a limit or very deep nesting is walked string by string (the same row either way)."""
    if redactor is not None:  # (a disabled redactor still clips)
        try:
            row = _fast_row(table, record, redactor, message_refs)
        except Exception:  # anything unusual (a lone surrogate, an unknown type): the full path decides
            row = None
        if row is not None:
            return row
        if isinstance(record, BaseModel):
            record = _Dumped(record, redactor)
        elif isinstance(record, dict):
            return dict(redactor.value(record, clip=MAX_STORED_TEXT))
    return _to_row(table, record, message_refs)


_EVENT_HEAD = ("event_id", "run_id", "kind", "ts", "agent", "node", "model", "tool", "tool_call_id")
_EVENT_BODY_EXCLUDE = {*_EVENT_HEAD, "messages"}  # a set: pydantic takes it faster than a frozenset
_EVENT_JSON = Event.__pydantic_serializer__.to_json
#: Characters of an event's ``result`` / ``output`` / ``error`` kept (longer ones are clipped).
EVENT_TEXT_LIMIT = 8000
#: Brackets a JSON text may hold and still be taken as shallower than the redactor's depth limit
#: without walking it (brackets inside strings count too, so this is conservative).
_BRACKETS = 60


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NESTING = re.compile(r"[\[\]{}]")
_NEST_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _shallow(text: str) -> bool:
    """Whether a JSON text nests less deeply than the redactor's depth limit (less a margin for
    the record around it). Few brackets settle it at once; otherwise the
    brackets outside JSON strings are counted level by level. A text that is not JSON has no
    nesting of its own (the redactor sees one string), so what this says of it does not matter."""
    if text.count("{") + text.count("[") <= _BRACKETS:
        return True
    from immunity.redact import MAX_DEPTH

    marks = _NESTING.findall(_JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_NEST_STEP.__getitem__, marks)), default=0) < MAX_DEPTH - 4


def _json_col(value: Any) -> str | None:
    return None if value is None else pydantic_core.to_json(value).decode("utf-8")


def _fits(text: str) -> bool:
    """Whether a JSON column ``text`` needs neither clipping nor the depth limit: no string in it
    can be longer than the text, and it nests less deeply than the limit (:func:`_shallow`)."""
    return len(text) <= MAX_STORED_TEXT and _shallow(text)


def _short(*texts: str | None) -> bool:
    return all(t is None or len(t) <= MAX_STORED_TEXT for t in texts)


def _fast_row(table: str, record: Any, redactor: Any, message_refs: bool) -> dict[str, Any] | None:
    """The row of ``record`` without walking its strings, or ``None`` when it needs the full path
    (it may hold a secret, a string over a limit, very deep nesting, or it is of another kind).
    Equal to what the full path builds whenever it returns a row."""
    t = type(record)
    if t is Event and table == "events":
        return _fast_event(record, redactor, message_refs)
    if t is Step and table == "steps":
        return _fast_step(record, redactor)
    if t is Run and table == "runs":
        return _fast_run(record, redactor)
    if t is dict:
        return _fast_dict(record, redactor)
    if isinstance(record, BaseModel) and table in _CORE_TABLES and table != "patterns":
        row = _to_row(table, record)
        texts = [v for v in row.values() if type(v) is str]
        if all(len(v) <= MAX_STORED_TEXT and _shallow(v) for v in texts) \
                and not redactor.may_change_any(texts):
            return row
    return None


def _fast_event(ev: Event, redactor: Any, message_refs: bool) -> dict[str, Any] | None:
    for text in (ev.result, ev.output, ev.error):
        if text is not None and len(text) > EVENT_TEXT_LIMIT:
            return None
    scan: list[Any] = [ev.agent, ev.node, ev.model, ev.tool]
    if not _short(*scan):
        return None
    msgs = ev.messages
    if msgs and not message_refs:
        return None
    # (the model's serializer itself: what model_dump_json calls, without its keyword handling)
    body = _EVENT_JSON(ev, exclude=_EVENT_BODY_EXCLUDE, exclude_none=True).decode("utf-8")
    if len(body) > MAX_STORED_TEXT or not _shallow(body):
        return None
    scan.append(body)
    messages: list[tuple[str, str]] = []
    if msgs:
        kept = msgs[-MESSAGE_REFS:]
        for m in kept:
            if type(m) is not dict:
                return None
            content = m.get("content")
            if content is not None and type(content) is not str:
                return None  # content parts: the full path clips each part first
            digest, blob = _message_row(m)
            if len(blob) > MAX_STORED_TEXT or not _shallow(blob):
                return None
            if content is not None and len(content) > MESSAGE_TEXT_LIMIT:
                if len(content) > MAX_STORED_TEXT:
                    return None
                scan.append(content)  # the whole text, not only what the clip keeps
            scan.append(blob)
            messages.append((digest, blob))
    if redactor.may_change_any(scan):
        return None
    if msgs:
        extra: dict[str, Any] = {"message_refs": [h for h, _ in messages]}
        if len(msgs) > len(messages):
            extra["messages_omitted"] = len(msgs) - len(messages)
        tail = json.dumps(extra)[1:]
        body = body[:-1] + ("," if body != "{}" else "") + tail
    return {"event_id": ev.event_id, "run_id": ev.run_id, "kind": ev.kind.value, "ts": ev.ts, "agent": ev.agent,
            "node": ev.node, "model": ev.model, "tool": ev.tool, "tool_call_id": ev.tool_call_id, "body": body,
            **({"_messages": messages} if messages else {})}


def _flat_texts(value: dict[str, Any], out: list[Any]) -> bool:
    """Append the keys and string values of a dict that holds only scalars to ``out`` (what the
    redactor would look at when walking it); ``False`` for anything nested or unusual (then its
    JSON is scanned instead)."""
    for k, v in value.items():
        if type(k) is not str:
            return False
        out.append(k)
        tv = type(v)
        if tv is str:
            out.append(v)
        elif v is not None and tv is not int and tv is not float and tv is not bool:
            return False
    return True


def _fast_step(st: Step, redactor: Any) -> dict[str, Any] | None:
    scan: list[Any] = [st.tool, st.text, st.result, st.error, st.agent]
    if not _short(*scan):
        return None
    data = {k: v for k, v in st.data.items() if not k.startswith("_")}  # the runtime's own entries are not stored
    dj = pydantic_core.to_json(data).decode("utf-8")
    if not _fits(dj):
        return None
    texts: list[Any] = []  # the keys and string values of a flat ``data``: each recurs, or is a hex id
    scan += texts if _flat_texts(data, texts) else [dj]
    arguments = st.arguments
    args = None
    if arguments is not None:
        args = pydantic_core.to_json(arguments).decode("utf-8")
        if not _fits(args):
            return None
        if not _flat_texts(arguments, scan):
            scan.append(args)
    if redactor.may_change_any(scan):
        return None
    return {"run_id": st.run_id, "idx": st.index, "action_type": st.action_type.value, "confidence": st.confidence,
            "tool": st.tool, "arguments": args, "text": st.text, "result": st.result, "error": st.error,
            "return_code": st.return_code, "agent": st.agent, "side_effect": int(st.side_effect), "tokens": st.tokens,
            "cost": st.cost, "ts": st.ts, "data": dj}


def _fast_run(run: Run, redactor: Any) -> dict[str, Any] | None:
    meta = pydantic_core.to_json(run.metadata).decode("utf-8")
    texts = [run.run_id, run.task, run.task_id, run.domain, run.framework, run.agent, run.source, run.status,
             run.final_answer]
    if not (_short(*texts) and _fits(meta)):
        return None
    if redactor.may_change_any([*texts, meta]):
        return None
    return {"run_id": run.run_id, "task": run.task, "task_id": run.task_id, "domain": run.domain,
            "framework": run.framework, "agent": run.agent, "outcome": run.outcome.value,
            "failure_step": run.failure_step, "source": run.source, "started_at": run.started_at,
            "ended_at": run.ended_at, "tokens": run.tokens, "cost": run.cost, "steps": run.steps,
            "status": run.status, "final_answer": run.final_answer, "metadata": meta}


def _fast_dict(record: dict[str, Any], redactor: Any) -> dict[str, Any] | None:
    texts: list[Any] = []
    if not _flat_texts(record, texts) or any(len(t) > MAX_STORED_TEXT for t in texts):
        return None  # nested, or a text to clip: walked
    if redactor.may_change_any(texts):
        return None
    return dict(record)


class _Dumped:
    """A model whose ``model_dump`` returns the redacted dump (what :func:`_to_row` reads)."""

    def __init__(self, model: BaseModel, redactor: Any):
        self._model, self._redactor = model, redactor

    def model_dump(self, **kw: Any) -> dict[str, Any]:
        return dict(self._redactor.value(self._model.model_dump(**kw), clip=MAX_STORED_TEXT))

    def model_dump_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _to_row(table: str, record: Any, message_refs: bool = False) -> dict[str, Any]:
    if isinstance(record, dict):
        return dict(record)
    if not isinstance(record, BaseModel | _Dumped):
        raise StoreError(f"cannot store a {type(record).__name__} in {table!r}")
    if table == "runs":
        d = record.model_dump(mode="json")
        d["metadata"] = _json(d["metadata"])
        return d
    if table == "events":
        d = record.model_dump(mode="json", exclude_none=True)
        head = {k: d.pop(k, None) for k in ("event_id", "run_id", "kind", "ts", "agent", "node", "model", "tool",
                                             "tool_call_id")}
        for key in ("result", "output", "error"):
            if isinstance(d.get(key), str) and len(d[key]) > 8000:
                d[key] = d[key][:8000] + f"... [{len(d[key]) - 8000} more characters]"
        msgs = d.pop("messages", None)
        if msgs:
            kept = msgs[-MESSAGE_REFS:] if message_refs else msgs[-50:]
            bodies = [_message_row(m) for m in kept]
            if message_refs:
                # the history is stored once: each message (clipped, the clip recorded) goes to the
                # ``messages`` table under its content hash, and the event keeps the hashes in order
                d["message_refs"] = [h for h, _ in bodies]
                head["_messages"] = bodies
            else:  # a store without a messages table: the latest messages inline, clipped
                d["messages"] = [json.loads(b) for _, b in bodies]
            if len(msgs) > len(kept):
                d["messages_omitted"] = len(msgs) - len(kept)
        head["body"] = _json(d)
        return head
    if table == "steps":
        d = record.model_dump(mode="json")
        d["idx"] = d.pop("index")
        d["arguments"] = _json(d["arguments"])
        d["data"] = _json({k: v for k, v in d["data"].items() if not k.startswith("_")})
        d["side_effect"] = int(d["side_effect"])
        return d
    if table == "verdicts":
        d = record.model_dump(mode="json")
        d["evidence"] = _json(d["evidence"])
        d["ok"], d["block"] = int(d["ok"]), int(d["block"])
        return d
    if table == "interventions":
        d = record.model_dump(mode="json")
        d["arguments"] = _json(d["arguments"])
        d["delivered"] = int(d["delivered"])
        return d
    if table == "checkpoints":
        d = record.model_dump(mode="json")
        d["ref"] = _json(d["ref"])
        d["verified"] = int(d["verified"])
        return d
    if table == "patterns":
        assert isinstance(record, FailurePattern | _Dumped)
        return {"pattern_id": record.pattern_id, "pack": record.metadata.get("pack"), "error_class": record.error_class,
                "domain": record.domain, "body": record.model_dump_json()}
    if isinstance(record, BaseModel | _Dumped):
        return record.model_dump(mode="json")
    raise StoreError(f"cannot store a {type(record).__name__} in {table!r}")


_CORE_TABLES = frozenset({"runs", "events", "steps", "verdicts", "interventions", "recoveries", "checkpoints",
                          "patterns", "plugin_errors", "idempotency", "messages"})
_PKS: dict[str, Any] = {"idempotency": "key", "runs": "run_id", "events": "event_id", "steps": ("run_id", "idx"), "interventions": "intervention_id",
        "recoveries": "recovery_id", "checkpoints": "checkpoint_id", "patterns": "pattern_id", "messages": "hash"}

#: Durability settings: ``"run"`` (default) makes a run's end durable before ``end`` returns;
#: ``"batch"`` never waits (the loss window on a crash is what is still queued).
DURABILITY = ("run", "batch")
_INT64 = (-(2**63), 2**63 - 1)
_TRANSIENT = ("locked", "busy", "full", "disk i/o", "unable to open", "readonly", "read-only")


def _transient(exc: BaseException) -> bool:
    """A failure of the database as a whole (locked, full, I/O), not of one record: retry later."""
    return isinstance(exc, sqlite3.OperationalError) and any(t in str(exc).lower() for t in _TRANSIENT)


def sanitise(value: Any) -> Any:
    """``value`` (a row) with what SQLite cannot take made storable: lone UTF-16 surrogates (a cut
    emoji) escaped, integers outside 64 bits dropped to NULL (inside JSON columns they are kept
    as written), other objects as their ``str``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, float | bytes):
        return value
    if isinstance(value, int):  # a column of integers would turn the digits into a float: dropped
        return value if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, dict):
        return {str(sanitise(k)): sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitise(v) for v in value]
    return sanitise(str(value))


_KEYED_BY_RECORD = frozenset({"runs", "steps", "interventions", "recoveries", "checkpoints", "patterns"})


def _latest(items: list[tuple[str, Any, int | None]]) -> list[tuple[str, Any, int | None]]:
    """A batch with each record object that was queued more than once (a run saved at its start
    and again at its end, a step saved again when relabelled) kept at its last place only: a row is
    built from the object as it is when written, so the earlier places would write the same row
    again. Only tables whose rows are keyed by the record's own id (the row replaces the earlier
    one); events are always kept (each has its own sequence number)."""
    seen: set[int] = set()
    out = []
    dup = False
    for item in reversed(items):
        if item[0] in _KEYED_BY_RECORD:
            key = id(item[1])
            if key in seen:
                dup = True
                continue
            seen.add(key)
        out.append(item)
    if not dup:
        return items
    out.reverse()
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


try:  # spill files are owned with an advisory lock, so only one process reads one back
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _try_lock(fh: Any) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def is_immunity_db(conn: sqlite3.Connection) -> bool:
    """Whether the database on ``conn`` is an immunity store (its migrations were applied)."""
    try:
        row = conn.execute("select count(*) from _sqlite_migrations where migration_set = 'immunity'").fetchone()
    except sqlite3.DatabaseError:
        return False
    return bool(row and row[0])


class _WriteQueue:
    """The write queue: a deque that the agent's threads append to (no lock when there is room
    and the writer is busy) and that the writer takes batches from; one condition wakes an idle
    writer and the producers waiting for room. ``put(None)`` asks the writer thread to stop."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.items: collections.deque[tuple[str, Any, int | None]] = collections.deque()
        self.cv = threading.Condition(threading.Lock())
        self.idle = False    # the writer is waiting on cv
        self.waiting = 0     # producers waiting on cv for room
        self.stop = False

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: tuple[str, Any, int | None] | None, timeout: float | None = None) -> bool:
        """Append ``item``; ``False`` if the queue stayed full for ``timeout`` seconds (the
        bound is approximate: producers racing for the last place may pass it by one each)."""
        if item is None:
            with self.cv:
                self.stop = True
                self.cv.notify_all()
            return True
        items = self.items
        if len(items) >= self.maxsize:
            deadline = time.monotonic() + (timeout or 0.0)
            with self.cv:
                self.waiting += 1
                try:
                    while len(items) >= self.maxsize:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        self.cv.notify_all()
                        self.cv.wait(left)
                finally:
                    self.waiting -= 1
        items.append(item)
        if self.idle:  # read after the append: an idle flag set later sees the item (see wait)
            with self.cv:
                self.cv.notify_all()
        return True

    def wait(self, timeout: float | None) -> None:
        """(writer) Wait until something is queued, a stop is asked for, or ``timeout``."""
        with self.cv:
            self.idle = True
            try:
                if not self.items and not self.stop:
                    self.cv.wait(timeout)
            finally:
                self.idle = False

    def take(self, n: int) -> list[tuple[str, Any, int | None]]:
        items = self.items
        out = [items.popleft() for _ in range(min(n, len(items)))]
        if self.waiting:
            with self.cv:
                self.cv.notify_all()
        return out


class StoreReads:
    """The read methods both of immunity's SQL stores share (SQLite here, PostgreSQL in
    immunity-postgres): the same queries and row-to-model conversion, with the driver's parameter
    placeholder (``_ph``). A store provides ``_rows(statement, params, flush=...)`` returning dicts;
    ``events`` stays per store (SQLite keeps message bodies in a table of their own)."""

    _ph = "?"

    def _rows(self, statement: str, params: Iterable[Any] = (), *, flush: bool = True) -> list[dict[str, Any]]:
        raise NotImplementedError

    @staticmethod
    def _model(model: Any, r: dict[str, Any]) -> Any:
        return model(**{k: v for k, v in r.items() if v is not None and k in model.model_fields})

    def runs(self, *, limit: int | None = 50, outcome: str | None = None, domain: str | None = None,
             source: str | None = None) -> list[Run]:
        where, params = [], []
        for col, val in (("outcome", outcome), ("domain", domain), ("source", source)):
            if val is not None:
                where.append(f"{col} = {self._ph}")
                params.append(val)
        stmt = "select * from runs" + (" where " + " and ".join(where) if where else "")
        stmt += " order by started_at desc, run_id"
        if limit:
            stmt += f" limit {int(limit)}"
        return [self._run(r) for r in self._rows(stmt, params)]

    def iter_runs(self, **filters: Any) -> Iterator[Run]:
        yield from self.runs(limit=None, **filters)

    @staticmethod
    def _run(r: dict[str, Any]) -> Run:
        r = dict(r)
        r["metadata"] = _loads(r.get("metadata"), {})
        return Run(**{k: v for k, v in r.items() if v is not None or k == "failure_step"})

    def get_run(self, run_id: str, *, flush: bool = True, prefix: bool = True) -> Run | None:
        """The run ``run_id`` (or, with ``prefix``, the only run whose id starts with it);
        ``flush=False`` reads committed rows only, without waiting for the writer."""
        rows = self._rows(f"select * from runs where run_id = {self._ph}", [run_id], flush=flush)
        if not rows and prefix:
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._rows(f"select * from runs where run_id like {self._ph} escape '\\' "
                              "order by started_at desc limit 2", [pattern], flush=False)
        if len(rows) != 1:
            return None
        return self._run(rows[0])

    def steps(self, run_id: str) -> list[Step]:
        out = []
        for r in self._rows(f"select * from steps where run_id = {self._ph} order by idx", [run_id]):
            r["index"] = r.pop("idx")
            r["arguments"] = _loads(r["arguments"])
            r["data"] = _loads(r["data"], {})
            r["side_effect"] = bool(r["side_effect"])
            out.append(self._model(Step, r))
        return out

    def verdicts(self, run_id: str) -> list[Verdict]:
        out = []
        for r in self._rows(f"select * from verdicts where run_id = {self._ph} order by id", [run_id]):
            r.pop("id", None)
            r["evidence"] = _loads(r["evidence"], {})
            r["ok"], r["block"] = bool(r["ok"]), bool(r["block"])
            out.append(self._model(Verdict, r))
        return out

    def interventions(self, run_id: str | None = None) -> list[Intervention]:
        stmt, params = "select * from interventions", []
        if run_id:
            stmt, params = stmt + f" where run_id = {self._ph}", [run_id]
        out = []
        for r in self._rows(stmt + " order by ts, intervention_id", params):
            r["arguments"] = _loads(r["arguments"])
            r["delivered"] = bool(r["delivered"])
            out.append(self._model(Intervention, r))
        return out

    def recoveries(self, run_id: str) -> list[Recovery]:
        rows = self._rows(f"select * from recoveries where run_id = {self._ph} order by ts, recovery_id", [run_id])
        return [self._model(Recovery, r) for r in rows]

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        out = []
        for r in self._rows(f"select * from checkpoints where run_id = {self._ph} order by ts, checkpoint_id",
                            [run_id]):
            r["ref"] = _loads(r["ref"], {})
            r["verified"] = bool(r["verified"])
            out.append(Checkpoint(**{k: v for k, v in r.items() if k in Checkpoint.model_fields}))
        return out

    def plugin_errors(self, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if run_id:
            return self._rows(f"select * from plugin_errors where run_id = {self._ph} order by id", [run_id])
        return self._rows(f"select * from plugin_errors order by id desc limit {int(limit)}")

    def patterns(self, pack: str | None = None) -> list[FailurePattern]:
        stmt, params = "select body from patterns", []
        if pack:
            stmt, params = stmt + f" where pack = {self._ph}", [pack]
        return [FailurePattern.model_validate_json(r["body"]) for r in self._rows(stmt, params)]

    def idempotent_result(self, key: str, *, flush: bool = False) -> str | None:
        """The stored result of a side-effecting call (committed rows only unless ``flush``)."""
        rows = self._rows(f"select result from idempotency where key = {self._ph} and run_id is not null", [key],
                          flush=flush)
        return rows[0]["result"] if rows else None

    def idempotency_results(self, run_id: str) -> dict[str, str]:
        """Every committed idempotency key of ``run_id`` with its result (one indexed read, no
        flush: the runtime answers its own recent calls from memory)."""
        rows = self._rows(f"select key, result from idempotency where run_id = {self._ph}", [run_id], flush=False)
        return {r["key"]: r["result"] for r in rows}


class SQLiteStore(StoreReads):
    """The default store. ``SQLiteStore(":memory:")`` for tests; a path for real use.

    :param background: write on a background thread (the default); ``False`` writes in the caller.
    :param durability: ``"run"`` (the default for a file): saving a run that has ended waits until
        everything queued before it is committed, so a run's end is on disk when ``end`` returns;
        ``"batch"`` (the default for ``:memory:``, which has no disk to wait for): nothing waits. See ``docs/store.md`` for the measured loss window on ``kill -9``.
    :param max_queue: records the queue holds; a producer that finds it full waits up to
        ``block_ms``, then the record (and every later one until the writer has caught up) goes to a
        spill file next to the database, which the writer reads back in order. Nothing is dropped.
    :param read_only: open with ``mode=ro``: nothing is created or written, and a database that is
        not immunity's is refused.
    """

    #: Rows written per transaction when a backlog is retried (so a backlog larger than the freed
    #: space still lands, chunk by chunk) and when a spill file is read back.
    CHUNK = 500

    def __init__(self, path: str = "immunity.db", *, background: bool = True, busy_timeout_ms: int = 5000,
                 linger_ms: float = 5.0, durability: str | None = None, max_queue: int = 10_000, block_ms: float = 50.0,
                 read_only: bool = False):
        if durability is None:
            durability = "batch" if path == ":memory:" else "run"
        if durability not in DURABILITY:
            raise StoreError(f"durability must be one of {DURABILITY}, not {durability!r}")
        self.path = path
        self.linger_s = linger_ms / 1000.0
        #: the redaction stage every row goes through before it is written (a runtime replaces it
        #: with one built from its configuration and plugins; see :mod:`immunity.redact`)
        self.redactor: Any = default_redactor()
        self.block_s = block_ms / 1000.0
        self.durability = durability
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_ms / 1000.0
        self._lock = threading.RLock()       # the writing connection
        self._rlock = threading.RLock()      # the reading connection
        self._seq_lock = threading.Lock()
        self._spill_lock = threading.RLock()
        self._seq: dict[str, Iterator[int]] = {}  # run id -> its next event numbers
        self._columns: dict[str, list[str]] = {}
        self._msg_seen: dict[str, None] = {}  # message hashes written (an ordered set, bounded)
        self._failed: list[tuple[str, dict[str, Any]]] = []
        self._failing: str | None = None
        self._spilling = False
        self._spill_fh: Any = None
        self._spill_pos = 0
        self.spilled = 0   #: records that went through this process's spill file
        self.lost = 0      #: records that could not be written nor spilled (reported in the log)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()  # set while a flush() waits: the writer stops lingering
        self._flushes = 0  # flush() calls under way (the last one to finish clears _hurry)
        self._flushes_lock = threading.Lock()
        self._flushed = 0  # flush() calls that drained the queue (the writer's cue to linger again)
        self._max_vars = 999
        memory = path == ":memory:"
        try:
            if read_only:
                self._open_read_only(path)
            else:
                if not memory:
                    if os.path.exists(path) and not os.access(path, os.W_OK):  # sqlite would open it, then fail per write
                        raise StoreError(f"store {path!r} cannot be written: the file is read-only")
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                conn = sqlite3.connect(path, check_same_thread=False, timeout=self.busy_timeout_s)
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                self._max_vars = min(32766, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
                self.db = sqlite_utils.Database(conn)
                self._migrate(memory)
                if memory:
                    self._reader, self._rlock = conn, self._lock
                else:
                    self._reader = sqlite3.connect(path, check_same_thread=False, timeout=self.busy_timeout_s)
                    self._reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path!r}: {exc} (is it an immunity database? is it locked?)") from exc
        self._queue = _WriteQueue(max(1, max_queue))
        self._drain = threading.Lock()  # held while records are taken from the queue and written: keeps them in order
        if not read_only and not memory:
            self.read_back_spills()
        if background and not read_only:
            self._start_writer()

    def _open_read_only(self, path: str) -> None:
        if path == ":memory:" or not os.path.exists(path):
            raise StoreError(f"no store at {path}")
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=self.busy_timeout_s)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path} is not an SQLite database ({exc})") from None
        if not is_immunity_db(conn):
            conn.close()
            raise StoreError(f"{path} is not an immunity store (no immunity migrations); refusing to read it")
        self.db = sqlite_utils.Database(conn)
        self._reader, self._rlock = conn, self._lock

    def _migrate(self, memory: bool) -> None:
        """WAL on, then the migrations inside ``BEGIN IMMEDIATE``: processes opening a new store at
        the same moment take turns (busy_timeout applies), and each sees the others' tables."""
        deadline = time.monotonic() + max(self.busy_timeout_s, 1.0) * 2
        conn = self.db.conn
        while True:
            try:
                if not memory and conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = wal")
                if not memory:
                    # WAL + NORMAL: a commit survives the process being killed (not a power cut)
                    conn.execute("PRAGMA synchronous = NORMAL")
                if not is_immunity_db(conn) or migrations.pending(self.db):
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        migrations.apply(self.db)
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
                return
            except sqlite3.OperationalError as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ------------------------------------------------------------------ writes
    def save(self, table: str, record: Any) -> None:
        """Queue a record for writing (the row is built on the writer thread). Never drops it:
        when the queue is full for ``block_ms`` the record goes to the spill file. With
        ``durability="run"``, saving a run that has ended waits until it is committed."""
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        seq = self._next_seq(record) if table == "events" else None
        if self._thread is None or self._closed:
            self._write(self._row_or_error(table, record, seq))
            return
        if not self._thread.is_alive():  # watchdog: a writer that died is restarted
            log.error("immunity store %s: the writer thread had stopped; restarting it", self.path)
            self._start_writer()
        if self._spilling or not self._queue.put((table, record, seq), timeout=self.block_s):
            self._spill(table, record, seq)
        if self.durability == "run" and table == "runs" and getattr(record, "ended_at", None) is not None \
                and self._failing is None:
            self.flush(timeout=max(self.busy_timeout_s, 1.0) * 2)

    def _next_seq(self, record: Any) -> int:
        run_id = record.get("run_id") if isinstance(record, dict) else getattr(record, "run_id", None)
        run_id = str(run_id)
        counter = self._seq.get(run_id)
        if counter is None:
            with self._seq_lock:
                counter = self._seq.get(run_id)
                if counter is None:  # a run resumed from an earlier process goes on numbering
                    with self._rlock:
                        last = self._reader.execute("select max(seq) from events where run_id = ?",
                                                    [run_id]).fetchone()
                    counter = self._seq[run_id] = itertools.count(int(last[0] or 0) + 1 if last else 1)
        return next(counter)  # (one call in C: two threads never get the same number)

    def _row(self, table: str, record: Any, seq: int | None = None) -> dict[str, Any]:
        row = to_row(table, record, self.redactor, message_refs=True)
        if table == "events":
            row["seq"] = seq if seq is not None else self._next_seq(row)
        return row

    def _split(self, table: str, row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """A row plus the rows of the messages it refers to that this store has not written yet."""
        out: list[tuple[str, dict[str, Any]]] = []
        for digest, blob in row.pop("_messages", None) or ():
            if digest not in self._msg_seen:
                self._msg_seen[digest] = None
                if len(self._msg_seen) > 100_000:
                    del self._msg_seen[next(iter(self._msg_seen))]
                out.append(("messages", {"hash": digest, "body": blob}))
        out.append((table, row))
        return out

    def _row_or_error(self, table: str, record: Any, seq: int | None) -> list[tuple[str, dict[str, Any]]]:
        """The rows of a record; one that cannot be turned into a row is reported as a plugin error
        of its run instead (so it is visible in ``runs show``)."""
        exc: Exception | None = None
        for _attempt in range(3):
            try:
                return self._split(table, self._row(table, record, seq))
            except RuntimeError as e:  # mutated by the agent's thread while being read: retry
                exc = e
            except Exception as e:
                exc = e
                break
        run_id = record.get("run_id") if isinstance(record, dict) else getattr(record, "run_id", None)
        log.warning("immunity store: cannot store a %s record of run %s: %s", table, run_id, exc)
        return [("plugin_errors", {"run_id": run_id, "plugin": "immunity.store", "hook": f"save:{table}",
                                   "error": f"{type(exc).__name__}: {exc}", "ts": time.time()})]

    def _start_writer(self) -> None:
        self._queue.stop = False
        self._thread = threading.Thread(target=self._writer, name=f"immunity-store:{self.path}", daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        """Write the queue in batches. Nothing that goes wrong in a batch stops the loop."""
        q = self._queue
        while True:
            try:
                if not q.items:
                    q.wait(0.2 if (self._failed or self._spilling) else None)
                if q.items and self.linger_s:
                    # let a batch build up instead of waking for every record: fewer wake-ups,
                    # less contention with the agent's thread for the interpreter; a flush
                    # (a run's end with durability="run", a read) cuts it short
                    self._hurry.wait(self.linger_s)
                flushed = self._flushed
                with self._drain:
                    if flushed != self._flushed and not self._hurry.is_set():
                        # a flush wrote the batch while this thread waited for ``_drain``: what is
                        # queued now came after it, so linger again instead of writing it alone
                        continue
                    self._drain_batch(self.CHUNK * 4, background=True)
            except BaseException as exc:  # never let the writer die
                log.error("immunity store %s: writer error (%s: %s); going on", self.path, type(exc).__name__, exc)
                time.sleep(0.01)
            if q.stop and not q.items:
                return

    #: seconds of row building on the writer thread between offers of the interpreter lock
    YIELD_S = 0.0002

    def _drain_batch(self, n: int, background: bool = False) -> None:
        """Take up to ``n`` queued records and write them (with ``_drain`` held), then retry a
        backlog, bound it, and read back this process's spill file once the queue is empty.

        On the writer thread (``background``) the interpreter lock is offered back every
        ``YIELD_S`` of row building: an agent thread waiting for it (e.g. back from a vector search
        that released it) waits about that long instead of Python's 5 ms switch interval."""
        items = _latest(self._queue.take(n))
        if background:
            rows = []
            clock = time.perf_counter
            last = clock()
            for t, r, s in items:
                rows.extend(self._row_or_error(t, r, s))
                if clock() - last > self.YIELD_S:
                    time.sleep(0)  # releases the GIL: a waiting thread runs now
                    last = clock()
        else:
            rows = [row for t, r, s in items for row in self._row_or_error(t, r, s)]
        with self._lock:
            self._write(rows)
            limit = self._queue.maxsize
            if len(self._failed) > limit:  # the database is down: memory stays bounded
                self._spill_rows(self._failed[limit:])
                del self._failed[limit:]
            if self._spilling and not self._failed and not self._queue.items:
                self._read_back_own_spill()

    def _commit(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """One ``BEGIN IMMEDIATE`` transaction (it takes the write lock first, so busy_timeout
        applies instead of a deadlock between two readers upgrading)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for table, row in rows:
            groups.setdefault(table, []).append(row)
        conn = self.db.conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table, batch in groups.items():
                    self._insert(table, batch)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def _write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``rows`` after any backlog, in chunks. Never raises: a database-wide failure
        (locked, disk full) keeps what is unwritten for a retry; a record the database refuses is
        sanitised, and if still refused, reported as a plugin error of its run."""
        with self._lock:
            backlog = self._failed + rows
            self._failed = []
            for i in range(0, len(backlog), self.CHUNK):
                chunk = backlog[i:i + self.CHUNK]
                try:
                    self._commit(chunk)
                    continue
                except Exception as exc:
                    if _transient(exc):
                        self._hold(backlog[i:], exc)
                        return
                for j, one in enumerate(chunk):
                    if not self._write_one(one):
                        self._hold(backlog[i + j:], None)
                        return
            if self._failing is not None:
                log.warning("immunity store %s: writing again (%s had stopped it)", self.path, self._failing)
            self._failing = None

    def _hold(self, rows: list[tuple[str, dict[str, Any]]], exc: BaseException | None) -> None:
        self._failed = rows
        reason = str(exc) if exc is not None else self._failing or "database unavailable"
        if self._failing is None:
            log.warning("immunity store %s: cannot write (%s); %d records kept for retry", self.path, reason,
                        len(rows))
        self._failing = reason

    def _write_one(self, item: tuple[str, dict[str, Any]]) -> bool:
        """Write one record alone; ``False`` if the database as a whole is failing."""
        table, row = item
        for attempt in (row, sanitise(row)):
            try:
                self._commit([(table, attempt)])
                return True
            except Exception as exc:
                if _transient(exc):
                    return False
                err = exc
        log.warning("immunity store %s: a %s record of run %s cannot be stored: %s", self.path, table,
                    row.get("run_id"), err)
        report = {"run_id": sanitise(row.get("run_id")), "plugin": "immunity.store", "hook": f"save:{table}",
                  "error": sanitise(f"{type(err).__name__}: {err}")[:2000], "ts": time.time()}
        try:
            self._commit([("plugin_errors", report)])
        except Exception as exc:
            if _transient(exc):
                return False
            log.error("immunity store %s: cannot even report it: %s", self.path, exc)
        return True

    # ------------------------------------------------------------------ spill files
    def _spill_path(self) -> str:
        return f"{self.path}.spill.{os.getpid()}.{id(self):x}.jsonl"

    def _spill(self, table: str, record: Any, seq: int | None) -> None:
        """Append a record to this process's spill file (the queue is full or the store is
        closing with the database unavailable); the writer reads it back in order."""
        self._spill_rows(self._row_or_error(table, record, seq))

    def _spill_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        if self.path == ":memory:":
            with self._lock:  # nowhere to spill: keep in memory for the writer
                self._failed.extend(rows)
            return
        with self._spill_lock:
            try:
                if self._spill_fh is None:
                    self._spill_fh = open(self._spill_path(), "a+", encoding="utf-8")  # noqa: SIM115
                    _try_lock(self._spill_fh)
                    self._spill_pos = 0
                    log.warning("immunity store %s: the write queue is full; spilling to %s", self.path,
                                self._spill_fh.name)
                self._spill_fh.seek(0, os.SEEK_END)
                for table, row in rows:
                    self._spill_fh.write(json.dumps({"table": table, "row": row}, default=str) + "\n")
                self._spill_fh.flush()
                self._spilling = True
                self.spilled += len(rows)
            except OSError as exc:
                self.lost += len(rows)
                log.error("immunity store %s: %d records could neither be written nor spilled (%s): lost",
                          self.path, len(rows), exc)

    def _read_back_own_spill(self) -> None:
        """Write what this process spilled, in order, in chunks; stop spilling once caught up."""
        with self._spill_lock:
            fh = self._spill_fh
            if fh is None:
                self._spilling = False
                return
            fh.seek(self._spill_pos)
            lines = [fh.readline() for _ in range(self.CHUNK)]
            lines = [ln for ln in lines if ln]
            pos = fh.tell()
        rows = self._parse_spill(lines, fh.name)
        self._write(rows)
        if self._failed:
            return  # the database is failing again: the rows are held, the file position moves on
        with self._spill_lock:
            self._spill_pos = pos
            fh.seek(0, os.SEEK_END)
            if fh.tell() == pos:  # caught up: later records go to the queue again
                fh.seek(0)
                fh.truncate()
                self._spill_pos = 0
                self._spilling = False

    @staticmethod
    def _parse_spill(lines: list[str], name: str) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        for ln in lines:
            try:
                d = json.loads(ln)
                rows.append((str(d["table"]), dict(d["row"])))
            except (ValueError, KeyError, TypeError):
                log.warning("immunity store: skipping a damaged line in %s", name)
        return rows

    def spill_files(self) -> list[str]:
        """Spill files of this database that no live process owns (what the next open reads back)."""
        base = os.path.basename(self.path)
        folder = os.path.dirname(os.path.abspath(self.path))
        own = self._spill_fh.name if self._spill_fh is not None else None
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                      if (f.startswith(base + ".spill.") and f.endswith(".jsonl") or f == base + ".unsaved.jsonl")
                      and os.path.join(folder, f) != own)

    def read_back_spills(self, paths: Iterable[str] | None = None) -> int:
        """Write the records of spill files (left by a process that could not reach the database,
        or was killed while spilling) into the store, in chunks of :attr:`CHUNK`, and delete each
        file once written. A file another live process still owns is left alone. Returns the
        number of records read back."""
        total = 0
        for name in list(paths) if paths is not None else self.spill_files():
            try:
                fh = open(name, "r+", encoding="utf-8")  # noqa: SIM115
            except OSError:
                continue
            with fh:
                if not _try_lock(fh):
                    continue  # its process is alive and still spilling
                while True:
                    lines = [ln for ln in (fh.readline() for _ in range(self.CHUNK)) if ln]
                    if not lines:
                        break
                    self._write(self._parse_spill(lines, name))
                    if self._failed:
                        log.warning("immunity store %s: cannot read back %s yet (%s)", self.path, name,
                                    self._failing)
                        self._failed = []
                        return total
                    total += len(lines)
                os.unlink(name)
            log.warning("immunity store %s: read back %d records from %s", self.path, total, name)
        return total

    # ------------------------------------------------------------------ writes, continued
    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows. Core tables' columns are known, so their rows go straight to one
        ``executemany`` (sqlite-utils' per-call schema introspection costs more than the insert);
        a row with a new column, or a plugin's table, goes through sqlite-utils with ``alter=True``."""
        pk = _PKS.get(table)
        if table in _CORE_TABLES:
            cols = self._columns.get(table)
            if cols is None:
                cols = self._columns[table] = [r[1] for r in self.db.conn.execute(f"PRAGMA table_info([{table}])")]
            if set(cols).issuperset(itertools.chain.from_iterable(rows)):  # every row's keys are columns
                self._insert_many(table, cols, pk is not None, rows)
                return
            self._columns.pop(table, None)  # a new column: sqlite-utils adds it
        kw: dict[str, Any] = {"pk": pk, "replace": True} if pk is not None else {}
        self.db.table(table).insert_all(rows, alter=True, **kw)

    #: Rows per multi-row ``INSERT`` statement (fewer if the columns would pass SQLite's variable limit).
    ROWS_PER_STATEMENT = 256

    def _insert_many(self, table: str, cols: list[str], replace: bool, rows: list[dict[str, Any]]) -> None:
        """Rows as multi-row ``INSERT ... VALUES (...), (...)`` statements: SQLite does a whole
        statement's work without the interpreter lock (``executemany`` takes it back after every
        row, and then waits for the agent's thread to let go of it each time)."""
        conn = self.db.conn
        per = max(1, min(self.ROWS_PER_STATEMENT, self._max_vars // len(cols)))
        head = f"{'INSERT OR REPLACE' if replace else 'INSERT'} INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) VALUES "
        one = "(" + ", ".join("?" * len(cols)) + ")"
        values = operator.itemgetter(*cols) if len(cols) > 1 else None
        for i in range(0, len(rows), per):
            part = rows[i:i + per]
            try:  # the usual case, every column in every row: the values are gathered in C
                params: list[Any] = list(itertools.chain.from_iterable(map(values, part))) if values else []
            except KeyError:
                params = []
            if len(params) != len(part) * len(cols):
                params = [r.get(c) for r in part for c in cols]
            conn.execute(head + ", ".join([one] * len(part)), params)

    #: Per-run tables a whole-run write replaces, besides ``runs`` and ``steps``.
    RELATED_TABLES: tuple[str, ...] = ("events", "verdicts", "interventions", "recoveries", "checkpoints",
                                       "plugin_errors")

    def write_run(self, run: Run, steps: Iterable[Step], events: Iterable[Event] = (),
                  related: dict[str, Iterable[Any]] | None = None) -> None:
        """Replace everything stored about ``run`` (its steps, events and, in ``related``, its
        verdicts, interventions, recoveries, checkpoints and plugin errors) in one transaction:
        nothing is half-written (used by importers)."""
        related = dict(related or {})
        related.setdefault("events", events)
        rows: list[tuple[str, dict[str, Any]]] = [("runs", to_row("runs", run, self.redactor))]
        rows += [("steps", to_row("steps", s, self.redactor)) for s in steps]
        for i, ev in enumerate(related.get("events", ()), 1):
            r = to_row("events", ev, self.redactor, message_refs=True)
            r["seq"] = i
            rows += [(t, m) for t, m in self._split("events", r) if t == "messages"] + [("events", r)]
        for table in self.RELATED_TABLES[1:]:
            for rec in related.get(table, ()):
                r = to_row(table, rec, self.redactor)
                r.pop("id", None)
                r["run_id"] = run.run_id
                rows.append((table, r))
        groups: dict[str, list[dict[str, Any]]] = {}
        for table, row in rows:
            groups.setdefault(table, []).append(row)
        self.flush()
        with self.transaction(flush=False):
            existing = set(self.db.table_names())
            for table in ("steps", *self.RELATED_TABLES):
                if table in existing:
                    self.db.execute(f"DELETE FROM [{table}] WHERE run_id = ?", [run.run_id])
            for table, batch in groups.items():
                self._insert(table, batch)
        with self._seq_lock:
            self._seq.pop(run.run_id, None)

    @contextlib.contextmanager
    def transaction(self, *, flush: bool = True) -> Iterator[sqlite_utils.Database]:
        """A ``BEGIN IMMEDIATE`` transaction on the store's connection, for a plugin's own tables:
        the block runs alone and atomically; with ``flush`` (the default) everything queued is
        written first, which a plugin whose tables do not depend on queued rows can skip."""
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        if flush:
            self.flush()
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:  # nested: sqlite-utils' savepoint
                with self.db.atomic():
                    yield self.db
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait (at most ``timeout`` seconds) until everything queued or spilled is committed;
        ``True`` if it is."""
        if self.read_only:
            return True
        deadline = time.monotonic() + timeout
        q = self._queue
        if self._lock.acquire(blocking=False):  # inside this thread's own transaction: nothing can be written
            try:
                if self.db.conn.in_transaction:
                    return False
            finally:
                self._lock.release()
        # the caller writes what is queued itself, in order (no hand-over to the writer thread and
        # back); if the writer is busy with a batch, that batch goes first
        with self._flushes_lock:
            self._flushes += 1
            self._hurry.set()
        try:
            n = len(q)
            if not self._drain.acquire(timeout=max(timeout, 0.0)):
                return False
            try:
                while n > 0 and q.items and not self._failed:
                    self._drain_batch(min(n, self.CHUNK * 4))
                    n -= self.CHUNK * 4
                self._flushed += 1
            finally:
                self._drain.release()
        finally:
            # what this flush waited for is written: a hurry left set would make the writer write
            # the next record (the next run's start) alone, at once, in a commit of its own
            with self._flushes_lock:
                self._flushes -= 1
                if not self._flushes:
                    self._hurry.clear()
        while self._spilling or self._failed:
            with self._lock:
                if self._failed:
                    self._write([])
                if self._failed:
                    return False
                if self._spilling:
                    self._read_back_own_spill()
            if time.monotonic() > deadline:
                return False
        return True

    def close(self) -> None:
        """Flush and close. Never raises for a database that cannot be written: what is left is
        appended to the spill file, which the next open reads back."""
        if self._closed:
            return
        self.flush(timeout=max(self.busy_timeout_s, 1.0) * 2)
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        if not self.read_only:
            with self._lock:
                if self._failed:
                    self._write([])
                if self._failed:
                    self._spill_rows(self._failed)
                    log.error("immunity store %s: %d records could not be written (%s); saved to a spill file "
                              "that the next open reads back", self.path, len(self._failed), self._failing)
                    self._failed = []
            with self._spill_lock:
                if self._spill_fh is not None:
                    self._spill_fh.seek(0, os.SEEK_END)
                    empty = self._spill_fh.tell() == self._spill_pos
                    name = self._spill_fh.name
                    if not empty and self._spill_pos:  # keep only what was not read back
                        self._spill_fh.seek(self._spill_pos)
                        rest = self._spill_fh.read()
                        self._spill_fh.seek(0)
                        self._spill_fh.truncate()
                        self._spill_fh.write(rest)
                    self._spill_fh.close()
                    self._spill_fh = None
                    if empty:
                        with contextlib.suppress(OSError):
                            os.unlink(name)
        if self.path != ":memory:":
            with contextlib.suppress(Exception):
                if self._reader is not self.db.conn:
                    self._reader.close()
            with contextlib.suppress(Exception):
                self.db.conn.close()

    # ------------------------------------------------------------------ reads
    def _rows(self, sql: str, params: Iterable[Any] = (), *, flush: bool = True) -> list[dict[str, Any]]:
        """Run a query on the reading connection (WAL: it never waits for the writer). With
        ``flush`` (the default) what this process queued is committed first, so it is seen."""
        if flush:
            self.flush()
        with self._rlock:
            cur = self._reader.execute(sql, list(params))
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def count(self, table: str) -> int:
        if table not in self.table_names():
            return 0
        return int(self._rows(f"select count(*) as n from [{table}]")[0]["n"])

    def table_names(self) -> list[str]:
        return [r["name"] for r in self._rows("select name from sqlite_master where type = 'table'", flush=False)]

    def events(self, run_id: str) -> list[Event]:
        out = []
        rows = self._rows("select * from events where run_id = ? order by seq", [run_id])
        bodies = [_loads(r.pop("body"), {}) for r in rows]
        wanted = sorted({h for b in bodies for h in b.get("message_refs") or ()})
        messages: dict[str, Any] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            for m in self._rows(f"select hash, body from messages where hash in ({', '.join('?' * len(part))})",
                                part, flush=False):
                messages[m["hash"]] = _loads(m["body"], {})
        for r, body in zip(rows, bodies, strict=True):
            r.pop("seq", None)
            refs = body.pop("message_refs", None)
            body.pop("messages_omitted", None)
            if refs is not None:
                body["messages"] = [messages.get(h, {"content": None, "missing": h}) for h in refs]
            out.append(Event(**{k: v for k, v in {**body, **r}.items() if v is not None}))
        return out

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.flush()
        with self.transaction(flush=False):
            self.db.table("runs").update(run_id, self.redactor.value(fields))


def open_store(location: str, pm: Any = None) -> Any:
    """Open a store from a location: a path or ``:memory:`` (SQLite), or ``scheme:rest`` for a store
    registered by a plugin under ``scheme``."""
    if location == ":memory:" or "://" not in location and not _has_scheme(location, pm):
        return SQLiteStore(location)
    scheme, _, rest = location.partition("://") if "://" in location else location.partition(":")
    factories = pm.registry("stores") if pm is not None else {"sqlite": SQLiteStore}
    if scheme not in factories:
        raise StoreError(f"no store registered for {scheme!r} (from {location!r}); installed: {sorted(factories)}")
    return factories[scheme](rest)


def _has_scheme(location: str, pm: Any) -> bool:
    if pm is None or ":" not in location or os.path.exists(location):
        return False
    scheme = location.split(":", 1)[0]
    return len(scheme) > 1 and scheme in pm.registry("stores")

