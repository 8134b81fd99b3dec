"""Incidents: alerts and repeated verdicts grouped into something a person can own.

Two sources feed incidents:

- **Alerts** (:mod:`immunity.slo`): a newly firing alert joins the open incident of the same SLO
  (and agent) if that incident was active within the grouping window, else opens one.
- **Repeated verdicts**: failed verdicts of the same error class from the same agent (the run's
  ``agent``, else its domain, else its framework) open an incident once they come from at least
  ``min_runs`` different runs within the window; later ones join it while it stays active.

An incident is ``open``, ``acknowledged`` or ``resolved``; a resolved incident never takes new
items (the next one opens a new incident). Every item (alert, verdict, acknowledgement,
resolution) is kept in ``incident_items`` with its time, so the postmortem has a timeline.
Scanning is idempotent: an item is keyed by what it came from (``verdict:<id>``,
``alert:<alert_id>``) and is never attached twice.

Tables: ``incidents`` and ``incident_items`` (plain nouns: core's own).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from immunity.models import new_id

STATUSES = ("open", "acknowledged", "resolved")


@dataclass
class GroupingConfig:
    window_s: float = 3600.0
    min_runs: int = 3


def ensure_tables(store: Any) -> None:
    from immunity.slo import ensure_tables as ensure_alerts

    ensure_alerts(store)
    with store.transaction(flush=False) as db:
        db.table("incidents").create({
            "incident_id": str, "key": str, "kind": str, "title": str, "status": str, "agent": str,
            "error_class": str, "slo": str, "severity": str, "opened_at": float, "updated_at": float,
            "acknowledged_at": float, "resolved_at": float, "items": int, "runs": int, "note": str,
        }, pk="incident_id", if_not_exists=True)
        db.table("incident_items").create({
            "item_id": str, "incident_id": str, "ts": float, "kind": str, "run_id": str, "step": int,
            "detail": str,
        }, pk="item_id", if_not_exists=True)
        if "incident_items" in db.table_names():
            db.execute("create index if not exists idx_incident_items_incident on incident_items(incident_id)")


def _agent_key(row: dict[str, Any]) -> str:
    return row.get("agent") or row.get("domain") or row.get("framework") or "-"


def _active(store: Any, key: str) -> dict[str, Any] | None:
    rows = store._rows("select * from incidents where key = ? and status != 'resolved' order by updated_at desc "
                       "limit 1", [key])
    return rows[0] if rows else None


def _attach(db: Any, incident: dict[str, Any], items: list[dict[str, Any]]) -> int:
    fresh = [it for it in items if not list(db.query("select 1 from incident_items where item_id = ?",
                                                     [it["item_id"]]))]
    if not fresh:
        return 0
    for it in fresh:
        it["incident_id"] = incident["incident_id"]
    db.table("incident_items").insert_all(fresh)
    iid = incident["incident_id"]
    n, runs, last = next(db.query(
        "select sum(kind in ('alert', 'verdict')) as n, count(distinct run_id) as runs, max(ts) as last "
        "from incident_items where incident_id = ?", [iid])).values()
    db.table("incidents").update(iid, {"items": n, "runs": runs, "updated_at": max(last or 0, incident["updated_at"])})
    incident["updated_at"] = max(last or 0, incident["updated_at"])
    return len(fresh)


def _open(db: Any, *, key: str, kind: str, title: str, ts: float, **fields: Any) -> dict[str, Any]:
    row = {"incident_id": new_id("inc_"), "key": key, "kind": kind, "title": title, "status": "open",
           "opened_at": ts, "updated_at": ts, "items": 0, "runs": 0, **fields}
    db.table("incidents").insert(row)
    return row


def add_alerts(store: Any, alerts: list[Any], cfg: GroupingConfig | None = None) -> list[str]:
    """Feed newly fired alerts (:class:`~immunity.slo.Alert`) into incidents; returns the incident
    ids touched."""
    cfg = cfg or GroupingConfig()
    ensure_tables(store)
    touched = []
    for a in alerts:
        agent = a.agent or a.domain or a.framework or "-"
        key = f"slo:{a.slo}:{agent}"
        inc = _active(store, key)
        with store.transaction() as db:
            if inc is None or a.fired_at - inc["updated_at"] > cfg.window_s:
                inc = _open(db, key=key, kind="slo", title=f"SLO {a.slo} burning its error budget ({agent})",
                            ts=a.fired_at, agent=agent, slo=a.slo, severity=a.severity)
            elif a.severity == "page" and inc.get("severity") != "page":
                db.table("incidents").update(inc["incident_id"], {"severity": "page"})
            items = [{"item_id": f"alert:{a.alert_id}", "ts": a.fired_at, "kind": "alert", "run_id": None,
                      "step": None, "detail": json.dumps({"message": a.message, "severity": a.severity,
                                                          "window": a.window, "bad_runs": a.bad_runs})}]
            items += [{"item_id": f"alert:{a.alert_id}:run:{rid}", "ts": a.fired_at, "kind": "affected",
                       "run_id": rid, "step": None, "detail": None} for rid in a.bad_runs]
            _attach(db, inc, items)
        touched.append(inc["incident_id"])
    return touched


def scan_verdicts(store: Any, cfg: GroupingConfig | None = None, *, since: float | None = None) -> list[str]:
    """Group failed verdicts not yet in an incident; returns the ids of incidents opened or extended."""
    cfg = cfg or GroupingConfig()
    ensure_tables(store)
    sql = ("select v.id, v.run_id, v.step, v.error_class, v.severity, v.message, v.plugin, v.ts, r.agent, r.domain, "
           "r.framework from verdicts v join runs r on r.run_id = v.run_id where v.ok = 0 "
           "and ('verdict:' || v.id) not in (select item_id from incident_items)")
    params: list[Any] = []
    if since is not None:
        sql += " and v.ts >= ?"
        params.append(since)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in store._rows(sql + " order by v.ts", params):
        groups[f"verdict:{r['error_class'] or 'unknown'}:{_agent_key(r)}"].append(r)
    touched: list[str] = []
    for key, rows in groups.items():
        inc = _active(store, key)
        pending: list[dict[str, Any]] = []
        with store.transaction() as db:
            for r in rows:
                item = {"item_id": f"verdict:{r['id']}", "ts": r["ts"], "kind": "verdict", "run_id": r["run_id"],
                        "step": r["step"], "detail": json.dumps({"error_class": r["error_class"],
                                                                 "message": r["message"], "plugin": r["plugin"]})}
                if inc is not None and r["ts"] - inc["updated_at"] <= cfg.window_s:
                    _attach(db, inc, [item])
                    continue
                pending = [p for p in pending if r["ts"] - p["ts"] <= cfg.window_s] + [item]
                if len({p["run_id"] for p in pending}) >= cfg.min_runs:
                    inc = _open(db, key=key, kind="verdict", ts=pending[0]["ts"], agent=_agent_key(r),
                                error_class=r["error_class"], severity=r["severity"],
                                title=f"repeated {r['error_class'] or 'failed'} verdicts ({_agent_key(r)})")
                    _attach(db, inc, pending)
                    pending = []
        if inc is not None:
            touched.append(inc["incident_id"])
    return sorted(set(touched))


def list_incidents(store: Any, status: str | None = None) -> list[dict[str, Any]]:
    ensure_tables(store)
    if status:
        return store._rows("select * from incidents where status = ? order by opened_at desc", [status])
    return store._rows("select * from incidents order by opened_at desc")


def get_incident(store: Any, incident_id: str) -> dict[str, Any] | None:
    ensure_tables(store)
    rows = store._rows("select * from incidents where incident_id = ?", [incident_id])
    if not rows:
        rows = store._rows("select * from incidents where incident_id like ? limit 2", [incident_id + "%"])
    return rows[0] if len(rows) == 1 else None


def transition(store: Any, incident_id: str, status: str, *, note: str | None = None,
               now: float | None = None) -> dict[str, Any]:
    """Acknowledge or resolve an incident (a resolved one cannot be acknowledged again)."""
    if status not in ("acknowledged", "resolved"):
        raise ValueError(f"cannot move an incident to {status!r}")
    inc = get_incident(store, incident_id)
    if inc is None:
        raise LookupError(f"no incident {incident_id!r}")
    if inc["status"] == "resolved":
        raise ValueError(f"incident {inc['incident_id']} is already resolved")
    if status == "acknowledged" and inc["status"] == "acknowledged":
        return inc
    now = time.time() if now is None else now
    field = "acknowledged_at" if status == "acknowledged" else "resolved_at"
    with store.transaction() as db:
        db.table("incidents").update(inc["incident_id"], {"status": status, field: now,
                                                          **({"note": note} if note else {})})
        db.table("incident_items").insert({"item_id": f"{status}:{inc['incident_id']}", "incident_id":
                                           inc["incident_id"], "ts": now, "kind": status, "run_id": None,
                                           "step": None, "detail": json.dumps({"note": note})}, replace=True)
    return {**inc, "status": status, field: now}


# ------------------------------------------------------------------------------------------ postmortem
def _t(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _explain(store: Any, run_ids: list[str], packs: list[str]) -> dict[str, Any]:
    """Decisive steps through ``immunity explain`` (the learning code); a run it cannot explain
    gets the reason instead."""
    out: dict[str, Any] = {}
    try:
        from immunity.learning.data import read_runs
        from immunity.learning.explain import explain_run

        items = read_runs([], "auto", store=store.path, domain=None, on_problem=lambda m: None)
    except Exception as exc:  # the learning extras may be missing; the postmortem still renders
        return {rid: f"explain unavailable: {exc}" for rid in run_ids}
    for rid in run_ids:
        try:
            out[rid] = explain_run(rid, items, packs)
        except Exception as exc:
            out[rid] = f"explain unavailable: {exc}"
    return out


def postmortem(store: Any, incident_id: str, *, packs: list[str] | None = None, max_runs: int = 10) -> str:
    """The incident as a Markdown postmortem: summary, timeline, affected runs, decisive steps,
    patterns matched, interventions tried and how the runs ended after them."""
    inc = get_incident(store, incident_id)
    if inc is None:
        raise LookupError(f"no incident {incident_id!r}")
    iid = inc["incident_id"]
    items = store._rows("select * from incident_items where incident_id = ? order by ts, item_id", [iid])
    run_ids = list(dict.fromkeys(it["run_id"] for it in items if it["run_id"]))
    runs = [store.get_run(r) for r in run_ids]
    runs = [r for r in runs if r is not None]
    lines = [f"# Postmortem: {inc['title']}", "",
             f"- incident: `{iid}` ({inc['kind']}, key `{inc['key']}`)",
             f"- status: **{inc['status']}**" + (f" ({inc['note']})" if inc.get("note") else ""),
             f"- opened {_t(inc['opened_at'])}; last activity {_t(inc['updated_at'])}; acknowledged "
             f"{_t(inc.get('acknowledged_at'))}; resolved {_t(inc.get('resolved_at'))}",
             f"- {len(run_ids)} affected run(s); {sum(r.outcome.value == 'failure' for r in runs)} failed, "
             f"{sum(r.outcome.value == 'success' for r in runs)} succeeded", ""]
    lines += ["## Timeline", "", "Incident items, and for each affected run its start, failed verdicts, "
              "interventions, recoveries and end.", "", "| time (UTC) | what | run | step | detail |",
              "|---|---|---|---|---|"]
    rows: list[tuple[float, str, str, Any, str]] = []
    for it in items:
        if it["kind"] == "affected":
            continue
        d = json.loads(it["detail"] or "null") or {}
        text = d.get("message") or d.get("note") or ""
        if it["kind"] == "verdict":
            text = f"{d.get('error_class')}: {d.get('message') or ''} ({d.get('plugin')})"
        rows.append((it["ts"], it["kind"], it["run_id"] or "", it["step"], text))
    seen = {(it["run_id"], it["step"]) for it in items if it["kind"] == "verdict"}
    for r in runs[:max_runs]:
        rows.append((r.started_at, "run started", r.run_id, None, r.task or ""))
        for v in store.verdicts(r.run_id):
            if not v.ok and (r.run_id, v.step) not in seen:
                rows.append((v.ts, "verdict", r.run_id, v.step, f"{v.error_class}: {v.message}"))
        for iv in store.interventions(r.run_id):
            rows.append((iv.ts, f"intervention ({iv.kind.value})", r.run_id, iv.step, iv.text))
        for rc in store.recoveries(r.run_id):
            rows.append((rc.ts, f"recovery ({rc.kind.value})", r.run_id, rc.step, rc.reason or ""))
        if r.ended_at:
            rows.append((r.ended_at, "run ended", r.run_id, None, f"{r.outcome.value}, {r.status}: "
                                                                   f"{(r.final_answer or '')[:100]}"))
    for ts, kind, rid, step, text in sorted(rows, key=lambda x: x[0] or 0.0):
        lines.append(f"| {_t(ts)[11:19]} | {kind} | {rid[-16:]} | {'' if step is None else step} | "
                     f"{_md(text)[:160]} |")
    lines += ["", "## Affected runs", "", "| run | agent / domain / framework | task | outcome | status | steps |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| `{r.run_id}` | {r.agent or '-'} / {r.domain or '-'} / {r.framework or '-'} | "
                     f"{_md(r.task or '')[:60]} | {r.outcome.value} | {r.status} | {r.steps} |")
    failed = [r.run_id for r in runs if r.outcome.value == "failure"][:max_runs]
    lines += ["", "## Decisive steps (`immunity explain`)", ""]
    if not failed:
        lines.append("No failed run among the affected runs.")
    for rid, ex in _explain(store, failed, packs or []).items():
        if isinstance(ex, str):
            lines.append(f"- `{rid}`: {ex}")
            continue
        lines.append(f"- `{rid}`: step {ex['step']} [{ex['action_type']}] {ex.get('tool') or ''} "
                     f"(method: {ex['method']}; class: {ex.get('error_class') or '-'})")
        for ev in ex.get("evidence", [])[:4]:
            lines.append(f"  - {_line(ev)}")
        if ex.get("snippet"):
            lines.append(f"  - step content: `{_line(ex['snippet'])[:200]}`")
    ivs = [iv for rid in run_ids for iv in store.interventions(rid)]
    lines += ["", "## Patterns matched", ""]
    pats: dict[str, int] = defaultdict(int)
    for rid in run_ids:
        for v in store.verdicts(rid):
            pid = (v.evidence or {}).get("pattern_id") or (v.evidence or {}).get("pattern")
            if pid:
                pats[str(pid)] += 1
    for iv in ivs:
        if iv.pattern_id:
            pats[iv.pattern_id] += 1
    classes: dict[str, int] = defaultdict(int)
    for it in items:
        if it["kind"] == "verdict":
            classes[(json.loads(it["detail"] or "{}") or {}).get("error_class") or "?"] += 1
    if classes:
        lines.append("Error classes: " + ", ".join(f"{c} x{n}" for c, n in sorted(classes.items())))
    lines.append("Patterns: " + (", ".join(f"`{p}` x{n}" for p, n in sorted(pats.items())) or "none matched"))
    lines += ["", "## Interventions tried", ""]
    if not ivs:
        lines.append("None.")
    else:
        by: dict[tuple[str, str], list[Any]] = defaultdict(list)
        outcome = {r.run_id: r.outcome.value for r in runs}
        for iv in ivs:
            by[(iv.kind.value if hasattr(iv.kind, "value") else str(iv.kind), iv.error_class or "-")].append(iv)
        lines += ["| kind | class | tried | delivered | runs then succeeded | runs then failed |", "|---|---|---|---|---|---|"]
        for (kind, cls), group in sorted(by.items()):
            rs = {iv.run_id for iv in group}
            lines.append(f"| {kind} | {cls} | {len(group)} | {sum(iv.delivered for iv in group)} | "
                         f"{sum(outcome.get(r) == 'success' for r in rs)} | {sum(outcome.get(r) == 'failure' for r in rs)} |")
    return "\n".join(lines) + "\n"


def _line(text: str) -> str:
    return str(text).replace("\n", " ").replace("`", "'")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
