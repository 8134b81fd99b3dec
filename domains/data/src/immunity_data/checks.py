"""The data domain's checks. Each returns a :class:`~immunity.models.Verdict` or ``None``.

A per-run memo, ``state.extras["data"]``, is filled once per completed step by :func:`track`: the
tables the agent created, wrote and validated, the row counts and columns the tools reported (with the
write counter at that time, so a change the agent did not make is visible), and which tables were
built from which sources by a join.

Options (``Runtime(..., data={...})``): ``allow_destructive`` (``True``, or a list of table names that
may be dropped / truncated / fully deleted), ``validators`` (extra tool names that count as a validation).
"""

from __future__ import annotations

import json
import re
from typing import Any

from immunity import taxonomy as tx
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

from immunity_data import sql as q
from immunity_data.mapping import CODE_TOOLS, SQL_TOOLS

#: Error classes added by this domain.
UNVALIDATED_WRITE = "unvalidated_write"
ROW_COUNT_DRIFT = "row_count_drift"
SCHEMA_DRIFT = "schema_drift"

tx.register_class(UNVALIDATED_WRITE, "The run finishes after writing data that no validation step checked.",
                  "data domain", "Validate what you wrote (row counts, nulls, keys, schema) before finishing.")
tx.register_class(ROW_COUNT_DRIFT, "A table's row count changed between two reads although the agent did not write "
                  "to it, or a join produced more rows than its source (duplicate keys).", "data domain",
                  "The row count changed unexpectedly. Check for duplicate join keys or concurrent writes before "
                  "going on.")
tx.register_class(SCHEMA_DRIFT, "A table's columns changed between two reads although the agent did not alter it, "
                  "or a write's columns do not match the table's schema.", "data domain",
                  "The schema is not what you assumed. Re-read it and align your columns.")

_SQL = re.compile(SQL_TOOLS)
_CODE = re.compile(CODE_TOOLS)
_TABLE_TOOL_WRITE = re.compile(r"(?i)write_\w+|save_\w+|insert_rows|append_rows|upsert\w*|to_sql|create_table|"
                               r"update_rows|delete_rows|merge_\w+|(load|read|import)_\w+")
_DESTRUCTIVE_TOOL = re.compile(r"(?i)drop_table|truncate_table|delete_table|drop_database|purge\w*")
_INT = re.compile(r"(?<![\w.])(\d[\d,]*)(?![\w.])")
_TO_SQL_REPLACE = re.compile(r"(\w+)\.to_sql\(\s*['\"]([\w.]+)['\"][^)]*if_exists\s*=\s*['\"]replace", re.S)
_LIMIT = 5000


def memo(state: RunState) -> dict[str, Any]:
    m = state.extras.get("data")
    if m is None:
        m = state.extras["data"] = {"opts": {}, "created": set(), "writes": 0, "written": {}, "unvalidated": [],
                                    "counts": {}, "columns": {}, "derived": {},
                                    "last_count": None, "last_columns": None}
    return m


def _table_arg(arguments: dict[str, Any] | None) -> str | None:
    for key in ("table", "table_name", "target", "target_table", "into", "name", "dest"):
        value = (arguments or {}).get(key)
        if isinstance(value, str) and value:
            return q.name(value)
    return None


def _statements(step: Step) -> list[q.Statement]:
    if step.tool and (_SQL.fullmatch(step.tool) or _CODE.fullmatch(step.tool)):
        return q.statements(q.sql_of(step.arguments))
    return []


def _columns_from(result: str | None) -> set[str] | None:
    """Column names from a schema tool's result: JSON (a list of ``{"name": ...}`` / ``{"column_name":
    ...}`` rows, a ``{"columns": [...]}`` object, or a ``{column: type}`` mapping) or ``name type`` lines."""
    if not result:
        return None
    try:
        data = json.loads(result[:50000])
    except ValueError:
        data = None
    if isinstance(data, dict) and "columns" in data:
        data = data["columns"]
    if isinstance(data, list):
        cols = set()
        for row in data:
            if isinstance(row, dict):
                n = row.get("name") or row.get("column_name") or row.get("column") or row.get("field")
                if n:
                    cols.add(str(n).lower())
            elif isinstance(row, str):
                cols.add(row.lower())
            elif isinstance(row, list | tuple) and len(row) >= 2:  # PRAGMA table_info rows: (cid, name, type...)
                cols.add(str(row[1]).lower())
        return cols or None
    if isinstance(data, dict):
        return {str(k).lower() for k in data} or None
    lines = [ln.split()[0].strip(",|").lower() for ln in result.splitlines()[:500] if ln.strip()]
    return {ln for ln in lines if re.fullmatch(r"[a-z_]\w*", ln)} or None


