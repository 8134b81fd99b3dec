"""Read real agent trajectories into the store as runs with steps and outcomes.

Each format has an importer (registered through ``immunity_register_importers``; core's own are in
:mod:`immunity.importers.plugin`). An importer reads records into :class:`ImportedRun` objects;
:func:`iter_runs` then maps every step to a universal action type with ``Runtime.map_action``, so
the installed domain plugins decide, exactly as they do for a live run.

::

    from immunity.importers import iter_runs, import_paths

    for item in iter_runs(["trajs.jsonl.gz"], "mini-swe-agent"):
        if isinstance(item, ImportProblem):
            print(item)
        else:
            print(item.run.outcome, len(item.steps))

    report = import_paths(["trajs.jsonl.gz"], "auto", "immunity.db")
    print(report.summary())

Formats: ``chat`` (the interchange format; see ``docs/formats/``), ``tau-bench``,
``mini-swe-agent``, ``swe-agent``, ``who-and-when``, ``otlp-json`` / ``openinference``
(OpenTelemetry traces, see :mod:`immunity.importers.otlp`) and ``immunity`` (``immunity export``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from immunity.importers.base import (
    ImportedRun,
    Importer,
    ImportProblem,
    Share,
    bytes_read,
    file_done,
    is_unmapped,
    map_steps,
    read_head,
    reading_share,
    reset_progress,
)
from immunity.importers.store_io import write_full_run
from immunity.models import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from immunity.runtime import Runtime

__all__ = [
    "CONFLICT_POLICIES",
    "FORMATS",
    "ImportProblem",
    "ImportReport",
    "ImportedRun",
    "Importer",
    "Share",
    "detect_format",
    "expand_paths",
    "import_paths",
    "importers",
    "iter_runs",
    "total_bytes",
]

#: Built-in formats, in the order ``--format auto`` tries them.
FORMATS: tuple[str, ...] = ("immunity", "otlp-json", "openinference", "who-and-when", "tau-bench", "swe-agent", "mini-swe-agent", "chat")

#: File names a directory walk picks up.
_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".traj", ".traj.json", ".gz", ".ndjson")


def _runtime(runtime: Runtime | None) -> Runtime:
    if runtime is not None:
        return runtime
    from immunity.runtime import Runtime

    return Runtime(store=None)


def importers(runtime: Runtime | None = None) -> dict[str, Any]:
    """Installed importers by format name (built-ins first, then plugins)."""
    rt = _runtime(runtime)
    return rt.pm.registry("importers")


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files named directly, plus trace files found (recursively, sorted) under directories."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, _dirs, files in os.walk(p):
                for name in files:
                    # only regular files: a FIFO or a device named like a trace would block the read
                    if name.endswith(_SUFFIXES) and os.path.isfile(os.path.join(root, name)):
                        found.append(os.path.join(root, name))
            out.extend(sorted(found))
        else:
            out.append(p)
    return out


def total_bytes(paths: Iterable[str]) -> int:
    """The size on disk of the files :func:`iter_runs` will read (for a progress bar)."""
    total = 0
    for p in expand_paths(paths):
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total


def detect_format(path: str, registry: dict[str, Any] | None = None) -> str | None:
    """The format of a trace file, from its name and first bytes; ``None`` if no importer claims it.

    Built-in formats are tried in :data:`FORMATS` order (most specific first), then plugins'."""
    registry = registry if registry is not None else importers()
    head = read_head(path)
    order = [f for f in FORMATS if f in registry] + sorted(f for f in registry if f not in FORMATS)
    for name in order:
        try:
            if registry[name].detect(path, head):
                return name
        except Exception:  # a plugin's broken detect() must not stop the others
            continue
    return None


