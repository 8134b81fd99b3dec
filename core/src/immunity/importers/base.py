"""What every importer shares: the result types, reading files (plain or gzip, JSON or JSON Lines,
with line numbers and bad bytes reported), and building steps the way the runtime builds them.

An importer turns one source record into an :class:`ImportedRun` whose steps have everything but
their action mapping; :func:`map_steps` then asks the installed domain plugins (through
``Runtime.map_action``), exactly as a live run's ``tool_start`` / ``message`` would.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from immunity.domain import ActionMapping
from immunity.models import ActionType, Run, Step, now

#: Characters kept of a step's result, error and text: the same bounds the runtime applies live.
RESULT_LIMIT = 4000
ERROR_LIMIT = 2000
TEXT_LIMIT = 4000
#: Characters kept of a model's reasoning that came with a tool call (``step.data["thought"]``).
THOUGHT_LIMIT = 2000
#: Characters kept of a run's task.
TASK_LIMIT = 8000
#: How much of a file :func:`read_head` returns for format detection.
HEAD_BYTES = 64 * 1024
#: One JSON Lines record larger than this is skipped (reported), not parsed.
MAX_RECORD_BYTES = 64 * 2**20
#: A whole-file JSON document (a list of records) larger than this, uncompressed, is refused.
MAX_FILE_BYTES = 512 * 2**20


@dataclass
class ImportedRun:
    """One run read from a trace file: the run, its steps, and where it came from.

    ``source`` is the file; ``record`` says which record in it (``"line 17"``, ``"record 3
    (task_id=12)"``). ``warnings`` lists what was dropped or changed while reading this record
    (a message with an unknown role, a tool result with no matching call, bytes that are not
    UTF-8); the run is still imported, and the warnings are also kept in
    ``run.metadata["import_warnings"]``.
    """

    run: Run
    steps: list[Step]
    source: str
    record: str = ""
    warnings: list[str] = field(default_factory=list)
    #: True when the steps already carry their action mapping (immunity's own format): kept as read.
    mapped: bool = False
    #: Other records of the run to write with it (immunity's own format): ``events``, ``verdicts``,
    #: ``interventions``, ``recoveries``, ``checkpoints``, ``plugin_errors``.
    related: dict[str, list[Any]] = field(default_factory=dict)
    #: the domain :func:`map_steps` mapped every step with, through the same ``immunity_map_action``
    #: hooks a live run asks (``None``: not mapped by it); learning's feature pass reuses that mapping
    mapped_for: str | None = None
    #: read with ``iter_runs(..., mapping=False)``: the steps are not mapped yet, and this is what
    #: :func:`complete_mapping` still has to call after mapping (the importer's ``finish``, if any)
    pending: Callable[[ImportedRun], None] | None = field(default=None, repr=False, compare=False)
    unmapped: bool = False


@dataclass
class ImportProblem:
    """Something in a trace file that could not be read. ``skipped`` is True when the record was not
    imported at all, False when the record was imported without the part named in ``message``."""

    source: str
    record: str
    message: str
    skipped: bool = True

    def __str__(self) -> str:
        what = "skipped" if self.skipped else "imported with a warning"
        return f"{self.source}: {self.record}: {self.message} ({what})"


class Importer(Protocol):
    """What ``immunity_register_importers`` registers: a format name's reader."""

    name: str
    default_domain: str | None

    def detect(self, path: str, head: str) -> bool: ...

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]: ...


# ---------------------------------------------------------------------------------------------
# text helpers
# ---------------------------------------------------------------------------------------------


def clip(text: Any, limit: int) -> Any:
    """The runtime's bound on stored text: ``text[:limit]`` plus how much was cut."""
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


