"""Built-in plugin: core's trace importers (one per format) and the ``import`` / ``export`` commands."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click
import pluggy

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_importers(register: Any) -> None:
    from immunity.importers.chat import ChatImporter
    from immunity.importers.immunity_format import ImmunityImporter
    from immunity.importers.mini_swe_agent import MiniSweAgentImporter
    from immunity.importers.otlp import OtlpImporter
    from immunity.importers.swe_agent import SweAgentImporter
    from immunity.importers.tau_bench import TauBenchImporter
    from immunity.importers.who_and_when import WhoAndWhenImporter

    for importer in (ChatImporter(), TauBenchImporter(), MiniSweAgentImporter(), SweAgentImporter(),
                     WhoAndWhenImporter(), ImmunityImporter(), OtlpImporter("otlp-json"),
                     OtlpImporter("openinference")):
        register(importer.name, importer)


def _formats() -> list[str]:
    from immunity.importers import FORMATS

    return ["auto", *FORMATS]


def _store_default() -> str:
    from immunity.cli import default_store

    return default_store()


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    @cli.command("import")
    @click.option("--format", "fmt", default="auto", show_default=True,
                  help=f"The trace format: {', '.join(_formats())} (or one a plugin registers).")
    @click.option("--domain", default=None, help="The domain for runs whose format or record names none.")
    @click.option("--store", "store_path", default=_store_default, show_default="immunity.db or $IMMUNITY_STORE",
                  help="The store to write: a SQLite path or a plugin's URL (postgresql://...).")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option("--on-conflict", type=click.Choice(["skip", "replace", "rename"]), default="skip",
                  show_default=True, help="A run whose id is already stored (a live run, an earlier import): keep "
                                          "the stored one, replace it, or import under a new id.")
    @click.option("--progress/--no-progress", default=None,
                  help="Show a progress bar on stderr (default: when stderr is a terminal).")
    @click.argument("paths", nargs=-1, required=True, type=click.Path())
    def import_cmd(fmt: str, domain: str | None, store_path: str, as_json: bool, on_conflict: str,
                   progress: bool | None, paths: tuple[str, ...]) -> None:
        """Read agent trajectories (files or folders) into the store as runs with steps and outcomes.

        Prints what was imported (runs, steps, outcomes, the share of steps no domain rule mapped)
        and every record that could not be read. Exits 1 if nothing could be imported.
        """
        from immunity.importers import import_paths, importers, total_bytes
        from immunity.runtime import Runtime

        rt = Runtime(store=None)
        known = importers(rt)
        if fmt != "auto" and fmt not in known:
            raise click.BadParameter(f"unknown format {fmt!r}; installed: {', '.join(['auto', *sorted(known)])}",
                                     param_hint="--format")
        show = sys.stderr.isatty() if progress is None else progress
        total = total_bytes(list(paths))
        try:
            if show and total:
                with click.progressbar(length=total, label="importing", file=sys.stderr, show_pos=False,
                                       show_percent=True, show_eta=True) as bar:
                    def tick(done: int) -> None:
                        bar.update(max(0, min(done, total) - bar.pos))

                    report = import_paths(list(paths), fmt, store_path, domain=domain, progress=tick, runtime=rt,
                                          on_conflict=on_conflict)
            else:
                report = import_paths(list(paths), fmt, store_path, domain=domain, runtime=rt,
                                      on_conflict=on_conflict)
        except Exception as exc:
            raise click.ClickException(f"import failed: {type(exc).__name__}: {exc}") from exc
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
        else:
            click.echo(report.summary())
            click.echo("store: " + re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", store_path))  # no password
        if report.runs == 0 and report.conflicts and report.conflicts == len(report.problems):
            return  # everything was already there: nothing to do is not an error
        if report.runs == 0:
            click.echo("nothing could be imported" + (f" ({len(report.problems)} problems above)"
                                                       if report.problems else ""), err=True)
            sys.exit(1)

    @cli.command("export")
    @click.option("--store", "store_path", default=_store_default, show_default="immunity.db or $IMMUNITY_STORE",
                  help="The store to read: a SQLite path or a plugin's URL (postgresql://...).")
    @click.option("--run", "run_ids", multiple=True, help="Export only this run (repeat for more; a unique "
                                                           "prefix is enough). Default: every run.")
    @click.option("--source", default=None, help="Export only runs with this source (an import format, ...).")
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                  help="The JSON Lines file to write ('-' for stdout).")
    @click.option("--format", "fmt", type=click.Choice(["immunity", "otlp-json"]), default="immunity",
                  show_default=True, help="immunity's own records, or OpenTelemetry traces (OTLP JSON, one "
                  "trace a line, GenAI semantic conventions).")
    def export_cmd(store_path: str, run_ids: tuple[str, ...], source: str | None, output: str, fmt: str) -> None:
        """Write runs with their steps, events, verdicts, interventions, recoveries and checkpoints as
        JSON Lines: immunity's own format, or with ``--format otlp-json`` one OpenTelemetry trace per
        run. `immunity import --format immunity|otlp-json` reads either back."""
        from immunity.errors import StoreError
        from immunity.importers.immunity_format import export_runs
        from immunity.importers.otlp import export_otlp
        from immunity.locations import open_location

        try:
            store = open_location(store_path, read_only=True)
        except FileNotFoundError:
            raise click.ClickException(f"no store at {store_path}") from None
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            write = export_otlp if fmt == "otlp-json" else export_runs
            n = write(store, output, run_ids=list(run_ids) or None, source=source)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            store.close()
        click.echo(f"exported {n} runs to {output}", err=output == "-")
