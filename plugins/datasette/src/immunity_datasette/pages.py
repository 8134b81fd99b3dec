"""The Datasette plugin: immunity's pages and canned queries on a store (read-only).

Pages (``register_routes``):

- ``/-/immunity``: the overview: runs by hour and outcome, SLO alerts, open incidents, chaos
  injections by fault, interventions by kind, links to every canned query;
- ``/-/immunity/runs/<run_id>``: a run's timeline: steps, verdicts, interventions, recoveries and
  chaos injections on one time axis, then the steps as a table;
- ``/-/immunity/incidents/<incident_id>``: an incident's postmortem (what ``immunity incident
  report`` writes), rendered.

Canned queries (``get_metadata``) on the immunity database: ``runs``, ``failed_runs``,
``incidents``, ``open_incidents``, ``slo_alerts``, ``patterns``, ``interventions``,
``interventions_by_kind``, ``chaos_injections``. Charts are inline SVG drawn by
:mod:`immunity.report_html` (no script, nothing fetched from the network).
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from datasette import hookimpl
from datasette.utils.asgi import Response
from immunity.report_html import PALETTE, bar_chart, lane_chart

#: The database name ``immunity ui`` serves the store under.
DB_NAME = "immunity"

CANNED: dict[str, dict[str, str]] = {
    "runs": {"title": "Runs, newest first",
             "sql": "select run_id, agent, domain, framework, outcome, status, steps, round(cost, 4) as cost, "
                    "datetime(started_at, 'unixepoch') as started, round(ended_at - started_at, 2) as seconds, task "
                    "from runs order by started_at desc limit 500"},
    "failed_runs": {"title": "Failed or stopped runs",
                    "sql": "select run_id, agent, domain, outcome, status, steps, datetime(started_at, 'unixepoch') "
                           "as started, final_answer from runs where outcome = 'failure' or status = 'stopped' "
                           "order by started_at desc limit 500"},
    "incidents": {"title": "Incidents",
                  "sql": "select incident_id, status, severity, kind, title, agent, runs, items, "
                         "datetime(opened_at, 'unixepoch') as opened, datetime(resolved_at, 'unixepoch') as resolved "
                         "from incidents order by opened_at desc"},
    "open_incidents": {"title": "Open and acknowledged incidents",
                       "sql": "select incident_id, status, severity, title, runs, datetime(opened_at, 'unixepoch') "
                              "as opened from incidents where status != 'resolved' order by opened_at desc"},
    "slo_alerts": {"title": "SLO burn-rate alerts",
                   "sql": "select slo, severity, window, status, burn_rate_long, burn_rate_short, factor, runs_long, "
                          "bad_long, round(budget_remaining, 3) as budget_remaining, datetime(fired_at, 'unixepoch') "
                          "as fired, datetime(resolved_at, 'unixepoch') as resolved, message from alerts "
                          "order by fired_at desc"},
    "patterns": {"title": "Failure patterns",
                 "sql": "select pattern_id, pack, error_class, domain from patterns order by pack, error_class"},
    "interventions": {"title": "Interventions, newest first",
                      "sql": "select run_id, step, kind, error_class, pattern_id, variant, delivered, outcome, text, "
                             "datetime(ts, 'unixepoch') as at from interventions order by ts desc limit 500"},
    "interventions_by_kind": {"title": "Interventions by kind and class, with how the runs ended",
                              "sql": "select i.kind, i.error_class, count(*) as tried, sum(i.delivered) as delivered, "
                                     "sum(r.outcome = 'success') as then_succeeded, sum(r.outcome = 'failure') as "
                                     "then_failed from interventions i left join runs r on r.run_id = i.run_id "
                                     "group by i.kind, i.error_class order by tried desc"},
    "chaos_injections": {"title": "Chaos injections",
                         "sql": "select c.experiment, c.fault, c.target, c.name, c.call, c.run_id, r.outcome, "
                                "datetime(c.ts, 'unixepoch') as at, c.detail from chaos_injections c left join runs r "
                                "on r.run_id = c.run_id order by c.ts desc limit 500"},
}

OUTCOME_COLORS = {"success": "#27ae60", "failure": "#c0392b", "unknown": "#95a5a6"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:.7em 1.5em}header a{color:#cde}
main{padding:1em 1.5em;max-width:1200px}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #ddd;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em}.charts{display:flex;flex-wrap:wrap;gap:1em}
.chart{background:#fff;border:1px solid #ddd}table{border-collapse:collapse;background:#fff;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#eef}
.firing,.open{color:#c0392b;font-weight:bold}.resolved{color:#27ae60}.acknowledged{color:#d35400}
code{background:#eee;padding:0 .2em}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _t(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)} - immunity</title>"
            f"<style>{STYLE}</style></head><body><header><a href='/-/immunity'>immunity</a> &middot; "
            f"<a href='/{DB_NAME}'>tables and queries</a></header><main>{body}</main></body></html>")


def _table(rows: list[dict[str, Any]], cols: list[str], links: dict[str, str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    out = ["<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            text = _e(v if not isinstance(v, float) else round(v, 3))
            if links and c in links and v:
                text = f"<a href='{links[c].format(v=_e(v))}'>{text}</a>"
            cls = f" class='{_e(v)}'" if c == "status" else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


async def _rows(db: Any, sql: str, params: Any = None) -> list[dict[str, Any]]:
    try:
        res = await db.execute(sql, params or [])
    except Exception:  # a table this store has not got yet (no SLO evaluated, no chaos run)
        return []
    cols = [c for c in res.columns]
    return [dict(zip(cols, tuple(r), strict=True)) for r in res.rows]


def _db(datasette: Any) -> Any:
    try:
        return datasette.get_database(DB_NAME)
    except KeyError:
        return datasette.get_database()


async def overview(datasette: Any, request: Any) -> Response:
    db = _db(datasette)
    runs = await _rows(db, "select run_id, outcome, status, started_at, ended_at, steps from runs order by started_at")
    n = len(runs)
    by_outcome: dict[str, int] = defaultdict(int)
    for r in runs:
        by_outcome[r["outcome"] or "unknown"] += 1
    # runs over time: up to 24 buckets over the stored span
    charts = []
    if runs:
        t0, t1 = runs[0]["started_at"], runs[-1]["started_at"]
        span = max(t1 - t0, 1.0)
        nb = min(24, max(1, n // 2))
        width = span / nb
        cats = [datetime.fromtimestamp(t0 + i * width, UTC).strftime("%H:%M:%S") for i in range(nb)]
        stacks = {k: [0.0] * nb for k in ("success", "failure", "unknown")}
        for r in runs:
            i = min(nb - 1, int((r["started_at"] - t0) / width))
            stacks[r["outcome"] if r["outcome"] in stacks else "unknown"][i] += 1
        charts.append(bar_chart(cats, stacks, title="Runs over time by outcome", x_label="run start (UTC)",
                                y_label="runs", colors=OUTCOME_COLORS, cls="runs-chart"))
    chaos = await _rows(db, "select c.fault, r.outcome, count(*) as n from chaos_injections c left join runs r on "
                            "r.run_id = c.run_id group by c.fault, r.outcome")
    if chaos:
        faults = sorted({c["fault"] for c in chaos})
        stacks = {k: [float(sum(c["n"] for c in chaos if c["fault"] == f and (c["outcome"] or "unknown") == k))
                      for f in faults] for k in ("success", "failure", "unknown")}
        charts.append(bar_chart(faults, stacks, title="Chaos injections by fault and the run's outcome",
                                x_label="fault", y_label="injections", colors=OUTCOME_COLORS, cls="chaos-chart"))
    ivs = await _rows(db, "select kind, count(*) as n from interventions group by kind order by n desc")
    if ivs:
        charts.append(bar_chart([i["kind"] for i in ivs], {"interventions": [float(i["n"]) for i in ivs]},
                                title="Interventions by kind", x_label="kind", y_label="count",
                                colors={"interventions": PALETTE[1]}, cls="interventions-chart"))
    alerts = await _rows(db, "select slo, severity, window, status, burn_rate_long, burn_rate_short, factor, "
                             "budget_remaining, fired_at from alerts order by fired_at desc limit 20")
    incidents = await _rows(db, "select incident_id, status, severity, title, runs, opened_at from incidents "
                                "order by opened_at desc limit 20")
    for a in alerts:
        a["fired"] = _t(a.pop("fired_at"))
    for inc in incidents:
        inc["opened"] = _t(inc.pop("opened_at"))
    cards = "".join(f"<div class='card'>{_e(k)}<b>{v}</b></div>" for k, v in
                    [("runs", n), ("succeeded", by_outcome.get("success", 0)), ("failed", by_outcome.get("failure", 0)),
                     ("firing alerts", sum(a["status"] == "firing" for a in alerts)),
                     ("open incidents", sum(i["status"] != "resolved" for i in incidents))])
    links = " &middot; ".join(f"<a href='/{DB_NAME}/{name}'>{_e(q['title'])}</a>" for name, q in CANNED.items())
    recent = await _rows(db, "select run_id, agent, outcome, status, steps, task from runs order by started_at desc "
                             "limit 15")
    body = (f"<h1>immunity: agents in operation</h1><div class='cards'>{cards}</div>"
            f"<h2>Charts</h2><div class='charts'>{''.join(charts) or '<p>no runs yet</p>'}</div>"
            f"<h2>SLO alerts</h2>{_table(alerts, ['slo', 'severity', 'window', 'status', 'burn_rate_long', 'burn_rate_short', 'factor', 'budget_remaining', 'fired'])}"
            f"<h2>Incidents</h2>{_table(incidents, ['incident_id', 'status', 'severity', 'title', 'runs', 'opened'], {'incident_id': '/-/immunity/incidents/{v}'})}"
            f"<h2>Recent runs</h2>{_table(recent, ['run_id', 'agent', 'outcome', 'status', 'steps', 'task'], {'run_id': '/-/immunity/runs/{v}'})}"
            f"<h2>Queries</h2><p>{links}</p>")
    return Response.html(_page("overview", body))


LANE_COLORS = {"SEARCH": "#2471a3", "EDIT": "#d35400", "EXECUTE": "#8e44ad", "VERIFY": "#16a085", "DONE": "#27ae60",
               "RESPOND": "#7f8c8d", "PLAN": "#95a5a6"}


async def run_page(datasette: Any, request: Any) -> Response:
    db = _db(datasette)
    run_id = request.url_vars["run_id"]
    runs = await _rows(db, "select * from runs where run_id = ?", [run_id])
    if not runs:
        return Response.html(_page("not found", f"<h1>No run {_e(run_id)}</h1>"), status=404)
    run = runs[0]
    steps = await _rows(db, "select idx, action_type, tool, arguments, text, result, error, ts from steps "
                            "where run_id = ? order by idx", [run_id])
    verdicts = await _rows(db, "select step, ok, error_class, severity, message, plugin, block, ts from verdicts "
                               "where run_id = ? and ok = 0 order by id", [run_id])
    ivs = await _rows(db, "select step, kind, error_class, text, delivered, ts from interventions where run_id = ? "
                          "order by ts", [run_id])
    recs = await _rows(db, "select step, kind, reason, ts from recoveries where run_id = ? order by ts", [run_id])
    chaos = await _rows(db, "select fault, name, call, detail, ts from chaos_injections where run_id = ? order by ts",
                        [run_id])
    t0 = run["started_at"] or min([s["ts"] for s in steps if s["ts"]], default=time.time())
    lanes = [
        ("steps", [(s["ts"] - t0, f"step {s['idx']} {s['action_type']} {s['tool'] or ''} "
                                  f"{(s['error'] or s['result'] or s['text'] or '')[:120]}",
                    "#c0392b" if s["error"] else LANE_COLORS.get(s["action_type"] or "", "#555")) for s in steps
                   if s["ts"]]),
        ("chaos faults", [(c["ts"] - t0, f"{c['fault']} on {c['name']} #{c['call']}: {c['detail']}", "#000")
                          for c in chaos]),
        ("verdicts", [(v["ts"] - t0, f"{v['error_class']}: {v['message']}", "#c0392b" if v["block"] else "#e67e22")
                      for v in verdicts if v["ts"]]),
        ("interventions", [(i["ts"] - t0, f"{i['kind']} ({i['error_class']}): {i['text']}", "#2471a3") for i in ivs]),
        ("recoveries", [(r["ts"] - t0, f"{r['kind']}: {r['reason']}", "#8e44ad") for r in recs]),
    ]
    chart = lane_chart(lanes, title=f"Run timeline: {run['run_id']}", x_label="seconds since the run started")
    for s in steps:
        s["content"] = (s["error"] and f"error: {s['error']}") or s["result"] or s["text"] or ""
        s["content"] = s["content"][:240]
        s["arguments"] = (s["arguments"] or "")[:120]
    info = "".join(f"<div class='card'>{_e(k)}<b>{_e(run.get(k))}</b></div>" for k in
                   ("outcome", "status", "steps", "agent", "domain", "framework"))
    body = (f"<h1>Run {_e(run_id)}</h1><p>{_e(run.get('task'))}</p><div class='cards'>{info}</div>"
            f"<h2>Timeline</h2><div class='charts'>{chart}</div>"
            f"<h2>Verdicts</h2>{_table(verdicts, ['step', 'error_class', 'severity', 'block', 'plugin', 'message'])}"
            f"<h2>Interventions</h2>{_table(ivs, ['step', 'kind', 'error_class', 'delivered', 'text'])}"
            f"<h2>Chaos injections</h2>{_table(chaos, ['fault', 'name', 'call', 'detail'])}"
            f"<h2>Steps</h2>{_table(steps, ['idx', 'action_type', 'tool', 'arguments', 'content'])}"
            f"<p>final answer: {_e(run.get('final_answer'))}</p>")
    return Response.html(_page(f"run {run_id}", body))


def markdown_html(md: str) -> str:
    """The small Markdown the postmortem uses (headings, bullets, tables, code, bold) as HTML."""
    out: list[str] = []
    table: list[list[str]] = []

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    def flush_table() -> None:
        if table:
            head, *rest = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            table.clear()

    depth = 0

    def set_depth(d: int) -> None:
        nonlocal depth
        while depth < d:
            out.append("<ul>")
            depth += 1
        while depth > d:
            out.append("</ul>")
            depth -= 1

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                table.append(cells)
            continue
        flush_table()
        bullet = re.match(r"^( *)- (.*)$", line)
        if bullet:
            set_depth(len(bullet.group(1)) // 2 + 1)
            out.append(f"<li>{inline(bullet.group(2))}</li>")
            continue
        set_depth(0)
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    set_depth(0)
    return "\n".join(out)


async def incident_page(datasette: Any, request: Any) -> Response:
    from immunity.incidents import postmortem
    from immunity.store import SQLiteStore

    db = _db(datasette)
    iid = request.url_vars["incident_id"]
    path = db.path
    if not path:
        return Response.html(_page("not available", "<p>postmortems need a file database</p>"), status=404)

    def render() -> str:
        store = SQLiteStore(path, background=False)
        try:
            return postmortem(store, iid)
        finally:
            store.close()

    try:
        md = await _in_thread(render)
    except LookupError as exc:
        return Response.html(_page("not found", f"<h1>{_e(exc)}</h1>"), status=404)
    return Response.html(_page(f"incident {iid}", markdown_html(md)))


async def _in_thread(fn: Any) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn)


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [
        (r"^/-/immunity$", overview),
        (r"^/-/immunity/runs/(?P<run_id>[^/]+)$", run_page),
        (r"^/-/immunity/incidents/(?P<incident_id>[^/]+)$", incident_page),
    ]


@hookimpl
def get_metadata(datasette: Any, key: str, database: str | None, table: str | None) -> dict[str, Any]:
    return {"databases": {DB_NAME: {"queries": {name: dict(q) for name, q in CANNED.items()}}}}


@hookimpl
def menu_links(datasette: Any, actor: Any) -> list[dict[str, str]]:
    return [{"href": "/-/immunity", "label": "immunity overview"}]


def canned_queries_json() -> str:
    return json.dumps(CANNED, indent=2)