def as_text(value: Any) -> str | None:
    """Message content as plain text (OpenAI content may be a list of parts)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") not in (None, "text"):
                    parts.append(f"[{part.get('type')}]")
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return json.dumps(value, ensure_ascii=False, default=str)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def bounded(value: Any, limit: int = 2000, depth: int = 0) -> Any:
    """A JSON value with every string clipped and long lists cut, to keep raw content bounded."""
    if isinstance(value, str):
        return clip(value, limit)
    if depth > 8:
        return clip(json.dumps(value, default=str), limit)
    if isinstance(value, dict):
        return {str(k): bounded(v, limit, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, list):
        out = [bounded(v, limit, depth + 1) for v in value[:200]]
        if len(value) > 200:
            out.append(f"... [{len(value) - 200} more items]")
        return out
    return value


def stable_id(fmt: str, source: str, key: str) -> str:
    """A run id that is the same every time the same record of the same file is imported (so a
    second import is recognised as the same run, see ``--on-conflict``). The file's whole path is
    part of it: ``modelA/results.json`` and ``modelB/results.json`` are different runs."""
    where = os.path.normpath(os.path.abspath(source))
    digest = hashlib.blake2b(f"{fmt}|{where}|{key}".encode(), digest_size=8).hexdigest()
    return f"{fmt}-{digest}"


def parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Tool-call arguments as a dict, the way the runtime coerces them (``Event.arguments``).

    Returns ``(arguments, problem)``; a string that is not a JSON object becomes ``{"input": ...}``.
    """
    if raw is None:
        return None, None
    if isinstance(raw, dict):
        return raw, None
    if isinstance(raw, str):
        if not raw.strip():
            return {}, None
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            return {"input": raw}, f"arguments are not valid JSON ({exc}); kept as text"
        return (parsed if isinstance(parsed, dict) else {"input": parsed}), None
    return {"input": raw}, None


# ---------------------------------------------------------------------------------------------
# building steps and runs
# ---------------------------------------------------------------------------------------------


def tool_step(tool: str, arguments: dict[str, Any] | None, *, result: Any = None, error: str | None = None,
              return_code: int | None = None, agent: str | None = None, tool_call_id: str | None = None,
              thought: str | None = None, **data: Any) -> Step:
    """A step for one tool call and its result, bounded as the runtime bounds a live ``tool_end``.

    The unclipped result and error ride along in ``data["_raw_result"]`` / ``data["_raw_error"]``
    (keys starting with ``_`` are never stored) so :func:`immunity.importers.replay.replay` can
    feed the runtime exactly what the original tool returned.
    """
    result_text = None if result is None else str(result)
    step = Step(tool=tool, arguments=arguments, result=clip(result_text, RESULT_LIMIT),
                error=clip(error, ERROR_LIMIT), return_code=return_code, agent=agent)
    if tool_call_id:
        step.data["tool_call_id"] = tool_call_id
    if thought and thought.strip():
        step.data["thought"] = clip(thought.strip(), THOUGHT_LIMIT)
    if result_text is not None and len(result_text) > RESULT_LIMIT:
        step.data["_raw_result"] = result_text
        step.data["result_chars"] = len(result_text)
    if error is not None and len(error) > ERROR_LIMIT:
        step.data["_raw_error"] = error
    step.data.update({k: v for k, v in data.items() if v is not None})
    return step


def message_step(text: str, *, agent: str | None = None, **data: Any) -> Step:
    """A step for one message (no tool), bounded as the runtime bounds a live ``message``."""
    step = Step(tool=None, text=clip(text, TEXT_LIMIT), agent=agent)
    if len(text) > TEXT_LIMIT:
        step.data["_raw_text"] = text
        step.data["text_chars"] = len(text)
    step.data.update({k: v for k, v in data.items() if v is not None})
    return step


def new_run(fmt: str, source: str, record: str, *, run_id: str, framework: str | None = None,
            **fields: Any) -> Run:
    """A run for an imported record; ``run.source`` is the format, ``metadata["source"]`` the file
    and record."""
    task = fields.pop("task", None)
    meta = fields.pop("metadata", None) or {}
    run = Run(run_id=run_id, framework=framework or fmt, source=fmt, task=clip(task, TASK_LIMIT),
              status="finished", **fields)
    run.metadata.update(meta)
    run.metadata["source"] = {"format": fmt, "path": os.path.abspath(source), "record": record}
    return run


