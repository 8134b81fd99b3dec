"""immunity's own format (``immunity export``): JSON Lines, one run a line, with everything the store
holds about it::

    {"format": "immunity", "version": 1,
     "run": {...Run...}, "steps": [...Step...], "events": [...Event...], "verdicts": [...],
     "interventions": [...], "recoveries": [...], "checkpoints": [...], "plugin_errors": [...]}

Every object is the model's own JSON dump (``model_dump(mode="json")``), so ``immunity import
--format immunity`` rebuilds the same records field by field: steps keep their action mapping and
time stamps, nothing is re-mapped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import IO, Any

from pydantic import ValidationError

from immunity.importers.base import ImportedRun, ImportProblem, describe, each_record, iter_jsonl
from immunity.models import Checkpoint, Event, Intervention, Recovery, Run, Step, Verdict
from immunity.redact import default_redactor

FORMAT = "immunity"
VERSION = 1

_MODELS: dict[str, Any] = {"events": Event, "verdicts": Verdict, "interventions": Intervention,
                           "recoveries": Recovery, "checkpoints": Checkpoint}


def run_record(store: Any, run: Run) -> dict[str, Any]:
    """Everything the store holds about one run, as one JSON-ready dict, redacted (a store written
    before redaction existed, or with it switched off, still exports no secrets)."""
    rid = run.run_id
    redactor = getattr(store, "redactor", None) or default_redactor()
    return redactor.value({
        "format": FORMAT,
        "version": VERSION,
        "run": run.model_dump(mode="json"),
        "steps": [s.model_dump(mode="json") for s in store.steps(rid)],
        "events": [e.model_dump(mode="json") for e in store.events(rid)],
        "verdicts": [v.model_dump(mode="json") for v in store.verdicts(rid)],
        "interventions": [i.model_dump(mode="json") for i in store.interventions(rid)],
        "recoveries": [r.model_dump(mode="json") for r in store.recoveries(rid)],
        "checkpoints": [c.model_dump(mode="json") for c in store.checkpoints(rid)],
        "plugin_errors": [{k: v for k, v in e.items() if k != "id"} for e in store.plugin_errors(rid)],
    })


def _select(store: Any, run_ids: list[str] | None, source: str | None) -> list[Run]:
    if run_ids:
        runs = []
        for rid in run_ids:
            run = store.get_run(rid)
            if run is None:
                raise LookupError(f"no run {rid!r} in the store (or the prefix is not unique)")
            runs.append(run)
        return runs
    runs = store.runs(limit=None, source=source)
    runs.sort(key=lambda r: (r.started_at, r.run_id))
    return runs


def export_runs(store: Any, output: str | IO[str], *, run_ids: list[str] | None = None,
                source: str | None = None) -> int:
    """Write runs (all, the named ones, or those with ``source``) to ``output`` (a path, ``-`` for
    stdout, or an open text file). Returns how many runs were written."""
    runs = _select(store, run_ids, source)
    if isinstance(output, str) and output != "-":
        tmp = output + ".part"
        with open(tmp, "w", encoding="utf-8") as fh:
            n = _write(store, runs, fh)
        import os

        os.replace(tmp, output)  # a finished file or none: never a half-written export
        return n
    return _write(store, runs, sys.stdout if output == "-" else output)  # type: ignore[arg-type]


def _write(store: Any, runs: list[Run], fh: IO[str]) -> int:
    for run in runs:
        fh.write(json.dumps(run_record(store, run), ensure_ascii=False, default=str) + "\n")
    return len(runs)


def record_to_run(value: Any, path: str, where: str) -> ImportedRun | ImportProblem:
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        return ImportProblem(path, where, "not an immunity export record (no \"format\": \"immunity\")")
    if value.get("version") != VERSION:
        return ImportProblem(path, where, f"export version {value.get('version')!r} is not supported "
                             f"(this immunity reads version {VERSION})")
    try:
        run = Run.model_validate(value["run"])
        steps = [Step.model_validate(s) for s in value.get("steps") or []]
        related: dict[str, list[Any]] = {}
        for table, model in _MODELS.items():
            related[table] = [model.model_validate(x) for x in value.get(table) or []]
        related["plugin_errors"] = [dict(x) for x in value.get("plugin_errors") or [] if isinstance(x, dict)]
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError, ValidationError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ImportProblem(path, where, f"does not fit immunity's models: {msg}")
    return ImportedRun(run, steps, path, where, mapped=True, related=related)


class ImmunityImporter:
    name = FORMAT
    default_domain: str | None = None
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        start = head.lstrip()[:200]
        return start.startswith("{") and '"format": "immunity"' in start.replace('":"', '": "')

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        def one(rec: Any) -> ImportedRun | ImportProblem:
            head = rec.value.get("run") if isinstance(rec.value, dict) else None
            run_id = head.get("run_id") if isinstance(head, dict) else None
            item = record_to_run(rec.value, path, describe(rec, run_id=run_id))
            if isinstance(item, ImportedRun) and rec.warning:
                item.warnings.append(rec.warning)
            return item

        yield from each_record(path, iter_jsonl(path), one)
