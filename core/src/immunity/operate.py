"""Built-in plugin: operating agents. The alert deliveries (log, webhook) and the commands
``immunity slo``, ``immunity incident``, ``immunity chaos`` and ``immunity ui``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import pluggy

from immunity.slo import immunity_deliver_alert  # noqa: F401 - the built-in delivery, registered with this module

hookimpl = pluggy.HookimplMarker("immunity")


def _store_option(f: Any) -> Any:
    from immunity.cli import default_store

    return click.option("--store", "store_path", default=default_store, show_default="immunity.db or $IMMUNITY_STORE",
                        help="The SQLite store to read.")(f)


def _open(path: str) -> Any:
    from immunity.store import SQLiteStore

    if path != ":memory:" and not os.path.exists(path):
        raise click.ClickException(f"no store at {path}")
    return SQLiteStore(path, background=False)


def sync(store: Any, slo_path: str | None, *, now: float | None = None, deliver: bool = True, pm: Any = None,
         window_s: float = 3600.0, min_runs: int = 3) -> dict[str, Any]:
    """Evaluate the SLOs (alerts fire and are delivered once), then fold new alerts and repeated
    verdicts into incidents. What ``immunity slo status`` and ``immunity incident scan`` run."""
    from immunity import incidents, slo

    cfg = incidents.GroupingConfig(window_s=window_s, min_runs=min_runs)
    out: dict[str, Any] = {"statuses": [], "fired": [], "resolved": [], "incidents": []}
    if slo_path:
        statuses, fired, resolved = slo.check(store, slo.load_slos(slo_path), now=now, pm=pm, deliver=deliver)
        out.update(statuses=statuses, fired=fired, resolved=resolved)
        out["incidents"] += incidents.add_alerts(store, fired, cfg)
    out["incidents"] += incidents.scan_verdicts(store, cfg)
    out["incidents"] = sorted(set(out["incidents"]))
    return out


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    @cli.group()
    def slo() -> None:
        """Service-level objectives: error budgets and burn-rate alerts (see immunity.slo)."""

    @slo.command("status")
    @click.argument("slo_file", type=click.Path(exists=True, dir_okay=False),
                    default=lambda: os.environ.get("IMMUNITY_SLO_FILE", "slo.toml"))
    @_store_option
    @click.option("--now", type=float, default=None, help="Evaluate at this Unix time (default: now).")
    @click.option("--no-deliver", is_flag=True, help="Do not deliver newly firing alerts.")
    @click.option("--json", "as_json", is_flag=True)
    def slo_status(slo_file: str, store_path: str, now: float | None, no_deliver: bool, as_json: bool) -> None:
        """Error budgets and burn rates of the SLOs in SLO_FILE (TOML); newly firing alerts are
        delivered (log, webhook, plugins) and folded into incidents."""
        from immunity.slo import SLOError, format_status

        store = _open(store_path)
        try:
            res = sync(store, slo_file, now=now, deliver=not no_deliver)
        except SLOError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        if as_json:
            click.echo(json.dumps({"slos": [s.as_dict() for s in res["statuses"]],
                                   "fired": [a.as_dict() for a in res["fired"]], "resolved": res["resolved"],
                                   "incidents": res["incidents"]}, indent=2, default=str))
            return
        click.echo(format_status(res["statuses"]))
        for a in res["fired"]:
            click.echo(f"ALERT [{a.severity}] {a.message}")
        for rid in res["resolved"]:
            click.echo(f"resolved: {rid}")
        if res["incidents"]:
            click.echo(f"incidents opened or updated: {', '.join(res['incidents'])}")

    _chaos_commands(cli)

    @cli.group()
    def incident() -> None:
        """Incidents: alerts and repeated verdicts grouped, with a lifecycle and a postmortem."""

    @incident.command("scan")
    @_store_option
    @click.option("--slo-file", default=None, type=click.Path(exists=True, dir_okay=False),
                  help="Also evaluate these SLOs (alerts join incidents).")
    @click.option("--window", "window_s", default=3600.0, show_default=True, help="Grouping window, seconds.")
    @click.option("--min-runs", default=3, show_default=True,
                  help="Runs with the same failed verdict class that open an incident.")
    def incident_scan(store_path: str, slo_file: str | None, window_s: float, min_runs: int) -> None:
        """Fold new alerts and repeated failed verdicts into incidents."""
        store = _open(store_path)
        try:
            res = sync(store, slo_file, window_s=window_s, min_runs=min_runs)
        finally:
            store.close()
        click.echo(f"incidents opened or updated: {', '.join(res['incidents']) or 'none'}")

    @incident.command("list")
    @_store_option
    @click.option("--status", type=click.Choice(["open", "acknowledged", "resolved"]), default=None)
    @click.option("--json", "as_json", is_flag=True)
    def incident_list(store_path: str, status: str | None, as_json: bool) -> None:
        """List incidents, newest first."""
        from immunity.incidents import _t, list_incidents

        store = _open(store_path)
        try:
            rows = list_incidents(store, status)
        finally:
            store.close()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no incidents")
        for r in rows:
            click.echo(f"{r['incident_id']:<26} {r['status']:<13} {r['severity'] or '-':<8} runs={r['runs']:<4} "
                       f"opened {_t(r['opened_at'])}  {r['title']}")

    def _move(store_path: str, incident_id: str, status: str, note: str | None) -> None:
        from immunity.incidents import transition

        store = _open(store_path)
        try:
            inc = transition(store, incident_id, status, note=note)
        except (LookupError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        click.echo(f"{inc['incident_id']}: {status}")

    @incident.command("ack")
    @click.argument("incident_id")
    @click.option("--note", default=None)
    @_store_option
    def incident_ack(incident_id: str, note: str | None, store_path: str) -> None:
        """Acknowledge an incident (someone is on it)."""
        _move(store_path, incident_id, "acknowledged", note)

    @incident.command("resolve")
    @click.argument("incident_id")
    @click.option("--note", default=None)
    @_store_option
    def incident_resolve(incident_id: str, note: str | None, store_path: str) -> None:
        """Resolve an incident (later items open a new one)."""
        _move(store_path, incident_id, "resolved", note)

    @incident.command("report")
    @click.argument("incident_id")
    @_store_option
    @click.option("--pack", "packs", multiple=True, help="Pack for explain when no successful run of the task exists.")
    @click.option("--out", "-o", default=None, help="Write the Markdown here instead of printing it.")
    def incident_report(incident_id: str, store_path: str, packs: tuple[str, ...], out: str | None) -> None:
        """A Markdown postmortem: timeline, affected runs, decisive steps, patterns, interventions."""
        from immunity.incidents import postmortem

        store = _open(store_path)
        try:
            text = postmortem(store, incident_id, packs=list(packs))
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(text)
            click.echo(f"wrote {out}")
        else:
            sys.stdout.write(text)


def _chaos_commands(cli: click.Group) -> None:
    @cli.group()
    def chaos() -> None:
        """Chaos experiments: seeded faults in a protected agent's tool and model calls."""

    @chaos.command("faults")
    def chaos_faults() -> None:
        """The fault kinds an experiment can inject."""
        from immunity.chaos import FAULT_KINDS

        for kind, what in FAULT_KINDS.items():
            click.echo(f"{kind:<13} {what}")

    @chaos.command("run", context_settings={"ignore_unknown_options": True})
    @click.argument("experiment", type=click.Path(exists=True, dir_okay=False))
    @click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
    @click.option("--out", "-o", default=None, help="Also write the injections and the report as JSON here.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def chaos_run(experiment: str, command: tuple[str, ...], out: str | None, as_json: bool) -> None:
        """Run COMMAND (after --) with EXPERIMENT's faults switched on, then report which faults the
        agent and immunity survived, from the runs the agent stored.

        The agent passes its tools and model callables through immunity.chaos.tools() / .model()
        (no-ops outside chaos): immunity chaos run chaos.toml -- python my_agent.py"""
        import subprocess
        import tempfile

        from immunity.chaos import Experiment, format_report, survival
        from immunity.chaos.experiment import ExperimentError
        from immunity.store import SQLiteStore

        try:
            Experiment.load(experiment)
        except ExperimentError as exc:
            raise click.ClickException(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="immunity-chaos-") as tmp:
            dump = os.path.join(tmp, "injections.json")
            env = {**os.environ, "IMMUNITY_CHAOS": os.path.abspath(experiment), "IMMUNITY_CHAOS_OUT": dump}
            rc = subprocess.call(list(command), env=env)
            if not os.path.exists(dump):
                raise click.ClickException(f"the agent (exit {rc}) did not activate the experiment: does it import "
                                           "immunity.chaos and wrap its tools with chaos.tools()?")
            with open(dump, encoding="utf-8") as fh:
                data = json.load(fh)
        stores = [SQLiteStore(p, background=False) for p in data.get("stores", []) if os.path.exists(p)]
        try:
            result = survival(data, stores)
        finally:
            for s in stores:
                s.close()
        result["agent_exit_code"] = rc
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                json.dump({"report": result, **data}, fh, indent=2)
        click.echo(json.dumps(result, indent=2) if as_json else format_report(result))
        if not as_json:
            click.echo(f"agent process exited with {rc}")
        if rc:
            sys.exit(rc)