def apply_mapping(step: Step, mapping: ActionMapping) -> None:
    """Set a step's action fields from a mapping, as ``RunSession._new_step`` does."""
    step.action_type = mapping.action_type
    step.confidence = mapping.confidence
    step.side_effect = mapping.side_effect
    step.data["mapped_by"] = mapping.mapped_by
    if mapping.needs_verification:
        step.data["needs_verification"] = True
    if mapping.destructive:
        step.data["destructive"] = True


def map_steps(imported: ImportedRun, runtime: Any) -> None:
    """Give every step that has no mapping yet its action type through the installed domains (the
    same ``immunity_map_action`` hooks a live run asks); number the steps and time-stamp them in
    order. Steps that already carry ``data["mapped_by"]`` (immunity's own format) are kept."""
    run = imported.run
    if imported.mapped:
        return
    base = run.started_at
    for i, step in enumerate(imported.steps):
        step.run_id = run.run_id
        step.index = i
        if "mapped_by" not in step.data:
            if step.data.get("final"):
                apply_mapping(step, ActionMapping(ActionType.DONE, 1.0, mapped_by="final_answer"))
            else:
                mapping = runtime.map_action(step.tool, step.arguments, None if step.tool else step.text, run)
                apply_mapping(step, mapping)
            step.ts = base + i * 0.001
    imported.mapped_for = str(run.domain)
    run.steps = len(imported.steps)
    if run.ended_at is None:
        run.ended_at = base + len(imported.steps) * 0.001
    if imported.warnings:
        run.metadata["import_warnings"] = imported.warnings[:50]


def complete_mapping(imported: ImportedRun, runtime: Any) -> None:
    """Map a run read with ``iter_runs(..., mapping=False)`` (:func:`map_steps`, then the
    importer's ``finish``): the same result as mapping while reading, done later (for example in
    a worker process). Does nothing for a run that is already mapped."""
    if not imported.unmapped:
        return
    map_steps(imported, runtime)
    if imported.pending is not None:
        imported.pending(imported)
    imported.unmapped, imported.pending = False, None


def is_unmapped(step: Step) -> bool:
    """A step no domain rule mapped: the heuristic guessed, or nothing fit (``OTHER``)."""
    return step.data.get("mapped_by") == "heuristic" or step.action_type == ActionType.OTHER


# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------

_progress = threading.local()


@dataclass
class Share:
    """One of ``of`` processes reading the same files, each its own share of the records: the
    records whose ordinal ``n`` in their file (line number in JSON Lines, element number in a JSON
    list, from 1) has ``(n - 1) % of == part``. A JSON Lines line of another share is not even
    decoded. ``file`` and ``last`` say where the last record handed out came from (the file's place
    in the list read, its ordinal), so the shares' runs can be put back in reading order."""

    part: int
    of: int
    file: int = 0
    last: int = 0

    def take(self, n: int) -> bool:
        if (n - 1) % self.of != self.part:
            return False
        self.last = n
        return True


_sharing = threading.local()


@contextlib.contextmanager
def reading_share(share: Share | None) -> Iterator[None]:
    """Within the block, :func:`iter_jsonl` and :func:`iter_json_values` (and the importers that
    read through them) yield only ``share``'s records in this thread."""
    before = getattr(_sharing, "share", None)
    _sharing.share = share
    try:
        yield
    finally:
        _sharing.share = before


def _current_share() -> Share | None:
    return getattr(_sharing, "share", None)


def bytes_read() -> int:
    """How many bytes of the files being imported (compressed size for gzip) this thread has read
    so far; the CLI's progress bar follows it."""
    fh = getattr(_progress, "fh", None)
    done = getattr(_progress, "done", 0)
    if fh is None:
        return done
    try:
        return done + fh.tell()
    except (ValueError, OSError):
        return done


