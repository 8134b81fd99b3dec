"""SLOs, burn-rate alerts, alert delivery and incidents, on a real SQLite store filled through the
runtime (FakeRun drives the same session calls an adapter makes)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner
from immunity import hookimpl, incidents, slo
from immunity.cli import build_cli
from immunity.plugins import get_plugin_manager
from immunity.runtime import Runtime
from immunity.testing import FakeRun

SLO_TOML = """
[[slo]]
name = "support-success"
domain = "support"
indicator = "success"
objective = 0.9
period = "1d"
min_runs = 4
windows = [{severity = "page", long = "1h", short = "5m", burn_rate = 5}]

[[slo]]
name = "support-steps"
domain = "support"
indicator = "steps"
threshold = 3
objective = 0.5
period = "1d"
min_runs = 4
windows = [{severity = "ticket", long = "1h", short = "30m", burn_rate = 1.5}]
"""


def _fleet(db: str, outcomes: list[str], *, ended_ago: float = 0.0) -> list[str]:
    rt = Runtime(store=db, domain="support")
    ids = []
    try:
        for i, outcome in enumerate(outcomes):
            run = FakeRun(rt, task=f"refund order {i % 2}", domain="support", agent="support-bot")
            run.tool("get_order_details", {"order_id": "A-1"}, result='{"total": 10.0}')
            if outcome == "failure":
                run.tool("refund", {"order_id": "A-1", "amount": 5.0}, error="refund service error 503")
                run.tool("refund", {"order_id": "A-1", "amount": 5.0}, error="refund service error 503")
            else:
                run.tool("refund", {"order_id": "A-1", "amount": 10.0}, result="Refund of 10.00 issued")
            run.final("done")
            run.end(outcome)
            ids.append(run.run.run_id)
        rt.flush()
        if ended_ago:
            for rid in ids:
                r = rt.store.get_run(rid)
                rt.store.update_run(rid, started_at=r.started_at - ended_ago, ended_at=r.ended_at - ended_ago)
    finally:
        rt.close()
    return ids


def test_parse_and_default_windows_scale_with_the_period():
    f = slo.parse_slos({"slo": [{"name": "a", "indicator": "success", "objective": 0.99, "period": "30d"},
                                {"name": "b", "indicator": "latency", "threshold": 2, "objective": 0.95,
                                 "period": "1d"}]})
    a, b = f.slos
    assert [(w.severity, w.long_s, w.short_s, w.factor) for w in a.windows] == [
        ("page", 3600, 300, 14.4), ("page", 21600, 1800, 6.0), ("ticket", 259200, 21600, 1.0)]
    assert b.windows[0].long_s == pytest.approx(120) and b.windows[0].short_s == pytest.approx(10)
    with pytest.raises(slo.SLOError, match="needs a threshold"):
        slo.parse_slos({"slo": [{"indicator": "steps"}]})
    with pytest.raises(slo.SLOError, match="unknown indicator"):
        slo.parse_slos({"slo": [{"indicator": "vibes"}]})


def test_budget_burn_rates_and_alert_lifecycle(tmp_path):
    db = str(tmp_path / "s.db")
    _fleet(db, ["success"] * 6, ended_ago=7200)   # two hours ago: inside the 1d budget, outside the 1h window
    _fleet(db, ["failure", "failure", "success", "failure"])  # now: 3 of 4 failed
    path = tmp_path / "slo.toml"
    path.write_text(SLO_TOML)
    f = slo.load_slos(path)
    from immunity.store import SQLiteStore

    store = SQLiteStore(db, background=False)
    delivered = []

    class Capture:
        @hookimpl
        def immunity_deliver_alert(self, alert, delivery):
            delivered.append(alert)
            return "captured"

    pm = get_plugin_manager()
    pm.register(Capture())
    try:
        statuses, fired, resolved = slo.check(store, f, pm=pm)
        st = {s.slo.name: s for s in statuses}
        succ = st["support-success"]
        assert (succ.period.total, succ.period.bad) == (10, 3)
        # budget 10% of 10 runs = 1 bad run allowed; 3 spent -> -200% remaining
        assert succ.budget_remaining == pytest.approx(1 - 3 / 1.0)
        w = succ.windows[0]
        assert (w["long_runs"], w["long_bad"]) == (4, 3) and w["burn_rate_long"] == pytest.approx(7.5)
        assert w["firing"] is True
        # steps: failed runs took 4 steps (> 3): 3 of 10 over the 1d budget, 3 of 4 in the window
        steps = st["support-steps"]
        assert steps.period.bad == 3 and steps.windows[0]["burn_rate_long"] == pytest.approx(1.5)
        assert {a.slo for a in fired} == {"support-success", "support-steps"}
        assert {a.slo for a in delivered} == {"support-success", "support-steps"}
        row = store._rows("select * from alerts where slo = 'support-success'")[0]
        assert row["status"] == "firing" and "captured" in row["delivered"] and "logged" in row["delivered"]
        # still firing: not delivered again
        _s, fired2, _r = slo.check(store, f, pm=pm)
        assert fired2 == [] and len(delivered) == 2
        # an hour later nothing is burning any more: resolved
        _s, fired3, resolved3 = slo.check(store, f, pm=pm, now=time.time() + 4000)
        assert fired3 == [] and len(resolved3) == 2
    finally:
        pm.unregister(name=pm.get_name(next(p for p in pm.get_plugins() if isinstance(p, Capture))))
        store.close()


def test_a_failing_delivery_does_not_stop_the_others():
    calls = []

    class Broken:
        @hookimpl
        def immunity_deliver_alert(self, alert, delivery):
            raise RuntimeError("pager down")

    class Works:
        @hookimpl
        def immunity_deliver_alert(self, alert, delivery):
            calls.append(alert.slo)
            return "ok"

    pm = get_plugin_manager()
    pm.register(Broken(), name="broken")
    pm.register(Works(), name="works")
    a = slo.Alert(alert_id="x", slo="s", severity="page", window="1h/5m", burn_rate_long=20, burn_rate_short=20,
                  factor=14.4, runs_long=10, bad_long=5, budget_remaining=0.1, fired_at=time.time(), message="m")
    out = slo.deliver_alert(a, {}, pm=pm)
    assert out["broken"].startswith("error: RuntimeError") and out["works"] == "ok" and calls == ["s"]


def test_webhook_delivery_posts_to_a_local_server():
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        a = slo.Alert(alert_id="x", slo="s", severity="page", window="1h/5m", burn_rate_long=20.0,
                      burn_rate_short=30.0, factor=14.4, runs_long=10, bad_long=5, budget_remaining=0.1,
                      fired_at=1.0, message="burning", bad_runs=["run_1"])
        out = slo.deliver_alert(a, {"webhook": url})
        assert out["immunity.operate"] == "logged; webhook 202"
        assert got == [{"type": "immunity.alert", **a.as_dict()}]
    finally:
        server.shutdown()
        server.server_close()


def test_repeated_verdicts_become_one_incident_with_a_lifecycle_and_postmortem(tmp_path):
    db = str(tmp_path / "i.db")
    _fleet(db, ["success", "success"])
    failed = _fleet(db, ["failure", "failure", "failure"])
    from immunity.store import SQLiteStore

    store = SQLiteStore(db, background=False)
    try:
        touched = incidents.scan_verdicts(store, incidents.GroupingConfig(min_runs=3))
        assert len(touched) >= 1
        rows = incidents.list_incidents(store)
        inc = next(r for r in rows if r["kind"] == "verdict" and r["runs"] == 3)
        assert inc["status"] == "open" and inc["agent"] == "support-bot"
        # idempotent: scanning again attaches nothing new
        before = store._rows("select count(*) as n from incident_items")[0]["n"]
        incidents.scan_verdicts(store)
        assert store._rows("select count(*) as n from incident_items")[0]["n"] == before
        incidents.transition(store, inc["incident_id"][:10], "acknowledged", note="on it")
        assert incidents.get_incident(store, inc["incident_id"])["status"] == "acknowledged"
        md = incidents.postmortem(store, inc["incident_id"])
        assert md.startswith("# Postmortem: repeated")
        for rid in failed:
            assert rid in md
        assert "## Timeline" in md and "| acknowledged |" in md
        assert "## Decisive steps" in md and "method: alignment" in md   # successful runs of the same task
        assert "## Interventions tried" in md and "| hint |" in md
        incidents.transition(store, inc["incident_id"], "resolved")
        with pytest.raises(ValueError, match="already resolved"):
            incidents.transition(store, inc["incident_id"], "acknowledged")
    finally:
        store.close()


def test_cli_slo_status_and_incident_commands(tmp_path):
    db = str(tmp_path / "c.db")
    _fleet(db, ["failure", "failure", "failure", "failure", "success"])
    path = tmp_path / "slo.toml"
    path.write_text(SLO_TOML)
    runner = CliRunner()
    res = runner.invoke(build_cli(), ["slo", "status", str(path), "--store", db], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "support-success" in res.output and "FIRING" in res.output and "ALERT [page]" in res.output
    res = runner.invoke(build_cli(), ["incident", "list", "--store", db, "--json"], catch_exceptions=False)
    rows = json.loads(res.output)
    slo_inc = next(r for r in rows if r["kind"] == "slo" and r["slo"] == "support-success")
    res = runner.invoke(build_cli(), ["incident", "ack", slo_inc["incident_id"], "--store", db])
    assert res.exit_code == 0 and "acknowledged" in res.output
    out = tmp_path / "pm.md"
    res = runner.invoke(build_cli(), ["incident", "report", slo_inc["incident_id"], "--store", db, "-o", str(out)])
    assert res.exit_code == 0, res.output
    md = out.read_text()
    assert "SLO support-success" in md and "| alert |" in md and "4 failed" in md
    res = runner.invoke(build_cli(), ["incident", "resolve", slo_inc["incident_id"], "--store", db])
    assert res.exit_code == 0
    res = runner.invoke(build_cli(), ["incident", "list", "--store", db, "--status", "resolved"])
    assert slo_inc["incident_id"] in res.output


def test_every_indicator_counts_good_and_bad_runs():
    f = slo.parse_slos({"slo": [
        {"name": "s", "indicator": "success"}, {"name": "st", "indicator": "steps", "threshold": 5},
        {"name": "l", "indicator": "latency", "threshold": 2.0}, {"name": "c", "indicator": "cost", "threshold": 0.1},
        {"name": "n", "indicator": "not_stopped"}]})
    s, st, lat, cost, ns = f.slos
    row = {"outcome": "unknown", "status": "finished", "steps": 5, "cost": 0.2, "started_at": 10.0, "ended_at": 12.5,
           "blocks": 0}
    assert slo.is_good(s, row) is None            # unknown outcome: not counted
    assert slo.is_good(st, row) is True and slo.is_good(lat, row) is False and slo.is_good(cost, row) is False
    assert slo.is_good(ns, row) is True
    assert slo.is_good(ns, {**row, "blocks": 1}) is False and slo.is_good(ns, {**row, "status": "stopped"}) is False
    assert "runs take <= 5 steps" in st.describe()