def _count_from(result: str | None) -> int | None:
    if not result:
        return None
    try:
        data = json.loads(result[:5000])
    except ValueError:
        data = None
    while isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if isinstance(data, int):
        return data
    m = _INT.search(result[:500])
    return int(m.group(1).replace(",", "")) if m else None


def _write(m: dict[str, Any], table: str | None) -> None:
    m["writes"] += 1
    if table and len(m["written"]) < _LIMIT:
        m["written"][table] = m["writes"]
    if len(m["unvalidated"]) < _LIMIT:
        m["unvalidated"].append(table or "?")


def track(step: Step, run: Run, state: RunState) -> None:
    """Fold one completed step into the memo."""
    m = memo(state)
    if step.data.get("blocked") or not step.tool:
        return
    failed = step.failed
    sts = _statements(step)
    if not failed:
        for st in sts:
            if st.writes:
                _write(m, st.table)
                if st.kind == "create" and st.table:
                    m["created"].add(st.table)
                    if st.sources and st.joins:
                        m["derived"][st.table] = st.sources[0]
                if st.kind in ("drop", "alter", "create") and st.table:
                    m["columns"].pop(st.table, None)
        if not sts and step.action_type == ActionType.EDIT:
            _write(m, _table_arg(step.arguments))
    validators = {v.lower() for v in m["opts"].get("validators") or []}
    if step.action_type == ActionType.VERIFY or step.tool.lower() in validators:
        if not failed and not re.match(r"\s*(?:fail|error|invalid|false\b)", step.result or "", re.I):
            m["unvalidated"] = []
    # what reads report: row counts and columns
    count_of = next((st.count_of for st in sts if st.count_of), None)
    if count_of is None and step.tool.lower() in ("count_rows", "row_count"):
        count_of = _table_arg(step.arguments)
    if count_of and not failed:
        n = _count_from(step.result)
        if n is not None:
            # (table, before, now) for the drift check, which runs right after this for the same step
            m["last_count"] = (step.index, count_of, m["counts"].get(count_of))
            m["counts"][count_of] = (n, m["written"].get(count_of, 0))
    schema_of = next((st.schema_of for st in sts if st.schema_of), None)
    if schema_of is None and re.fullmatch(r"(?i)read_schema|get_schema|describe_table|describe|list_columns|table_info",
                                          step.tool):
        schema_of = _table_arg(step.arguments)
    if schema_of and not failed:
        cols = _columns_from(step.result)
        if cols:
            m["last_columns"] = (step.index, schema_of, m["columns"].get(schema_of))
            m["columns"][schema_of] = (cols, m["written"].get(schema_of, 0))


# ----------------------------------------------------------------------------------------------- checks


def _allowed(m: dict[str, Any], run: Run, table: str | None) -> bool:
    allow = m["opts"].get("allow_destructive", run.metadata.get("allow_destructive"))
    if allow is True:
        return True
    if isinstance(allow, list | tuple | set) and table and table in {q.name(t) for t in allow}:
        return True
    return bool(table and table in m["created"])  # its own scratch tables may go


