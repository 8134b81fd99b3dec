"""The SQLite store (sqlite-utils, WAL, ``Migrations``).

Writes from the hot path go into a queue that a background thread drains in batches, so a step
never waits for the disk. :meth:`SQLiteStore.flush` waits for the queue; :meth:`close` flushes, and
every open runtime is closed at interpreter exit, so nothing queued is lost at normal exit. If the
database cannot be written (locked for longer than the busy timeout, disk full), the batch is kept
and retried; what is still unwritten at close is appended to ``<db>.unsaved.jsonl`` rather than
dropped.

Core tables (plain plural nouns): ``runs``, ``events``, ``steps``, ``verdicts``, ``interventions``,
``recoveries``, ``checkpoints``, ``patterns``, ``plugin_errors``. A plugin's own tables carry its
name as a prefix (``bandit_arms``) and are created through :attr:`SQLiteStore.db`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

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


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str, ensure_ascii=False)


def _loads(value: Any, default: Any = None) -> Any:
    if value in (None, ""):
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


def to_row(table: str, record: Any, redactor: Any = None) -> dict[str, Any]:
    """A model (or dict) as a row of ``table``; with a ``redactor`` (see :mod:`immunity.redact`)
    every string in it is redacted before it is JSON-encoded."""
    if redactor is not None and getattr(redactor, "enabled", True):
        if isinstance(record, BaseModel):
            record = _Dumped(record, redactor)
        elif isinstance(record, dict):
            return dict(redactor.value(record))
    return _to_row(table, record)


class _Dumped:
    """A model whose ``model_dump`` returns the redacted dump (what :func:`_to_row` reads)."""

    def __init__(self, model: BaseModel, redactor: Any):
        self._model, self._redactor = model, redactor

    def model_dump(self, **kw: Any) -> dict[str, Any]:
        return dict(self._redactor.value(self._model.model_dump(**kw)))

    def model_dump_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _to_row(table: str, record: Any) -> dict[str, Any]:
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
        if d.get("messages"):
            d["messages"] = d["messages"][-50:]
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
                          "patterns", "plugin_errors", "idempotency"})
_PKS: dict[str, Any] = {"idempotency": "key", "runs": "run_id", "events": "event_id", "steps": ("run_id", "idx"), "interventions": "intervention_id",
        "recoveries": "recovery_id", "checkpoints": "checkpoint_id", "patterns": "pattern_id"}


class SQLiteStore:
    """The default store. ``SQLiteStore(":memory:")`` for tests; a path for real use."""

    def __init__(self, path: str = "immunity.db", *, background: bool = True, busy_timeout_ms: int = 5000,
                 linger_ms: float = 20.0):
        self.path = path
        self.linger_s = linger_ms / 1000.0
        #: the redaction stage every row goes through before it is written (a runtime replaces it
        #: with one built from its configuration and plugins; see :mod:`immunity.redact`)
        self.redactor: Any = default_redactor()
        self._lock = threading.RLock()
        self._seq: dict[str, int] = {}
        try:
            if path != ":memory:":
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, timeout=busy_timeout_ms / 1000)
            self.db = sqlite_utils.Database(conn)
            if path != ":memory:":
                self.db.enable_wal()
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            migrations.apply(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path!r}: {exc} (is it an immunity database? is it locked?)") from exc
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._failed: list[tuple[str, dict[str, Any]]] = []
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._writer, name=f"immunity-store:{path}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ writes
    def save(self, table: str, record: Any) -> None:
        """Queue a record for writing (returns at once; the row is built on the writer thread)."""
        if self._thread is None or self._closed:
            self._write([(table, self._row(table, record))])
        else:
            self._idle.clear()
            self._queue.put((table, record))

    def _row(self, table: str, record: Any) -> dict[str, Any]:
        row = to_row(table, record, self.redactor)
        if table == "events":
            run_id = row["run_id"]
            if run_id not in self._seq:  # a run resumed from an earlier process goes on numbering
                with self._lock:
                    last = self.db.execute("select max(seq) from events where run_id = ?", [run_id]).fetchone()
                self._seq[run_id] = int(last[0] or 0) if last else 0
            self._seq[run_id] = seq = self._seq[run_id] + 1
            row["seq"] = seq
        return row

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            batch = [] if item is None else [item]
            stop = item is None
            if not stop and self.linger_s:
                # let a batch build up instead of waking for every record: fewer wake-ups, less
                # contention with the agent's thread for the interpreter
                time.sleep(self.linger_s)
            while not stop:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                rows = []
                for table, record in batch:
                    for _attempt in range(3):
                        try:
                            rows.append((table, self._row(table, record)))
                            break
                        except RuntimeError:  # mutated by the agent's thread while being read: retry
                            continue
                        except Exception as exc:  # a record that cannot be stored is reported, not fatal
                            log.warning("immunity store: cannot store a %s record: %s", table, exc)
                            break
                self._write(rows)
            if self._queue.empty():
                self._idle.set()
            if stop:
                return

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        batch = self._failed + batch
        self._failed = []
        groups: dict[str, list[dict[str, Any]]] = {}
        for table, row in batch:
            groups.setdefault(table, []).append(row)
        try:
            with self._lock, self.db.atomic():
                for table, rows in groups.items():
                    self._insert(table, rows)
        except sqlite3.Error as exc:
            log.warning("immunity store %s: write of %d records failed (%s); will retry", self.path, len(batch), exc)
            self._failed = batch

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows; core tables' columns are known, so sqlite-utils' per-call schema check
        (``alter=True``) is only paid when a row brings a new column or the table is a plugin's."""
        pk = _PKS.get(table)
        kw: dict[str, Any] = {"pk": pk, "replace": True} if pk is not None else {}
        if table in _CORE_TABLES:
            try:
                self.db.table(table).insert_all(rows, **kw)
                return
            except sqlite3.OperationalError as exc:
                if "no column" not in str(exc) and "has no column" not in str(exc):
                    raise
        self.db.table(table).insert_all(rows, alter=True, **kw)

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
            r = to_row("events", ev, self.redactor)
            r["seq"] = i
            rows.append(("events", r))
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
        with self._lock, self.db.atomic():
            existing = set(self.db.table_names())
            for table in ("steps", *self.RELATED_TABLES):
                if table in existing:
                    self.db.execute(f"DELETE FROM [{table}] WHERE run_id = ?", [run.run_id])
            for table, batch in groups.items():
                self._insert(table, batch)

    @contextlib.contextmanager
    def transaction(self, *, flush: bool = True) -> Iterator[sqlite_utils.Database]:
        """A transaction on the store's connection, for a plugin's own tables: the block runs alone
        and atomically; with ``flush`` (the default) everything queued is written first, which a
        plugin whose tables do not depend on queued rows can skip."""
        if flush:
            self.flush()
        with self._lock, self.db.atomic():
            yield self.db

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued is written."""
        if self._thread is not None and self._thread.is_alive():
            self._idle.wait(timeout)
        if self._failed:
            self._write([])

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        if self._failed:
            self._write([])
        if self._failed and self.path != ":memory:":
            spill = self.path + ".unsaved.jsonl"
            with open(spill, "a", encoding="utf-8") as fh:
                for table, row in self._failed:
                    fh.write(json.dumps({"table": table, "row": row}, default=str) + "\n")
            log.error("immunity store %s: %d records could not be written; saved to %s", self.path,
                      len(self._failed), spill)
        if self.path != ":memory:":
            self.db.conn.close()

    # ------------------------------------------------------------------ reads
    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        self.flush()
        with self._lock:
            cur = self.db.execute(sql, list(params))
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def runs(self, *, limit: int | None = 50, outcome: str | None = None, domain: str | None = None,
             source: str | None = None) -> list[Run]:
        where, params = [], []
        for col, val in (("outcome", outcome), ("domain", domain), ("source", source)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "select * from runs" + (" where " + " and ".join(where) if where else "") + " order by started_at desc"
        if limit:
            sql += f" limit {int(limit)}"
        return [self._run(r) for r in self._rows(sql, params)]

    def iter_runs(self, **filters: Any) -> Iterator[Run]:
        yield from self.runs(limit=None, **filters)

    def count(self, table: str) -> int:
        self.flush()
        with self._lock:
            return self.db.table(table).count

    @staticmethod
    def _run(r: dict[str, Any]) -> Run:
        r = dict(r)
        r["metadata"] = _loads(r.get("metadata"), {})
        return Run(**{k: v for k, v in r.items() if v is not None or k == "failure_step"})

    def get_run(self, run_id: str) -> Run | None:
        rows = self._rows("select * from runs where run_id = ?", [run_id])
        if not rows:
            rows = self._rows("select * from runs where run_id like ? order by started_at desc limit 2", [run_id + "%"])
            if len(rows) != 1:
                return None
        return self._run(rows[0])

    def steps(self, run_id: str) -> list[Step]:
        out = []
        for r in self._rows("select * from steps where run_id = ? order by idx", [run_id]):
            r["index"] = r.pop("idx")
            r["arguments"] = _loads(r["arguments"])
            r["data"] = _loads(r["data"], {})
            r["side_effect"] = bool(r["side_effect"])
            out.append(Step(**{k: v for k, v in r.items() if v is not None}))
        return out

    def events(self, run_id: str) -> list[Event]:
        out = []
        for r in self._rows("select * from events where run_id = ? order by seq", [run_id]):
            body = _loads(r.pop("body"), {})
            r.pop("seq", None)
            out.append(Event(**{k: v for k, v in {**body, **r}.items() if v is not None}))
        return out

    def verdicts(self, run_id: str) -> list[Verdict]:
        out = []
        for r in self._rows("select * from verdicts where run_id = ? order by id", [run_id]):
            r.pop("id", None)
            r["evidence"] = _loads(r["evidence"], {})
            r["ok"], r["block"] = bool(r["ok"]), bool(r["block"])
            out.append(Verdict(**{k: v for k, v in r.items() if v is not None}))
        return out

    def interventions(self, run_id: str | None = None) -> list[Intervention]:
        sql, params = "select * from interventions", []
        if run_id:
            sql, params = sql + " where run_id = ?", [run_id]
        out = []
        for r in self._rows(sql + " order by ts", params):
            r["arguments"] = _loads(r["arguments"])
            r["delivered"] = bool(r["delivered"])
            out.append(Intervention(**{k: v for k, v in r.items() if v is not None}))
        return out

    def recoveries(self, run_id: str) -> list[Recovery]:
        return [Recovery(**{k: v for k, v in r.items() if v is not None})
                for r in self._rows("select * from recoveries where run_id = ? order by ts", [run_id])]

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        out = []
        for r in self._rows("select * from checkpoints where run_id = ? order by ts", [run_id]):
            r["ref"] = _loads(r["ref"], {})
            r["verified"] = bool(r["verified"])
            out.append(Checkpoint(**r))
        return out

    def plugin_errors(self, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if run_id:
            return self._rows("select * from plugin_errors where run_id = ? order by id", [run_id])
        return self._rows(f"select * from plugin_errors order by id desc limit {int(limit)}")

    def patterns(self, pack: str | None = None) -> list[FailurePattern]:
        sql, params = "select body from patterns", []
        if pack:
            sql, params = sql + " where pack = ?", [pack]
        return [FailurePattern.model_validate_json(r["body"]) for r in self._rows(sql, params)]

    def idempotent_result(self, key: str) -> str | None:
        rows = self._rows("select result from idempotency where key = ? and run_id is not null", [key])
        return rows[0]["result"] if rows else None

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.flush()
        with self._lock, self.db.conn:
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