def iter_runs(paths: list[str], format: str = "auto", *, runtime: Runtime | None = None,  # noqa: A002
              domain: str | None = None, mapping: bool = True,
              share: Share | None = None) -> Iterator[ImportedRun | ImportProblem]:
    """Read trace files one record at a time.

    Every step is mapped with ``runtime.map_action(tool, arguments, text, run)`` (a
    ``Runtime(store=None)`` is made if none is given). ``run.domain`` is the record's own domain if
    it names one, else ``domain``, else the format's default (tau-bench: ``support``,
    mini-swe-agent / swe-agent: ``coding``, who-and-when: ``research``).

    ``mapping=False`` leaves the mapping (and the importer's ``finish``, which may need it) to
    :func:`~immunity.importers.base.complete_mapping`, so it can run later or in worker processes;
    a record whose steps cannot be mapped is then reported by whoever completes it.

    ``share`` reads one share of the records, for processes that read the same files side by side
    (see :class:`~immunity.importers.base.Share`): a file whose importer makes one run of each
    record read through the shared JSON readers (``splits_records = True``) is split record by
    record; any other file is read whole by one share (file ``i`` by share ``i % share.of``).
    Problems with a whole file may be yielded by every share.

    Yields an :class:`ImportProblem` for each record (or file) that could not be read, and goes on.
    """
    rt = _runtime(runtime)
    registry = rt.pm.registry("importers")
    if format != "auto" and format not in registry:
        raise ValueError(f"unknown import format {format!r}; installed: {', '.join(sorted(registry))}")
    files = expand_paths(paths)
    for file_no, path in enumerate(files):
        whole = share is None or file_no % share.of == share.part  # this reader's if read whole
        if share is not None:
            share.file, share.last = file_no, 0
        if not os.path.exists(path):
            if whole:
                yield ImportProblem(path, "file", "no such file")
            continue
        if os.path.isdir(path):
            continue
        if not os.path.isfile(path):  # a FIFO, a socket, a device: reading it could block forever
            if whole:
                yield ImportProblem(path, "file", "not a regular file; skipped")
            continue
        fmt = format if format != "auto" else detect_format(path, registry)
        if fmt is None:
            if whole:
                yield ImportProblem(path, "file", "format not recognised; pass --format "
                                    f"({', '.join(sorted(registry))})")
            file_done(path)
            continue
        importer = registry[fmt]
        split = share is not None and getattr(importer, "splits_records", False) is True
        if not split and not whole:
            continue
        default_domain = getattr(importer, "default_domain", None)
        try:
            for item in _in_share(importer.read(path), share if split else None):
                if isinstance(item, ImportProblem):
                    yield item
                    continue
                run = item.run
                if item.mapped:  # immunity's own format: kept exactly as exported
                    yield item
                    continue
                if not run.domain:
                    run.domain = domain or default_domain
                if run.source is None:
                    run.source = fmt
                if not mapping:
                    item.unmapped, item.pending = True, getattr(importer, "finish", None)
                    for w in item.warnings:
                        yield ImportProblem(path, item.record or "record", w, skipped=False)
                    yield item
                    continue
                try:
                    map_steps(item, rt)
                    finish = getattr(importer, "finish", None)
                    if finish is not None:  # labels that need the mapped steps (tau-bench's failure step)
                        finish(item)
                except Exception as exc:  # a broken record, not a broken import
                    yield ImportProblem(path, item.record or "record", f"cannot map its steps: "
                                        f"{type(exc).__name__}: {exc}")
                    continue
                for w in item.warnings:
                    yield ImportProblem(path, item.record or "record", w, skipped=False)
                yield item
        except Exception as exc:
            yield ImportProblem(path, "file", f"reading stopped: {type(exc).__name__}: {exc}")
            file_done(path)


def _in_share(items: Iterator[ImportedRun | ImportProblem],
              share: Share | None) -> Iterator[ImportedRun | ImportProblem]:
    """``items``, with the JSON readers limited to ``share`` while each one is read (only then:
    whoever consumes them reads its own files unlimited)."""
    if share is None:
        yield from items
        return
    while True:
        with reading_share(share):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