def open_binary(path: str) -> IO[bytes]:
    """Open a trace file for reading, uncompressing ``.gz`` files (by magic number)."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller
    _progress.fh = raw
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def file_done(path: str) -> None:
    """Count a finished file's size in :func:`bytes_read`."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    _progress.done = getattr(_progress, "done", 0) + size
    _progress.fh = None


def reset_progress() -> None:
    _progress.done = 0
    _progress.fh = None


def decode(data: bytes) -> tuple[str, str | None]:
    """Bytes as text; bytes that are not UTF-8 are replaced (U+FFFD) and reported."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 4]
        return data.decode("utf-8", errors="replace"), (
            f"bytes that are not UTF-8 (first at byte {exc.start}: {bad!r}) were replaced with U+FFFD")


def read_head(path: str, limit: int = HEAD_BYTES) -> str:
    """The start of a file as text (uncompressed), for format detection."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max(limit, 1 << 20))
        if data[:2] == b"\x1f\x8b":  # what can be uncompressed, even from a file cut short
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit)
    except (OSError, EOFError, zlib.error):
        return ""
    finally:
        _progress.fh = None
    return data[:limit].decode("utf-8", errors="replace")


def json_error(exc: json.JSONDecodeError, text: str) -> str:
    if exc.pos >= len(text.rstrip()) - 1 or "Unterminated" in exc.msg or "Expecting value" in exc.msg and \
            exc.pos >= len(text.rstrip()):
        return f"truncated JSON ({exc.msg} at column {exc.colno})"
    return f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


@dataclass
class Record:
    """One JSON value read from a file with where it was."""

    value: Any
    where: str
    warning: str | None = None


def iter_jsonl(path: str) -> Iterator[Record | ImportProblem]:
    """Each line of a JSON Lines file (plain or gzip) as a :class:`Record`; a line that cannot be
    read becomes an :class:`ImportProblem` naming the line, and reading goes on."""
    n = 0
    share = _current_share()
    with open_binary(path) as fh:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (EOFError, OSError, zlib.error) as exc:  # a cut or damaged .gz: keep what came before
                yield ImportProblem(path, f"line {n + 1}", f"the compressed file is cut or damaged ({exc}); the "
                                    f"{n} lines before it were read")
                break
            n += 1
            if share is not None and not share.take(n):
                continue
            if not raw.strip():
                continue
            if len(raw) > MAX_RECORD_BYTES:
                yield ImportProblem(path, f"line {n}", f"longer than {MAX_RECORD_BYTES:,} bytes; skipped")
                continue
            text, warning = decode(raw)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield ImportProblem(path, f"line {n}", json_error(exc, text.rstrip("\n")))
                continue
            except RecursionError:
                yield ImportProblem(path, f"line {n}", "nested too deeply to be read; skipped")
                continue
            yield Record(value, f"line {n}", warning)
    file_done(path)


def iter_json_values(path: str) -> Iterator[Record | ImportProblem]:
    """The records of a JSON file: each element of a top-level list (``record N``), or the one
    top-level object (``file``). A list cut short still yields every complete element before the
    cut, then a problem naming the record where it broke."""
    try:
        data, cut = _read_whole(path)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield ImportProblem(path, "file", f"cannot read: {exc}")
        file_done(path)
        return
    except ValueError as exc:  # too large
        yield ImportProblem(path, "file", str(exc))
        file_done(path)
        return
    if cut is not None:
        yield ImportProblem(path, "file", f"{cut}; the complete records before the cut are read", skipped=False)
    text, warning = decode(data)
    stripped = text.lstrip()
    share = _current_share()
    if stripped.startswith("["):
        dec = json.JSONDecoder()
        pos = len(text) - len(stripped) + 1
        n = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                yield ImportProblem(path, f"record {n + 1}", "truncated JSON: the list ends without its closing ']'")
                break
            if text[pos] == "]":
                break
            n += 1
            try:
                value, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield ImportProblem(path, f"record {n}", json_error(exc, text) + "; the rest of the file cannot "
                                    "be read")
                break
            except RecursionError:
                yield ImportProblem(path, f"record {n}", "nested too deeply to be read; the rest of the file "
                                    "cannot be read")
                break
            if share is None or share.take(n):
                yield Record(value, f"record {n}", warning)
    elif share is None or share.take(1):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield ImportProblem(path, "file", json_error(exc, text))
        except RecursionError:
            yield ImportProblem(path, "file", "nested too deeply to be read")
        else:
            yield Record(value, "file", warning)
    file_done(path)