def destructive_sql(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``unsafe_action`` (blocked): ``DROP TABLE`` / ``DATABASE`` / ``SCHEMA``, ``TRUNCATE``, ``DELETE``
    or ``UPDATE`` with no ``WHERE``, ``ALTER TABLE ... DROP COLUMN``, pandas ``to_sql(...,
    if_exists="replace")``, or a ``drop_table`` tool, unless ``allow_destructive`` covers the table
    or the run created the table itself."""
    if event.kind != EventKind.TOOL_START or step is None or not step.tool:
        return None
    m = memo(state)
    reasons: list[tuple[str, str | None]] = []
    for st in _statements(step):
        why = st.destructive()
        if why:
            reasons.append((why, st.table))
    if _CODE.fullmatch(step.tool):
        for match in _TO_SQL_REPLACE.finditer(q.sql_of(step.arguments)):
            reasons.append((f"{match.group(1)}.to_sql('{match.group(2)}', if_exists='replace') replaces the table",
                            q.name(match.group(2))))
    if _DESTRUCTIVE_TOOL.fullmatch(step.tool):
        table = _table_arg(step.arguments)
        reasons.append((f"{step.tool}({table})", table))
    reasons = [(why, t) for why, t in reasons if not _allowed(m, run, t)]
    if not reasons:
        return None
    why, table = reasons[0]
    return Verdict(ok=False, error_class=tx.UNSAFE_ACTION, severity=Severity.ERROR, block=True,
                   message=f"destructive SQL: {why}",
                   hint=f"[immunity] Blocked: {why} destroys data that cannot be recovered. Add a WHERE clause, "
                        "write to a new table, or ask for explicit permission (allow_destructive) first.",
                   evidence={"statements": [w for w, _ in reasons][:5], "table": table})


def unvalidated_write(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``unvalidated_write``: finishing (a final answer or a DONE tool) after writes that no
    validation step (a VERIFY tool, a check query, an assert) passed after."""
    if step is None or step.action_type != ActionType.DONE or event.kind == EventKind.TOOL_END:
        return None
    pending = memo(state)["unvalidated"]
    if not pending:
        return None
    tables = sorted({t for t in pending if t != "?"})
    return Verdict(ok=False, error_class=UNVALIDATED_WRITE, severity=Severity.ERROR,
                   message=f"finishing after {len(pending)} write(s) with no validation since"
                           + (f" (tables: {', '.join(tables[:5])})" if tables else ""),
                   hint="[immunity] You wrote data but did not validate it. Check row counts, nulls in key columns, "
                        "duplicates and the schema of what you wrote, then finish.",
                   evidence={"writes": len(pending), "tables": tables[:20]})


def drift(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``row_count_drift`` / ``schema_drift``: a read reports a row count or columns different from
    the last read of the same table although the agent did not write to it since; a table built with
    a join has more rows than its source; a write names columns the table does not have."""
    if step is None or not step.tool:
        return None
    m = memo(state)
    if event.kind == EventKind.TOOL_START:
        table = _table_arg(step.arguments)
        known = m["columns"].get(table or "")
        if known is None or step.action_type != ActionType.EDIT:
            return None
        rows = (step.arguments or {}).get("rows") or (step.arguments or {}).get("data") or []
        cols = (step.arguments or {}).get("columns")
        if not cols and isinstance(rows, list) and rows and isinstance(rows[0], dict):
            cols = list(rows[0])
        extra = sorted({str(c).lower() for c in cols or []} - known[0])
        if not extra:
            return None
        return Verdict(ok=False, error_class=SCHEMA_DRIFT, severity=Severity.WARNING,
                       message=f"writing columns {extra} that {table} does not have",
                       hint=f"[immunity] {table} has no column(s) {', '.join(extra)}. Re-read its schema and map your "
                            "columns before writing.",
                       evidence={"table": table, "unknown_columns": extra, "schema": sorted(known[0])[:50]})
    if event.kind != EventKind.TOOL_END or step.failed:
        return None
    last = m["last_count"]
    if last is not None and last[0] == step.index:
        _, table, before = last
        n, writes_then = m["counts"][table]
        if before is not None and before[0] != n and before[1] == writes_then:
            return Verdict(ok=False, error_class=ROW_COUNT_DRIFT, severity=Severity.WARNING,
                           message=f"{table} had {before[0]} rows and now has {n}, with no write by this run",
                           hint=f"[immunity] {table} changed from {before[0]} to {n} rows without any write from "
                                "you: another process is changing it, or you read a different table. Re-check before "
                                "relying on it.", evidence={"table": table, "before": before[0], "after": n})
        source = m["derived"].get(table)
        if source and source in m["counts"] and n > m["counts"][source][0]:
            return Verdict(ok=False, error_class=ROW_COUNT_DRIFT, severity=Severity.WARNING,
                           message=f"{table} has {n} rows, more than its source {source} "
                                   f"({m['counts'][source][0]}): the join duplicated rows",
                           hint=f"[immunity] Joining into {table} multiplied rows ({m['counts'][source][0]} -> {n}). "
                                "Check the join keys for duplicates (deduplicate or aggregate first).",
                           evidence={"table": table, "rows": n, "source": source,
                                     "source_rows": m["counts"][source][0]})
    last = m["last_columns"]
    if last is not None and last[0] == step.index:
        _, table, before = last
        cols, writes_then = m["columns"][table]
        if before is not None and before[0] != cols and before[1] == writes_then:
            gone, new = sorted(before[0] - cols), sorted(cols - before[0])
            return Verdict(ok=False, error_class=SCHEMA_DRIFT, severity=Severity.WARNING,
                           message=f"{table} columns changed with no change by this run (gone: {gone}, new: {new})",
                           hint=f"[immunity] The columns of {table} changed since you last read them (gone: "
                                f"{', '.join(gone) or '-'}; new: {', '.join(new) or '-'}). Update your queries.",
                           evidence={"table": table, "gone": gone, "new": new})
    return None


CHECKS = [destructive_sql, unvalidated_write, drift]

ERROR_CLASSES = {
    tx.UNSAFE_ACTION: "destructive_sql: DROP TABLE/DATABASE/SCHEMA, TRUNCATE, DELETE/UPDATE without WHERE, "
                      "DROP COLUMN, to_sql(if_exists='replace'), drop_table tools (blocked)",
    UNVALIDATED_WRITE: "unvalidated_write: finishing after writes no validation passed after",
    ROW_COUNT_DRIFT: "drift: a row count that changed with no write by the run, or a join that multiplied rows",
    SCHEMA_DRIFT: "drift: columns that changed with no change by the run, or a write with unknown columns",
}