@dataclass
class ImportReport:
    """What an import did: counts, outcomes, unmapped steps, and every problem with its record."""

    runs: int = 0
    steps: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unmapped: int = 0
    problems: list[ImportProblem] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)
    unmapped_tools: Counter[str] = field(default_factory=Counter)
    with_failure_step: int = 0
    seconds: float = 0.0
    #: records whose run id was already taken (skipped with ``on_conflict="skip"``)
    conflicts: int = 0

    @property
    def success(self) -> int:
        return self.outcomes[Outcome.SUCCESS.value]

    @property
    def failure(self) -> int:
        return self.outcomes[Outcome.FAILURE.value]

    @property
    def unknown(self) -> int:
        return self.outcomes[Outcome.UNKNOWN.value]

    @property
    def unmapped_rate(self) -> float:
        return self.unmapped / self.steps if self.steps else 0.0

    @property
    def skipped(self) -> int:
        return sum(1 for p in self.problems if p.skipped)

    def add(self, item: ImportedRun) -> None:
        self.runs += 1
        self.steps += len(item.steps)
        self.outcomes[item.run.outcome.value] += 1
        self.formats[item.run.source or "-"] += 1
        if item.run.failure_step is not None:
            self.with_failure_step += 1
        for s in item.steps:
            if is_unmapped(s):
                self.unmapped += 1
                self.unmapped_tools[s.tool or "<message>"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "steps": self.steps, "success": self.success, "failure": self.failure,
            "unknown": self.unknown, "unmapped_steps": self.unmapped, "unmapped_rate": round(self.unmapped_rate, 4),
            "with_failure_step": self.with_failure_step, "formats": dict(self.formats),
            "conflicts": self.conflicts,
            "unmapped_tools": dict(self.unmapped_tools.most_common(10)),
            "problems": [{"source": p.source, "record": p.record, "message": p.message, "skipped": p.skipped}
                         for p in self.problems],
            "seconds": round(self.seconds, 3),
        }

    def summary(self, max_problems: int = 20) -> str:
        lines = [
            f"imported {self.runs} runs, {self.steps} steps in {self.seconds:.1f}s "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(self.formats.items())) or 'nothing'})",
            f"outcomes: success {self.success}, failure {self.failure}, unknown {self.unknown}; "
            f"runs with a failure step: {self.with_failure_step}",
            f"unmapped steps: {self.unmapped} of {self.steps} ({self.unmapped_rate:.1%})",
        ]
        if self.conflicts:
            lines.append(f"conflicts: {self.conflicts} runs already in the store were kept (skipped; "
                         "--on-conflict replace or rename to import them)")
        if self.unmapped_tools:
            top = ", ".join(f"{t} ({n})" for t, n in self.unmapped_tools.most_common(8))
            lines.append(f"  most often unmapped: {top}")
        if self.problems:
            lines.append(f"problems: {len(self.problems)} ({self.skipped} records skipped)")
            for p in self.problems[:max_problems]:
                lines.append(f"  {p}")
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def _fast_commits(store: Any) -> None:
    """One transaction per run means hundreds of commits; in WAL mode ``synchronous=NORMAL`` keeps
    each commit atomic (a crash loses at most the last runs, never half a run) without waiting for
    the disk on every one. Only this connection is affected."""
    db = getattr(store, "db", None)
    if db is None or getattr(store, "path", ":memory:") == ":memory:":
        return
    try:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() == "wal":
            db.execute("PRAGMA synchronous = NORMAL")
    except Exception:  # a store that cannot say: leave it as it is
        pass


#: What an import does with a run whose id the store (or this import) already has.
CONFLICT_POLICIES = ("skip", "replace", "rename")


def _exists(db: Any, run_id: str) -> bool:
    try:
        run = db.get_run(run_id)
    except Exception:  # a store that cannot say: treat as unknown, never as permission to replace
        return True
    return run is not None and run.run_id == run_id


