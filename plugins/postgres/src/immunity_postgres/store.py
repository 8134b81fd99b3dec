"""The PostgreSQL store: the SQLite store's protocol (``save``, ``write_run``, the reads,
``transaction``, ``flush``, ``close``) on psycopg 3 with a connection pool.

Writes from the hot path go into a bounded in-memory queue that one background thread drains in
batches (one transaction per batch, ``INSERT ... ON CONFLICT DO UPDATE`` on the primary key, so a
batch written twice changes nothing). When PostgreSQL is down or restarting, the writer keeps its
batch and retries with back-off; the agent goes on. When the queue is full, records are appended to
a spill file on local disk (JSON Lines, data only) and replayed, in order, once the server is back.
Records still unwritten at ``close`` are spilled too, and the next store opened on the same
database replays spill files that no live process owns. A record the server rejects (a value it
cannot hold) is logged and skipped, never retried forever.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from immunity.errors import StoreError
from immunity.models import Event, Run, Step
from immunity.redact import default_redactor
from immunity.store import StoreReads, to_row
from immunity.store import _loads as _loads  # the same JSON reading as core's store
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from immunity_postgres.schema import GENERATED, PKS, TABLES, migrate

log = logging.getLogger("immunity.postgres")

__all__ = ["PostgresStore", "redact"]

#: Errors that mean "the server cannot be reached right now": keep the records and retry.
_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

#: Advisory lock key for plugin transactions (the bandit's counts): they run one at a time.
TRANSACTION_LOCK = 0x696D6D2D74786E

#: Spill files of the stores open in this process (not to be replayed by another store here).
_LIVE_SPILLS: set[str] = set()


def redact(dsn: str) -> str:
    """The DSN without its password (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", dsn))


def _clean(value: Any) -> Any:
    """A value PostgreSQL accepts: NUL characters escaped, nested data as JSON text, bools as 0/1."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000") if "\x00" in value else value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False).replace("\\u0000", "\\\\u0000")
    return value


def _pg_type(value: Any) -> str:
    if isinstance(value, bool | int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    return "text"


def _unreachable(exc: BaseException) -> bool:
    """A connection error that says the server is not there right now (refused, timed out, starting
    up or shutting down), as opposed to a wrong database, user or password."""
    text = str(exc).lower()
    return any(s in text for s in ("connection refused", "timeout expired", "timed out", "starting up",
                                   "shutting down", "no such file or directory", "server closed the connection",
                                   "could not receive data", "connection reset"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Cursor:
    """What :meth:`PgDatabase.execute` returns outside a transaction: the rows already read."""

    def __init__(self, rows: list[tuple[Any, ...]], description: Any):
        self._rows = rows
        self.description = description

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


class PgDatabase:
    """The part of sqlite-utils' ``Database`` that plugins use for their own tables
    (``execute(sql, params)`` and ``table_names()``), on PostgreSQL.

    Statements are written for SQLite (``?`` parameters, ``[name]`` quoting, ``insert or ignore`` /
    ``insert or replace``) and translated; inside :meth:`PostgresStore.transaction` they run on
    that transaction's connection."""

    def __init__(self, store: PostgresStore):
        self.store = store
        self._local = threading.local()
        self._pks: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ translation
    def translate(self, statement: str) -> str:
        s = statement.replace("%", "%%").replace("?", "%s")
        s = re.sub(r"\[([A-Za-z_][A-Za-z0-9_]*)\]", r'"\1"', s)
        m = re.match(r'\s*insert\s+or\s+(ignore|replace)\s+into\s+("?[A-Za-z_][A-Za-z0-9_]*"?)\s*\(([^)]*)\)',
                     s, re.IGNORECASE)
        if m:
            verb, table, cols = m.group(1).lower(), m.group(2), m.group(3)
            s = "insert into " + s[m.end(1):].split("into", 1)[1]
            if verb == "ignore":
                s += " on conflict do nothing"
            else:
                pk = self._pk(table.strip('"'))
                names = [c.strip() for c in cols.split(",")]
                sets = ", ".join(f"{c} = excluded.{c}" for c in names if c.strip('"') not in pk)
                target = ", ".join(f'"{c}"' for c in pk)
                s += f" on conflict ({target}) do " + (f"update set {sets}" if sets else "nothing")
        m = re.match(r'\s*insert\s+into\s+("?[A-Za-z_][A-Za-z0-9_]*"?)', s, re.IGNORECASE)
        if m and re.search(r"on\s+conflict", s, re.IGNORECASE):
            # SQLite reads ``n = n + 1`` in an upsert as the stored row's n; PostgreSQL wants it named
            table = m.group(1) if m.group(1).startswith('"') else f'"{m.group(1)}"'
            parts = re.split(r"(do\s+update\s+set)", s, maxsplit=1, flags=re.IGNORECASE)
            if len(parts) == 3:
                parts[2] = re.sub(r'("?)([A-Za-z_][A-Za-z0-9_]*)\1\s*=\s*\1\2\1(\s*[-+])',
                                  rf"\1\2\1 = {table}.\1\2\1\3", parts[2])
                s = "".join(parts)
        return s

    def _pk(self, table: str) -> list[str]:
        if table not in self._pks:
            rows = self.store._query(
                "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
                "and a.attnum = any(i.indkey) where i.indrelid = to_regclass(%s) and i.indisprimary",
                [f'"{table}"'], flush=False)
            self._pks[table] = [r[0] for r in rows]
        return self._pks[table]

    # ------------------------------------------------------------------ statements
    def execute(self, statement: str, params: Iterable[Any] | None = None) -> Any:
        text = self.translate(statement)
        args = [_clean(p) for p in params] if params is not None else None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn.execute(text, args)  # type: ignore[arg-type]
        with self.store.pool.connection() as conn:
            cur = conn.execute(text, args)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description is not None else []
            return _Cursor(rows, cur.description)

    def table_names(self) -> list[str]:
        return [r[0] for r in self.store._query(
            "select table_name from information_schema.tables where table_schema = current_schema()", flush=False)]


class PostgresStore(StoreReads):
    """``PostgresStore("postgresql://user@host/db")``; ``immunity ... --store postgresql://...``.

    ``queue_max`` bounds the records held in memory while the server cannot be reached; past it they
    go to a spill file in ``spill_dir`` (``$IMMUNITY_SPILL_DIR``, default
    ``~/.cache/immunity/spill``)."""

    _ph = "%s"  # psycopg's placeholder for the shared reads (immunity.store.StoreReads)

    RELATED_TABLES: tuple[str, ...] = ("events", "verdicts", "interventions", "recoveries", "checkpoints",
                                       "plugin_errors")

    def __init__(self, dsn: str, *, background: bool = True, pool_size: int = 4, queue_max: int = 10_000,
                 batch_max: int = 2000, linger_ms: float = 20.0, spill_dir: str | None = None,
                 connect_timeout: float = 5.0, retry_max_s: float = 2.0, close_timeout: float = 5.0):
        self.dsn = dsn
        self.path = redact(dsn)  # what messages and the CLI show
        self.linger_s = linger_ms / 1000.0
        self.batch_max = batch_max
        self.retry_max_s = retry_max_s
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._columns: dict[str, set[str]] = {}
        self._ready = False  # migrations applied and columns read
        self.down_since: float | None = None
        try:
            with psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout)), autocommit=True) as conn:
                self._prepare(conn)
        except psycopg.Error as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not (background and _unreachable(exc)):
                raise StoreError(f"cannot open the PostgreSQL store {self.path}: {msg} (is the server running, the "
                                 "database created, and may this user create tables in it?)") from exc
            # a server that is down or restarting (not a wrong database or password): the agent
            # goes on, records queue (then spill) and land when it is back
            self.down_since = time.time()
            log.error("immunity store %s: the server cannot be reached (%s); records are kept and written when "
                      "it is back", self.path, msg)
        self.pool = ConnectionPool(dsn, min_size=1, max_size=max(1, pool_size), open=False, name="immunity",
                                   kwargs={"connect_timeout": max(1, int(connect_timeout))},
                                   check=ConnectionPool.check_connection, reconnect_timeout=24 * 3600.0)
        self.pool.open(wait=False)
        self.db = PgDatabase(self)
        #: Masks secrets in every row before it is written (the runtime sets its own).
        self.redactor: Any = default_redactor()
        self._wconn: Any = None
        self._seq: dict[str, int] = {}
        self._lock = threading.RLock()  # one writer at a time on this store's tables
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=max(1, queue_max))
        self._pending: list[tuple[str, Any]] = []  # taken from the queue, not yet written
        self._closed = False
        self._gave_up = False
        self._cond = threading.Condition()
        self._outstanding = 0  # saved, not yet written (queued, in the writer's hands or spilled)
        self._own_replays: set[str] = set()
        self.spilled = 0
        self.replayed = 0
        self.rejected = 0
        # spill: records the queue had no room for, in order; replayed when the queue is empty
        tag = hashlib.sha1(dsn.encode()).hexdigest()[:12]
        self.spill_dir = spill_dir or os.environ.get("IMMUNITY_SPILL_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "immunity", "spill")
        self._spill_glob = os.path.join(self.spill_dir, f"pg-{tag}-*.jsonl")
        self.spill_path = os.path.join(self.spill_dir, f"pg-{tag}-{os.getpid()}-{id(self):x}.jsonl")
        self._spill_lock = threading.Lock()
        self._spilling = False
        _LIVE_SPILLS.add(self.spill_path)
        self._claimed: list[str] = self._claim_orphans()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._writer, name=f"immunity-store:{self.path}", daemon=True)
            self._thread.start()
        elif self._claimed:
            self._replay_claimed()

    @classmethod
    def from_location(cls, rest: str) -> PostgresStore:
        """The factory registered for ``postgresql://`` and ``postgres://`` (``rest`` is what follows)."""
        return cls("postgresql://" + rest)

    def _prepare(self, conn: Any) -> None:
        """Apply the migrations and learn the tables' columns (once, on the first connection)."""
        if not self._ready:
            migrate(conn)
            self._columns = self._read_columns(conn)
            self._ready = True

    def _ensure_ready(self) -> None:
        if not self._ready:
            with self.pool.connection(timeout=self.connect_timeout) as conn:
                self._prepare(conn)

    @staticmethod
    def _read_columns(conn: Any) -> dict[str, set[str]]:
        cols: dict[str, set[str]] = {}
        for table, col in conn.execute("select table_name, column_name from information_schema.columns "
                                       "where table_schema = current_schema()").fetchall():
            cols.setdefault(table, set()).add(col)
        return cols

    # ------------------------------------------------------------------ writes
    def save(self, table: str, record: Any) -> None:
        """Queue a record for writing (returns at once; never blocks on the server)."""
        if self._thread is None or self._closed:
            self._write_with_retry([(table, record)], give_up_after=self.connect_timeout)
            return
        with self._cond:
            self._outstanding += 1
        with self._spill_lock:
            if not self._spilling:
                try:
                    self._queue.put_nowait((table, record))
                    return
                except queue.Full:
                    self._spilling = True
                    log.warning("immunity store %s: %d records queued (the server is down or slower than "
                                "the agent); spilling to %s", self.path, self._queue.maxsize, self.spill_path)
            if not self._spill([(table, record)]):
                self._done(1)

    def _done(self, n: int) -> None:
        with self._cond:
            self._outstanding -= n
            if self._outstanding <= 0:
                self._cond.notify_all()

    def _spill(self, items: list[tuple[str, Any]]) -> int:
        """Append records (as rows: data only) to this process's spill file; returns how many."""
        n = 0
        os.makedirs(self.spill_dir, exist_ok=True)
        with open(self.spill_path, "a", encoding="utf-8") as fh:
            for table, record in items:
                try:
                    row = record if isinstance(record, dict) and table not in TABLES else to_row(table, record, self.redactor)
                    fh.write(json.dumps({"table": table, "row": row}, default=str) + "\n")
                    self.spilled += 1
                    n += 1
                except Exception as exc:  # a record that cannot be stored at all
                    log.warning("immunity store: cannot spill a %s record: %s", table, exc)
        return n

    def _claim_orphans(self) -> list[str]:
        """Spill files left by processes that are gone (same database): renamed to ours to replay."""
        claimed = []
        for path in sorted(glob.glob(self._spill_glob)):
            parts = os.path.basename(path).split("-")
            try:
                pid = int(parts[2])
            except (IndexError, ValueError):
                continue
            if path in _LIVE_SPILLS or (pid != os.getpid() and _pid_alive(pid)):
                continue
            mine = f"{path}.replay-{os.getpid()}"
            try:
                os.rename(path, mine)
            except OSError:  # another process claimed it first
                continue
            claimed.append(mine)
        for path in sorted(glob.glob(self._spill_glob.replace("*.jsonl", "*.jsonl.replay-*"))):
            pid = int(path.rsplit("-", 1)[1]) if path.rsplit("-", 1)[1].isdigit() else 0
            if pid and pid != os.getpid() and not _pid_alive(pid) and path not in claimed:
                mine = path.rsplit(".replay-", 1)[0] + f".replay-{os.getpid()}"
                with contextlib.suppress(OSError):
                    os.rename(path, mine)
                    claimed.append(mine)
        if claimed:
            log.warning("immunity store %s: replaying %d spill file(s) left by earlier processes", self.path,
                        len(claimed))
        return claimed

    def _writer(self) -> None:
        if self._claimed:
            self._replay_claimed()
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._spilling:
                    self._replay_spill()
                continue
            stop = item is None
            batch: list[Any] = [] if stop else [item]
            if not stop and self.linger_s:
                time.sleep(self.linger_s)  # let a batch build up instead of waking for every record
            while not stop and len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                self._write_with_retry(batch, give_up_after=None)
                self._done(len(batch))
            if stop:
                return

    def _replay_spill(self) -> None:
        with self._spill_lock:
            if not os.path.exists(self.spill_path):
                self._spilling = False
                return
            replay = f"{self.spill_path}.replay-{os.getpid()}"
            os.replace(self.spill_path, replay)
            self._spilling = False
        self._claimed.append(replay)
        self._own_replays.add(replay)
        self._replay_claimed()

    def _replay_claimed(self) -> None:
        while self._claimed:
            path = self._claimed[0]
            items: list[tuple[str, Any]] = []
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        items.append((str(rec["table"]), dict(rec["row"])))
                    except (ValueError, KeyError, TypeError):  # a torn last line from a crash
                        log.warning("immunity store: skipping an unreadable spill line in %s", path)
            for i in range(0, len(items), self.batch_max):
                if not self._write_with_retry(items[i:i + self.batch_max], give_up_after=None,
                                              rows_ready=True):
                    return  # closing while the server is down: the file stays for the next process
                self.replayed += len(items[i:i + self.batch_max])
                if path in self._own_replays:
                    self._done(len(items[i:i + self.batch_max]))
            self._own_replays.discard(path)
            os.remove(path)
            self._claimed.pop(0)

    def _write_with_retry(self, batch: list[tuple[str, Any]], *, give_up_after: float | None,
                          rows_ready: bool = False) -> bool:
        """Write ``batch``, retrying while the server is down. Returns False (and spills the batch,
        unless it came from a spill file) if it gave up: when closing, or after ``give_up_after``."""
        self._pending = batch
        delay, started = 0.05, time.monotonic()
        while True:
            try:
                self._write(batch, rows_ready=rows_ready)
                self._pending = []
                if self.down_since is not None:
                    log.warning("immunity store %s: server back after %.1f s", self.path,
                                time.time() - self.down_since)
                    self.down_since = None
                return True
            except _DOWN as exc:
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("immunity store %s: server unreachable (%s); keeping %d records and retrying",
                                self.path, str(exc).strip().splitlines()[0] if str(exc).strip() else
                                type(exc).__name__, len(batch))
                waited = time.monotonic() - started
                if (give_up_after is not None and waited >= give_up_after) or (
                        self._closed and (self._gave_up or waited >= self.close_timeout)):
                    self._gave_up = self._closed
                    if not rows_ready:
                        self._spill(batch)
                        log.error("immunity store %s: %d records could not be written; saved to %s (replayed "
                                  "by the next store opened on this database)", self.path, len(batch),
                                  self.spill_path)
                    self._pending = []
                    return False
                time.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)

    # ------------------------------------------------------------------ the SQL
    def _rows_of(self, batch: list[tuple[str, Any]], rows_ready: bool) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        for table, record in batch:
            if rows_ready or (isinstance(record, dict) and table not in TABLES):
                rows.append((table, dict(record)))
                continue
            for _attempt in range(3):
                try:
                    rows.append((table, to_row(table, record, self.redactor)))
                    break
                except RuntimeError:  # mutated by the agent's thread while being read: retry
                    continue
                except Exception as exc:  # a record that cannot be stored is reported, not fatal
                    log.warning("immunity store: cannot store a %s record: %s", table, exc)
                    self.rejected += 1
                    break
        return rows

    def _write(self, batch: list[tuple[str, Any]], *, rows_ready: bool = False) -> None:
        rows = self._rows_of(batch, rows_ready)
        groups: dict[str, list[dict[str, Any]]] = {}
        for table, row in rows:
            groups.setdefault(table, []).append(row)
        seq_before = dict(self._seq)
        try:
            with self._lock:
                conn = self._writer_conn()
                try:
                    with conn.transaction():
                        self._insert_groups(conn, groups)
                except _DOWN:
                    raise
                except psycopg.Error as exc:  # one bad record: write the others one by one
                    self._seq = dict(seq_before)
                    log.warning("immunity store %s: a batch was refused (%s); writing its records one by one",
                                self.path, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                    self._write_one_by_one(conn, groups)
        except BaseException as exc:
            self._seq = seq_before  # rows are built again on the retry; numbers are given again
            if isinstance(exc, _DOWN) and self._wconn is not None:
                with contextlib.suppress(Exception):
                    self._wconn.close()
                self._wconn = None
            raise

    def _writer_conn(self) -> Any:
        """The writer's own connection (not the pool's: it reconnects at once when the server is
        back, where the pool's back-off may wait longer)."""
        if self._wconn is None or self._wconn.closed or self._wconn.broken:
            self._wconn = psycopg.connect(self.dsn, connect_timeout=max(1, int(self.connect_timeout)),
                                          autocommit=True)
        self._prepare(self._wconn)
        return self._wconn

    def _write_one_by_one(self, conn: Any, groups: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in groups.items():
            for row in rows:
                try:
                    with conn.transaction():
                        self._insert_groups(conn, {table: [row]})
                except _DOWN:
                    raise
                except psycopg.Error as exc:
                    self.rejected += 1
                    log.warning("immunity store %s: a %s record was refused and skipped: %s", self.path, table,
                                str(exc).strip().splitlines()[0] if str(exc).strip() else exc)

    def _insert_groups(self, conn: Any, groups: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in groups.items():
            if table == "events":
                self._number_events(conn, rows)
            self._insert(conn, table, rows)

    def _number_events(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row.get("seq") is not None:
                continue
            run_id: Any = row.get("run_id")
            if run_id not in self._seq:  # a run resumed from an earlier process goes on numbering
                last = conn.execute("select max(seq) from events where run_id = %s", [run_id]).fetchone()
                self._seq[run_id] = int(last[0] or 0) if last else 0
            self._seq[run_id] += 1
            row["seq"] = self._seq[run_id]

    def _ensure_columns(self, conn: Any, table: str, rows: list[dict[str, Any]]) -> list[str]:
        """The columns of ``rows``; a table or column not seen yet is created (a plugin's own table,
        a field a newer model brings)."""
        cols: list[str] = []
        sample: dict[str, Any] = {}
        for row in rows:
            for k, v in row.items():
                if k not in sample or sample[k] is None:
                    sample[k] = v
                if k not in cols:
                    cols.append(k)
        gen = GENERATED.get(table)
        if gen in cols:
            cols.remove(gen)
        known = self._columns.get(table)
        if known is None:
            body = ", ".join(sql.Identifier(c).as_string(conn) + " " + _pg_type(sample[c]) for c in cols)
            conn.execute(f"create table if not exists {sql.Identifier(table).as_string(conn)} ({body})")
            self._columns[table] = set(cols)
        else:
            for c in [c for c in cols if c not in known]:
                conn.execute(sql.SQL("alter table {} add column if not exists {} " + _pg_type(sample[c])).format(
                    sql.Identifier(table), sql.Identifier(c)))
                known.add(c)
        return cols

    def _insert(self, conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
        cols = self._ensure_columns(conn, table, rows)
        pk = [c for c in PKS.get(table, ()) if c != GENERATED.get(table)]
        stmt = sql.SQL("insert into {} ({}) values ({})").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)))
        if pk:
            sets = [c for c in cols if c not in pk]
            stmt += sql.SQL(" on conflict ({}) do ").format(sql.SQL(", ").join(map(sql.Identifier, pk)))
            stmt += (sql.SQL("update set ") + sql.SQL(", ").join(
                sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in sets)
                if sets else sql.SQL("nothing"))
        if table in ("runs", "steps"):  # the last write of a key wins within a batch too
            last: dict[tuple[Any, ...], dict[str, Any]] = {}
            for row in rows:
                last[tuple(row.get(c) for c in pk)] = row
            rows = list(last.values())
        elif pk:
            seen: dict[tuple[Any, ...], dict[str, Any]] = {}
            for row in rows:
                seen[tuple(row.get(c) for c in pk)] = row
            rows = list(seen.values())
        with conn.cursor() as cur:
            cur.executemany(stmt, [[_clean(r.get(c)) for c in cols] for r in rows])

    def write_run(self, run: Run, steps: Iterable[Step], events: Iterable[Event] = (),
                  related: dict[str, Iterable[Any]] | None = None) -> None:
        """Replace everything stored about ``run`` (steps, events, verdicts, interventions,
        recoveries, checkpoints, plugin errors) in one transaction (used by importers)."""
        related = dict(related or {})
        related.setdefault("events", events)
        groups: dict[str, list[dict[str, Any]]] = {"runs": [to_row("runs", run, self.redactor)],
                                                   "steps": [to_row("steps", s, self.redactor) for s in steps]}
        evs = []
        for i, ev in enumerate(related.get("events", ()), 1):
            r = to_row("events", ev, self.redactor)
            r["seq"] = i
            evs.append(r)
        groups["events"] = evs
        for table in self.RELATED_TABLES[1:]:
            out = []
            for rec in related.get(table, ()):
                r = to_row(table, rec, self.redactor)
                r.pop("id", None)
                r["run_id"] = run.run_id
                out.append(r)
            groups[table] = out
        self.flush()
        try:
            self._ensure_ready()
            with self._lock, self.pool.connection(timeout=self.connect_timeout) as conn, conn.transaction():
                for table in ("steps", *self.RELATED_TABLES):
                    conn.execute(sql.SQL("delete from {} where run_id = %s").format(sql.Identifier(table)),
                                 [run.run_id])
                for table, rows in groups.items():
                    if rows:
                        self._insert(conn, table, rows)
            self._seq.pop(run.run_id, None)
        except psycopg.Error as exc:
            raise StoreError(f"cannot write run {run.run_id} to {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self, *, flush: bool = True) -> Iterator[PgDatabase]:
        """A transaction for a plugin's own tables (the bandit's counts): :attr:`db`'s statements in
        the block run on one connection, atomically, one such block at a time across every process
        on this database (an advisory lock), so concurrent read-modify-writes lose nothing."""
        if flush:
            self.flush()
        if getattr(self.db._local, "conn", None) is not None:  # nested: part of the outer one
            yield self.db
            return
        self._ensure_ready()
        with self.pool.connection(timeout=self.connect_timeout) as conn, conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", [TRANSACTION_LOCK])
            self.db._local.conn = conn
            try:
                yield self.db
            finally:
                self.db._local.conn = None

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything saved so far is written (queued and spilled records alike), or
        ``timeout`` passes; True if everything was written."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            with self._cond:
                return bool(self._cond.wait_for(lambda: self._outstanding <= 0 or not thread.is_alive(), timeout))
        return True

    @property
    def backlog(self) -> int:
        """Records not yet written: queued, in the writer's hands, or spilled."""
        return self._queue.qsize() + len(self._pending) + (self.spilled - self.replayed)

    def close(self) -> None:
        if self._closed:
            return
        self.flush(timeout=self.close_timeout if self.down_since is not None else 30.0)
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(None, timeout=10.0)
            except queue.Full:
                pass
            self._thread.join(timeout=self.close_timeout + 2 * self.connect_timeout + 5)
        # whatever is left (the server is still down): to disk, for the next process to replay
        left: list[tuple[str, Any]] = list(self._pending)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left.append(item)
        if left:
            self._spill(left)
            log.error("immunity store %s: %d records could not be written; saved to %s (replayed by the next "
                      "store opened on this database)", self.path, len(left), self.spill_path)
        if self._wconn is not None:
            with contextlib.suppress(Exception):
                self._wconn.close()
        self.pool.close()
        _LIVE_SPILLS.discard(self.spill_path)

    # ------------------------------------------------------------------ reads
    def _reachable(self) -> None:
        """Reads wait for queued writes, unless the server is known to be down: then they fail at
        once (the caller fails open) instead of holding the agent up."""
        if self.down_since is not None:
            raise StoreError(f"cannot read {self.path}: the server has been unreachable for "
                             f"{time.time() - self.down_since:.0f} s")
        self.flush()

    def _query(self, statement: str, params: Iterable[Any] = (), *, flush: bool = True) -> list[tuple[Any, ...]]:
        if flush:
            self._reachable()
        try:
            with self.pool.connection(timeout=self.connect_timeout) as conn:
                return conn.execute(statement, list(params)).fetchall()  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        except PoolTimeout as exc:
            raise StoreError(f"cannot read {self.path}: the server cannot be reached ({exc})") from exc

    def _rows(self, statement: str, params: Iterable[Any] = (), *, flush: bool = True) -> list[dict[str, Any]]:
        if flush:
            self._reachable()
        elif self.down_since is not None:  # never hold the hot path up for a server known to be down
            raise StoreError(f"cannot read {self.path}: the server is unreachable")
        try:
            with self.pool.connection(timeout=self.connect_timeout) as conn:
                cur = conn.execute(statement, list(params))  # type: ignore[arg-type]
                cols = [c.name for c in cur.description or []]
                return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        except psycopg.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        except PoolTimeout as exc:
            raise StoreError(f"cannot read {self.path}: the server cannot be reached ({exc})") from exc

    def count(self, table: str) -> int:
        rows = self._query(sql.SQL("select count(*) from {}").format(sql.Identifier(table)).as_string(None))
        return int(rows[0][0])

    def events(self, run_id: str) -> list[Event]:
        out = []
        for r in self._rows("select * from events where run_id = %s order by seq", [run_id]):
            body = _loads(r.pop("body"), {})
            r.pop("seq", None)
            out.append(Event(**{k: v for k, v in {**body, **r}.items() if v is not None and k in Event.model_fields}))
        return out

    def table_names(self) -> list[str]:
        return self.db.table_names()

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        self.flush()
        unknown = set(fields) - set(TABLES["runs"])
        if unknown:
            raise StoreError(f"runs has no column {sorted(unknown)}")
        stmt = sql.SQL("update runs set {} where run_id = %s").format(sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in fields))
        try:
            with self._lock, self.pool.connection(timeout=self.connect_timeout) as conn:
                conn.execute(stmt, [*(_clean(v) for v in self.redactor.value(fields).values()), run_id])
        except psycopg.Error as exc:
            raise StoreError(f"cannot update run {run_id} in {self.path}: {exc}") from exc
