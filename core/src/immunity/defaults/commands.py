"""Built-in plugin: core's CLI commands (plugins, doctor, runs, demo)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import pluggy

hookimpl = pluggy.HookimplMarker("immunity")


def _store_option(f: Any) -> Any:
    from immunity.cli import default_store

    return click.option("--store", "store_path", default=default_store, show_default="immunity.db or $IMMUNITY_STORE",
                        help="The store: a SQLite path or a plugin's URL (postgresql://...).")(f)


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    @cli.command()
    @click.option("--all", "show_all", is_flag=True, help="Include core's built-in plugins.")
    def plugins(show_all: bool) -> None:
        """List installed plugins as JSON (distribution, version, entry point, hooks, load error)."""
        from immunity.plugins import get_plugin_manager

        pm = get_plugin_manager()
        infos = [i.as_dict() for i in pm.plugin_infos() if show_all or not i.builtin]
        click.echo(json.dumps(infos, indent=2))

    @cli.command()
    @click.argument("model", required=False)
    @click.option("--out-dir", type=click.Path(file_okay=False), default=None,
                  help="Write one <Model>.schema.json per model into this folder instead of printing.")
    def schema(model: str | None, out_dir: str | None) -> None:
        """Print the JSON schema of immunity's models (or of one MODEL: Event, Step, Run, ...)."""
        import os

        from immunity.models import json_schemas

        schemas = json_schemas()
        if model is not None:
            if model not in schemas:
                raise click.BadParameter(f"unknown model {model!r}; known: {', '.join(schemas)}", param_hint="MODEL")
            schemas = {model: schemas[model]}
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            for name, sch in schemas.items():
                with open(os.path.join(out_dir, f"{name}.schema.json"), "w", encoding="utf-8") as fh:
                    fh.write(json.dumps(sch, indent=2, sort_keys=True) + "\n")
            click.echo(f"wrote {len(schemas)} schemas to {out_dir}")
            return
        click.echo(json.dumps(schemas if model is None else schemas[model], indent=2, sort_keys=True))

    @cli.command()
    def doctor() -> None:
        """Check adapters' frameworks against their supported ranges, and plugins that failed."""
        from immunity.plugins import get_plugin_manager

        pm = get_plugin_manager()
        problems = 0
        click.echo("adapters:")
        try:
            adapters = pm.registry("adapters")
        except Exception as exc:
            adapters = {}
            problems += 1
            click.echo(f"  error collecting adapters: {exc}")
        for name, cls in sorted(adapters.items()):
            version = cls.framework_version()
            ok = cls.version_supported()
            if version is None:
                status = "framework not installed"
            elif ok:
                status = "ok"
            else:
                status, problems = "UNSUPPORTED VERSION", problems + 1
            click.echo(f"  {name:<15} {cls.framework} {version or '-'} (supported {cls.supported}): {status}")
        failed = pm.failed()
        click.echo("plugins that failed to load:" if failed else "plugins: all loaded")
        for info in failed:
            problems += 1
            click.echo(f"  {info.name} ({info.distribution}): {info.error}")
        for kind in ("domains", "verifiers", "selectors", "embedders", "vector_indexes", "stores", "importers",
                     "pattern_packs"):
            try:
                names = sorted(pm.registry(kind))
            except Exception as exc:
                problems += 1
                click.echo(f"{kind}: error: {exc}")
                continue
            click.echo(f"{kind}: {', '.join(names) or '-'}")
        from immunity.cli import default_store

        path = default_store()
        import os

        if os.path.exists(path):
            try:
                from immunity.store import SQLiteStore

                store = SQLiteStore(path, read_only=True)
                errs = store.plugin_errors(limit=5)
                store.close()
                if errs:
                    click.echo(f"recent plugin errors in {path}:")
                    for e in errs:
                        click.echo(f"  run {e['run_id']}: {e['plugin']} in {e['hook']}: {e['error']}")
            except Exception as exc:
                problems += 1
                click.echo(f"store {path}: cannot be read: {exc}")
        if problems:
            click.echo(f"{problems} problem(s) found")
            sys.exit(1)
        click.echo("no problems found")

    @cli.group(invoke_without_command=True)
    @_store_option
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000),
                  help="Show at most this many runs.")
    @click.option("--outcome", type=click.Choice(["success", "failure", "unknown"]), default=None)
    @click.pass_context
    def runs(ctx: click.Context, store_path: str, limit: int, outcome: str | None) -> None:
        """List stored runs (or `runs show RUN` for one run's timeline)."""
        ctx.obj = store_path
        if ctx.invoked_subcommand is not None:
            return
        store = _open(store_path)
        rows = store.runs(limit=limit, outcome=outcome)
        if not rows:
            click.echo(f"no runs in {store_path}")
        else:
            click.echo(f"{'RUN':<36} {'FRAMEWORK':<14} {'DOMAIN':<9} {'OUTCOME':<8} {'STATUS':<10} {'STEPS':>5}  TASK")
        for r in rows:
            click.echo(f"{r.run_id:<36} {r.framework or '-':<14} {r.domain or '-':<9} {r.outcome.value:<8} "
                       f"{r.status:<10} {r.steps:>5}  {(r.task or '')[:40]}")
        store.close()

    @runs.command("show")
    @click.argument("run_id")
    @click.pass_obj
    def runs_show(store_path: str, run_id: str) -> None:
        """Show a stored run as a readable timeline (a unique prefix of the id is enough)."""
        from immunity.timeline import render_run

        store = _open(store_path)
        run = store.get_run(run_id)
        if run is None:
            store.close()
            raise click.ClickException(f"no run {run_id!r} in {store_path}")
        click.echo(render_run(store, run))
        store.close()

    @runs.command("mark")
    @click.argument("run_id")
    @click.argument("outcome", type=click.Choice(["success", "failure", "unknown"]))
    @click.option("--reason", default=None, help="Why (kept with the run).")
    @click.pass_obj
    def runs_mark(store_path: str, run_id: str, outcome: str, reason: str | None) -> None:
        """Give a stored run your verdict (success or failure; unknown takes it back); the hints the
        bandit chose in that run are rewarded with it. A unique prefix of the id is enough."""
        from immunity.outcomes import mark_stored

        store = _open(store_path, read_only=False)
        try:
            run = mark_stored(store, run_id, outcome, reason=reason)
        except KeyError as exc:
            raise click.ClickException(f"no run {run_id!r} in {store_path} (or the prefix is not unique)") from exc
        finally:
            store.close()
        click.echo(f"{run.run_id}: {run.outcome.value}" + (f" ({reason})" if reason else ""))

    @cli.command()
    @click.option("--framework", default=None, help="Which framework's demo to run (default: the first installed "
                                                       "of langgraph, openai_agents, llamaindex, crewai).")
    @_store_option
    def demo(framework: str | None, store_path: str) -> None:
        """Run an agent with a scripted model that fails in a known way, and show immunity catch and
        correct it (offline, no setup)."""
        from immunity.demo import run_demo

        click.echo(run_demo(framework=framework, store=store_path))


def _open(path: str, *, read_only: bool = True) -> Any:
    """The store at ``path``; read commands open it read-only (``mode=ro``), so reading never writes,
    a read-only file can be listed, and a database that is not immunity's is refused."""
    from immunity.errors import StoreError
    from immunity.locations import open_location

    try:
        return open_location(path, read_only=read_only)
    except FileNotFoundError:
        raise click.ClickException(f"no store at {path} (run an agent with immunity first, or pass --store)") from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