def _renamed(db: Any, item: ImportedRun, taken: dict[str, str]) -> str:
    import hashlib

    base = item.run.run_id
    salt = hashlib.blake2b(f"{os.path.abspath(item.source)}|{item.record}".encode(), digest_size=4).hexdigest()
    candidate, n = f"{base}~{salt}", 1
    while candidate in taken or _exists(db, candidate):
        n += 1
        candidate = f"{base}~{salt}-{n}"
    return candidate


_OWN_IDS = ("event_id", "intervention_id", "recovery_id", "checkpoint_id")


def _rename(item: ImportedRun, new: str) -> None:
    """Give an imported run (and every record that belongs to it) a new run id; records with an id
    of their own (events, interventions, recoveries, checkpoints) get new ones too, so nothing of
    the run that holds the old id is touched."""
    suffix = new[len(item.run.run_id):]
    item.run.run_id = new
    for st in item.steps:
        st.run_id = new
    for records in item.related.values():
        for rec in records:
            if isinstance(rec, dict):
                rec["run_id"] = new
                continue
            if hasattr(rec, "run_id"):
                rec.run_id = new
            for key in _OWN_IDS:
                if getattr(rec, key, None):
                    setattr(rec, key, f"{getattr(rec, key)}{suffix}")


def import_paths(paths: list[str], format: str, store: Any, *, domain: str | None = None,  # noqa: A002
                 progress: Callable[[int], None] | None = None, runtime: Runtime | None = None,
                 on_conflict: str = "skip") -> ImportReport:
    """Import trace files into a store, one transaction per run: a run is written whole or not at
    all (see :func:`immunity.importers.store_io.write_full_run`). ``store`` is a store object or a path. ``progress``, if given, is
    called with the number of bytes read so far (see :func:`total_bytes`).

    A run whose id the store already holds (a live run, an earlier import, an earlier record of
    this import) is a conflict, never a silent overwrite: ``on_conflict="skip"`` (default) keeps
    what is stored and counts the record in ``report.conflicts``; ``"replace"`` writes the imported
    run over it; ``"rename"`` imports it under a new id (``<id>~<hash of source and record>``)."""
    if on_conflict not in CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, not {on_conflict!r}")
    from immunity.locations import open_location

    own = isinstance(store, str)
    db = open_location(store, must_exist=False) if own else store
    _fast_commits(db)
    report = ImportReport()
    seen: dict[str, str] = {}
    t0 = time.perf_counter()
    reset_progress()
    try:
        for item in iter_runs(paths, format, runtime=runtime, domain=domain):
            if isinstance(item, ImportProblem):
                report.problems.append(item)
            else:
                rid = item.run.run_id
                where = f"{item.source} {item.record}".strip()
                if rid in seen or _exists(db, rid):
                    before = seen.get(rid, "a run already in the store")
                    if on_conflict == "skip":
                        report.conflicts += 1
                        report.problems.append(ImportProblem(item.source, item.record or "record",
                                                             f"run id {rid!r} is taken by {before}; skipped "
                                                             "(--on-conflict replace or rename to import it)"))
                        if progress is not None:
                            progress(bytes_read())
                        continue
                    if on_conflict == "rename":
                        new = _renamed(db, item, seen)
                        _rename(item, new)
                        report.problems.append(ImportProblem(item.source, item.record or "record",
                                                             f"run id {rid!r} is taken by {before}; imported as "
                                                             f"{new!r}", skipped=False))
                        rid = new
                    else:
                        report.problems.append(ImportProblem(item.source, item.record or "record",
                                                             f"run id {rid!r} was taken by {before}; replaced "
                                                             "(--on-conflict replace)", skipped=False))
                try:
                    write_full_run(db, item)
                except Exception as exc:
                    report.problems.append(ImportProblem(item.source, item.record or "record",
                                                         f"could not be written: {type(exc).__name__}: {exc}"))
                else:
                    seen[rid] = where
                    report.add(item)
            if progress is not None:
                progress(bytes_read())
    finally:
        report.seconds = time.perf_counter() - t0
        if own:
            db.close()
    return report