def _read_whole(path: str) -> tuple[bytes, str | None]:
    """A whole file's bytes (gzip uncompressed) and, for a gzip file cut short, what is wrong: the
    bytes that could be uncompressed before the cut are kept, so the complete records in them can
    still be read."""
    with open(path, "rb") as raw:
        _progress.fh = raw
        data = raw.read(MAX_FILE_BYTES + 1)
    if data[:2] != b"\x1f\x8b":
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES:,} bytes; split it or use JSON Lines")
        return data, None
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(rest, MAX_FILE_BYTES + 1 - size)
        except zlib.error as exc:
            if not out:
                raise
            return b"".join(out), f"the compressed data is damaged ({exc})"
        out.append(chunk)
        size += len(chunk)
        if size > MAX_FILE_BYTES or d.unconsumed_tail:
            raise ValueError(f"larger than {MAX_FILE_BYTES:,} bytes uncompressed; split it or use JSON Lines")
        if not d.eof:
            return b"".join(out), "the compressed file is cut short (it ends before the end-of-stream marker)"
        rest = d.unused_data.lstrip(b"\x00")
    return b"".join(out), None


def iter_records(path: str) -> Iterator[Record | ImportProblem]:
    """JSON Lines or JSON, whichever the file holds."""
    head = read_head(path, 4096).lstrip()
    if head.startswith("[") or (head.startswith("{") and _is_single_json(path)):
        yield from iter_json_values(path)
    else:
        yield from iter_jsonl(path)


def iter_objects(path: str) -> Iterator[Record | ImportProblem]:
    """Like :func:`iter_records`, but a record that is not a JSON object becomes an
    :class:`ImportProblem` naming it, so importers only see objects."""
    for rec in iter_records(path):
        if isinstance(rec, ImportProblem) or isinstance(rec.value, dict):
            yield rec
        else:
            yield ImportProblem(path, rec.where, f"expected an object, got {type(rec.value).__name__}")


def _is_single_json(path: str) -> bool:
    """A file that starts with ``{`` is JSON Lines if its name says so (``.jsonl``, ``.ndjson``) or
    its first line parses alone; otherwise it is one (pretty-printed) JSON object."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".ndjson")):
        return False
    try:
        with open_binary(path) as fh:
            first = fh.readline()
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    finally:
        _progress.fh = None
    try:
        json.loads(first.decode("utf-8", errors="replace"))
    except ValueError:
        return True
    return False


def each_record(path: str, records: Iterable[Record | ImportProblem],
                convert: Callable[[Record], ImportedRun | ImportProblem]) -> Iterator[ImportedRun | ImportProblem]:
    """``convert`` each record, isolated: a record that makes it raise (a wrong type deep inside,
    absurd nesting) becomes an :class:`ImportProblem` naming the record, and the rest go on."""
    for rec in records:
        if isinstance(rec, ImportProblem):
            yield rec
            continue
        try:
            item = convert(rec)
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the file
            msg = " ".join(str(exc).split())[:200]
            item = ImportProblem(path, rec.where, f"cannot be read: {type(exc).__name__}: {msg}")
        yield item


def describe(record: Record, **keys: Any) -> str:
    """``"line 3 (instance_id=django-1)"``: a record's place plus what identifies it."""
    shown = ", ".join(f"{k}={v}" for k, v in keys.items() if v not in (None, ""))
    return f"{record.where} ({shown})" if shown else record.where


def now_ts() -> float:
    return now()
