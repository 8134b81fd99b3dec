"""Service-level objectives for agents: error budgets and multi-window, multi-burn-rate alerts.

An SLO file (TOML, read with the standard library) declares objectives per agent, domain or
framework::

    [alerts]
    webhook = "https://hooks.example.com/immunity"   # optional; the log delivery is always on

    [[slo]]
    name = "support-success"
    domain = "support"              # filters: agent, domain, framework (all optional)
    indicator = "success"           # success | steps | latency | cost | not_stopped
    objective = 0.95                # fraction of runs that must be good
    period = "30d"                  # the error budget's window

    [[slo]]
    name = "support-steps-p95"
    domain = "support"
    indicator = "steps"
    threshold = 12                  # a run is good when it took at most 12 steps
    objective = 0.95                # "p95 of steps <= 12"

Every SLO is a ratio of good runs to counted runs over ended runs (``ended_at`` set), so p95
objectives ("95% of runs within N steps / N seconds / N dollars") and rates share one budget
arithmetic. ``success`` counts only runs with a known outcome; ``not_stopped`` counts a run bad
when immunity stopped it or blocked one of its steps.

Alerts follow the SRE workbook's multi-window, multi-burn-rate recipe: an alert fires when the
burn rate (error rate divided by the budget ``1 - objective``) is above a factor over *both* a long
window and a short window. The defaults are the workbook's for a 30-day period (page: 1h/5m at
14.4 and 6h/30m at 6; ticket: 3d/6h at 1), scaled to the SLO's period, so a 1-day SLO pages
on 2m/10s windows. A window with fewer than ``min_runs`` runs never fires.

Alerts are stored in the ``alerts`` table; one that keeps firing is delivered once and updated;
it resolves when it stops firing. Delivery goes through the ``immunity_deliver_alert`` hook; core
ships a log delivery and a webhook delivery (JSON POST) switched on by ``[alerts] webhook``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import tomllib
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pluggy

log = logging.getLogger("immunity.slo")
hookimpl = pluggy.HookimplMarker("immunity")

INDICATORS = ("success", "steps", "latency", "cost", "not_stopped")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The SRE workbook's windows for a 30-day SLO: (severity, long, short, burn-rate factor).
WORKBOOK_30D: tuple[tuple[str, float, float, float], ...] = (
    ("page", 3600.0, 300.0, 14.4),
    ("page", 6 * 3600.0, 1800.0, 6.0),
    ("ticket", 3 * 86400.0, 6 * 3600.0, 1.0),
)
_PERIOD_30D = 30 * 86400.0


class SLOError(ValueError):
    """An SLO file that cannot be used (the message says which entry and why)."""


def parse_duration(value: Any) -> float:
    """``"30d"``, ``"6h"``, ``"5m"``, ``"90s"`` or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(value))
    if not m:
        raise SLOError(f"not a duration: {value!r} (use e.g. 30d, 6h, 5m, 90s)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Window:
    severity: str
    long_s: float
    short_s: float
    factor: float


@dataclass
class SLO:
    name: str
    indicator: str
    objective: float
    period_s: float = _PERIOD_30D
    threshold: float | None = None
    agent: str | None = None
    domain: str | None = None
    framework: str | None = None
    min_runs: int = 5
    windows: list[Window] = field(default_factory=list)

    @property
    def budget(self) -> float:
        return 1.0 - self.objective

    def describe(self) -> str:
        what = {"success": "runs succeed", "not_stopped": "runs are not stopped or blocked",
                "steps": f"runs take <= {self.threshold:g} steps" if self.threshold is not None else "",
                "latency": f"runs take <= {self.threshold:g} s" if self.threshold is not None else "",
                "cost": f"runs cost <= {self.threshold:g}" if self.threshold is not None else ""}[self.indicator]
        scope = ", ".join(f"{k}={v}" for k, v in (("agent", self.agent), ("domain", self.domain),
                                                  ("framework", self.framework)) if v) or "all runs"
        return f"{self.objective:.2%} of {what} ({scope}) over {_human(self.period_s)}"


@dataclass
class SLOFile:
    slos: list[SLO]
    delivery: dict[str, Any] = field(default_factory=dict)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_slos(data: dict[str, Any]) -> SLOFile:
    entries = data.get("slo", [])
    if not isinstance(entries, list) or not entries:
        raise SLOError("an SLO file needs at least one [[slo]] table")
    slos, seen = [], set()
    for i, e in enumerate(entries):
        name = e.get("name") or f"slo-{i + 1}"
        if name in seen:
            raise SLOError(f"two SLOs are named {name!r}")
        seen.add(name)
        ind = e.get("indicator", "success")
        if ind not in INDICATORS:
            raise SLOError(f"SLO {name!r}: unknown indicator {ind!r}; known: {', '.join(INDICATORS)}")
        obj = float(e.get("objective", 0.99))
        if not 0 < obj < 1:
            raise SLOError(f"SLO {name!r}: objective must be between 0 and 1 (exclusive), got {obj}")
        thr = e.get("threshold")
        if ind in ("steps", "latency", "cost") and thr is None:
            raise SLOError(f"SLO {name!r}: indicator {ind!r} needs a threshold")
        period = parse_duration(e.get("period", "30d"))
        if "windows" in e:
            windows = [Window(w.get("severity", "page"), parse_duration(w["long"]), parse_duration(w["short"]),
                              float(w["burn_rate"])) for w in e["windows"]]
        else:
            scale = period / _PERIOD_30D
            windows = [Window(sev, lo * scale, sh * scale, f) for sev, lo, sh, f in WORKBOOK_30D]
        slos.append(SLO(name=name, indicator=ind, objective=obj, period_s=period,
                        threshold=None if thr is None else float(thr), agent=e.get("agent"), domain=e.get("domain"),
                        framework=e.get("framework"), min_runs=int(e.get("min_runs", 5)), windows=windows))
    return SLOFile(slos=slos, delivery=dict(data.get("alerts", {})))


def load_slos(path: str | Path) -> SLOFile:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SLOError(f"cannot read SLO file {path}: {exc}") from exc
    return parse_slos(data)


# ------------------------------------------------------------------------------------------ figures
def _runs(store: Any, slo: SLO, since: float, until: float) -> list[dict[str, Any]]:
    where = ["ended_at is not null", "ended_at > ?", "ended_at <= ?"]
    params: list[Any] = [since, until]
    for col in ("agent", "domain", "framework"):
        val = getattr(slo, col)
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    sql = ("select r.run_id, r.outcome, r.status, r.steps, r.cost, r.started_at, r.ended_at, "
           "(select count(*) from verdicts v where v.run_id = r.run_id and v.block = 1) as blocks "
           "from runs r where " + " and ".join(where) + " order by ended_at")
    return list(store._rows(sql, params))


def is_good(slo: SLO, row: dict[str, Any]) -> bool | None:
    """Whether a run is good for this SLO; ``None`` when it does not count (unknown outcome)."""
    ind, thr = slo.indicator, slo.threshold
    if ind == "success":
        return {"success": True, "failure": False}.get(row["outcome"])
    if ind == "not_stopped":
        return row["status"] != "stopped" and not row["blocks"]
    assert thr is not None
    if ind == "steps":
        return (row["steps"] or 0) <= thr
    if ind == "cost":
        return (row["cost"] or 0.0) <= thr
    return (row["ended_at"] - row["started_at"]) <= thr


@dataclass
class WindowFigure:
    seconds: float
    total: int
    bad: int

    @property
    def error_rate(self) -> float | None:
        return self.bad / self.total if self.total else None


def window_figure(store: Any, slo: SLO, seconds: float, now: float) -> tuple[WindowFigure, list[str]]:
    rows = _runs(store, slo, now - seconds, now)
    counted = [(r["run_id"], is_good(slo, r)) for r in rows]
    counted = [(rid, g) for rid, g in counted if g is not None]
    bad = [rid for rid, g in counted if not g]
    return WindowFigure(seconds, len(counted), len(bad)), bad


def burn_rate(fig: WindowFigure, slo: SLO) -> float | None:
    rate = fig.error_rate
    return None if rate is None else rate / slo.budget


@dataclass
class Alert:
    """A firing burn-rate alert."""

    alert_id: str
    slo: str
    severity: str
    window: str
    burn_rate_long: float
    burn_rate_short: float
    factor: float
    runs_long: int
    bad_long: int
    budget_remaining: float | None
    fired_at: float
    agent: str | None = None
    domain: str | None = None
    framework: str | None = None
    bad_runs: list[str] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SLOStatus:
    slo: SLO
    period: WindowFigure
    budget_remaining: float | None   # 1.0 = untouched, 0 = spent, < 0 = overspent
    windows: list[dict[str, Any]]
    firing: list[Alert]

    @property
    def sli(self) -> float | None:
        r = self.period.error_rate
        return None if r is None else 1.0 - r

    def as_dict(self) -> dict[str, Any]:
        return {"slo": self.slo.name, "description": self.slo.describe(), "objective": self.slo.objective,
                "runs": self.period.total, "bad": self.period.bad, "sli": self.sli,
                "budget_remaining": self.budget_remaining, "windows": self.windows,
                "firing": [a.as_dict() for a in self.firing]}


def evaluate_slo(store: Any, slo: SLO, now: float | None = None) -> SLOStatus:
    now = time.time() if now is None else now
    period, _ = window_figure(store, slo, slo.period_s, now)
    allowed = slo.budget * period.total
    remaining = None if period.total == 0 else 1.0 - (period.bad / allowed if allowed else math.inf)
    windows, firing = [], []
    for w in slo.windows:
        lo, bad_runs = window_figure(store, slo, w.long_s, now)
        sh, _ = window_figure(store, slo, w.short_s, now)
        bl, bs = burn_rate(lo, slo), burn_rate(sh, slo)
        fires = (bl is not None and bs is not None and lo.total >= slo.min_runs and bl >= w.factor and bs >= w.factor)
        label = f"{_human(w.long_s)}/{_human(w.short_s)}"
        windows.append({"severity": w.severity, "window": label, "factor": w.factor, "long_runs": lo.total,
                        "long_bad": lo.bad, "burn_rate_long": bl, "short_runs": sh.total, "burn_rate_short": bs,
                        "firing": fires})
        if fires:
            assert bl is not None and bs is not None
            firing.append(Alert(
                alert_id=f"{slo.name}:{w.severity}:{label}", slo=slo.name, severity=w.severity, window=label,
                burn_rate_long=round(bl, 3), burn_rate_short=round(bs, 3), factor=w.factor, runs_long=lo.total,
                bad_long=lo.bad, budget_remaining=remaining, fired_at=now, agent=slo.agent, domain=slo.domain,
                framework=slo.framework, bad_runs=bad_runs[-50:],
                message=(f"SLO {slo.name} ({slo.describe()}) is burning its error budget {bl:.1f}x over "
                         f"{_human(w.long_s)} and {bs:.1f}x over {_human(w.short_s)} (alert at {w.factor:g}x); "
                         f"{lo.bad} of {lo.total} runs bad")))
    return SLOStatus(slo=slo, period=period, budget_remaining=remaining, windows=windows, firing=firing)


# ------------------------------------------------------------------------------------------ alert state
def ensure_tables(store: Any) -> None:
    """Create the ``alerts`` table (and the incident tables) if this store has not got them yet."""
    with store.transaction(flush=False) as db:
        db.table("alerts").create({
            "alert_id": str, "slo": str, "severity": str, "window": str, "status": str, "fired_at": float,
            "last_seen": float, "resolved_at": float, "burn_rate_long": float, "burn_rate_short": float,
            "factor": float, "runs_long": int, "bad_long": int, "budget_remaining": float, "agent": str,
            "domain": str, "framework": str, "bad_runs": str, "message": str, "delivered": str,
        }, pk="alert_id", if_not_exists=True)


def _open_alerts(store: Any) -> dict[str, dict[str, Any]]:
    return {r["alert_id"]: r for r in store._rows("select * from alerts where status = 'firing'")}


def check(store: Any, slo_file: SLOFile, *, now: float | None = None, pm: Any = None,
          deliver: bool = True) -> tuple[list[SLOStatus], list[Alert], list[str]]:
    """Evaluate every SLO, record alerts, deliver the newly firing ones once, resolve the ones that
    stopped. Returns (statuses, newly fired alerts, ids of alerts resolved now).

    A firing alert's row id is ``<slo>:<severity>:<window>:<fired_at>``, so one that fires again
    after it resolved is a new alert."""
    now = time.time() if now is None else now
    ensure_tables(store)
    statuses = [evaluate_slo(store, s, now) for s in slo_file.slos]
    open_ = {r["alert_id"].rsplit(":", 1)[0]: r for r in _open_alerts(store).values()}
    new: list[Alert] = []
    firing_keys = set()
    with store.transaction() as db:
        for st in statuses:
            for a in st.firing:
                firing_keys.add(a.alert_id)
                if a.alert_id in open_:
                    db.table("alerts").update(open_[a.alert_id]["alert_id"], {
                        "last_seen": now, "burn_rate_long": a.burn_rate_long, "burn_rate_short": a.burn_rate_short,
                        "runs_long": a.runs_long, "bad_long": a.bad_long, "budget_remaining": a.budget_remaining})
                    continue
                a.alert_id = f"{a.alert_id}:{now:.3f}"
                row = {**a.as_dict(), "status": "firing", "last_seen": now, "bad_runs": json.dumps(a.bad_runs)}
                db.table("alerts").insert(row)
                new.append(a)
        resolved = [r["alert_id"] for key, r in open_.items() if key not in firing_keys]
        for rid in resolved:
            db.table("alerts").update(rid, {"status": "resolved", "resolved_at": now})
    if deliver and new:
        for a in new:
            results = deliver_alert(a, slo_file.delivery, pm=pm)
            with store.transaction(flush=False) as db:
                db.table("alerts").update(a.alert_id, {"delivered": json.dumps(results)})
    return statuses, new, resolved


def deliver_alert(alert: Alert, delivery: dict[str, Any], *, pm: Any = None) -> dict[str, str]:
    """Call every ``immunity_deliver_alert`` implementation, isolating each (a broken delivery does
    not stop the others). Returns ``{plugin: "ok" | error}``."""
    from immunity.plugins import call_each, get_plugin_manager

    pm = pm or get_plugin_manager()
    out: dict[str, str] = {}

    def on_error(plugin: str, exc: BaseException) -> None:
        log.warning("alert delivery by %s failed: %s", plugin, exc)
        out[plugin] = f"error: {type(exc).__name__}: {exc}"

    for plugin, res in call_each(pm, "immunity_deliver_alert", on_error, alert=alert, delivery=delivery):
        out[plugin] = str(res)
    return out


# ------------------------------------------------------------------------------------------ built-in deliveries
@hookimpl(trylast=True)
def immunity_deliver_alert(alert: Alert, delivery: dict[str, Any]) -> str | None:
    """Built-in deliveries: always a log record; a JSON POST when ``delivery["webhook"]`` is set."""
    log.warning("[%s] %s", alert.severity.upper(), alert.message)
    url = delivery.get("webhook")
    if not url:
        return "logged"
    if not str(url).startswith(("http://", "https://")):
        raise ValueError(f"webhook must be an http(s) URL, got {url!r}")
    body = json.dumps({"type": "immunity.alert", **alert.as_dict()}).encode()
    req = urllib.request.Request(str(url), data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "immunity"})
    timeout = float(delivery.get("timeout_s", 5))
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own URL
        return f"logged; webhook {resp.status}"


def format_status(statuses: list[SLOStatus]) -> str:
    lines = []
    for st in statuses:
        sli = "n/a" if st.sli is None else f"{st.sli:.2%}"
        budget = "n/a" if st.budget_remaining is None else f"{st.budget_remaining:.0%}"
        lines.append(f"{st.slo.name}: {st.slo.describe()}")
        lines.append(f"  runs {st.period.total} (bad {st.period.bad}), SLI {sli}, error budget remaining {budget}")
        for w in st.windows:
            bl = "n/a" if w["burn_rate_long"] is None else f"{w['burn_rate_long']:.1f}x"
            bs = "n/a" if w["burn_rate_short"] is None else f"{w['burn_rate_short']:.1f}x"
            flag = "FIRING" if w["firing"] else "ok"
            lines.append(f"  {w['severity']:<6} {w['window']:<10} burn {bl:>7} long ({w['long_runs']} runs) "
                         f"{bs:>7} short ({w['short_runs']} runs), alert at {w['factor']:g}x: {flag}")
    return "\n".join(lines)
