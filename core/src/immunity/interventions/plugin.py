"""Built-in plugin: the ``bandit`` selector, the ``budget`` and ``loops`` verifiers, safe recovery,
and the ``immunity interventions`` / ``immunity replay`` commands.

Switches:

- ``selector="bandit"`` (the default): the rules' choice of action with a learned choice of hint
  wording; with ``bandit={"escalate": True}`` (or a ``ladder``) the per-class escalation ladder,
  which also switches on ``loops``;
- ``Config.options["budget"]`` (or ``verifiers=["budget"]``): token / cost budgets in the loop;
- the recover hook is always on: it only answers for transient errors, fallbacks, open tool
  circuits and rollbacks, and leaves everything else to core's default.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import pluggy

from immunity.models import Event, EventKind, Intervention, InterventionKind, Recovery, Run, Severity, Verdict
from immunity.state import RunState

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_configure(config: Any) -> None:
    options = getattr(config, "options", None) or {}
    if options.get("budget") and "budget" not in config.verifiers:
        config.verifiers.append("budget")
    if config.selector == "bandit" and "loops" not in config.verifiers and options.get("loops", True) is not False:
        from immunity.interventions.selector import escalates

        if escalates(config):  # the ladder climbs on the loops verifier's firings; the rules' choice does not
            config.verifiers.append("loops")


@hookimpl
def immunity_register_selectors(register: Any) -> None:
    from immunity.interventions.selector import BanditSelector

    register("bandit", BanditSelector)


@hookimpl
def immunity_register_verifiers(register: Any) -> None:
    from immunity.interventions.budget import BudgetVerifier
    from immunity.interventions.loops import LoopsVerifier

    register("budget", BudgetVerifier)
    register("loops", LoopsVerifier)


@hookimpl
def immunity_observe(event: Event, run: Run, state: RunState, session: Any) -> None:
    if event.kind == EventKind.MODEL_END and not event.error and "interventions.model_failures" in state.extras:
        state.extras["interventions.model_failures"] = 0


immunity_observe.immunity_kinds = (EventKind.MODEL_END,)  # type: ignore[attr-defined]


@hookimpl
def immunity_intervene(verdicts: list[Verdict], event: Event, run: Run, state: RunState,
                       session: Any) -> Intervention | None:
    """Budget verdicts are carried out as they are, without the tolerance layer: a run over budget
    must be told, blocked and stopped whatever hints it already had."""
    v = next((v for v in verdicts if v.plugin == "budget"), None)
    if v is None:
        return None
    from immunity.interventions.selector import stop_answer

    base: dict[str, Any] = {"error_class": v.error_class, "verdict_plugin": "budget", "source": "budget",
                            "variant": "budget"}
    if v.severity == Severity.CRITICAL:
        budget = state.extras.get("budget")
        return Intervention(kind=InterventionKind.STOP, **base,
                            text=stop_answer(state, v.message, last=getattr(budget, "last_output", None)))
    if v.block and event.kind == EventKind.TOOL_START:
        return Intervention(kind=InterventionKind.BLOCK, text=v.hint or v.message, **base)
    if v.hint and v.hint in session.pending_hints:
        return Intervention(kind=InterventionKind.WARN, text=v.hint, **base)
    return Intervention(kind=InterventionKind.HINT, text=v.hint or v.message, **base)


@hookimpl
def immunity_recover(event: Event, verdicts: list[Verdict], run: Run, state: RunState,
                     session: Any) -> Recovery | None:
    from immunity.interventions.recovery import recover

    rec = recover(event, verdicts, run, state, session)
    if rec is not None and rec.kind.value == "skip" and rec.hint:
        session.add_hint(rec.hint, source="recovery:skip")
    return rec


# ---------------------------------------------------------------------------------------------- commands
def _store_option(f: Any) -> Any:
    from immunity.cli import default_store

    return click.option("--store", "store_path", default=default_store, show_default="immunity.db or $IMMUNITY_STORE",
                        help="The store to read: a SQLite path or a plugin's URL (postgresql://...).")(f)


def _open(path: str, *, must_exist: bool = True) -> Any:
    from immunity.errors import StoreError
    from immunity.locations import open_location

    try:
        return open_location(path, must_exist=must_exist)
    except FileNotFoundError:
        raise click.ClickException(f"no store at {path} (run an agent with immunity first, or pass --store)") from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _parse_variant(spec: str) -> tuple[str, str]:
    cls, sep, text = spec.partition("=")
    if not sep or not cls.strip() or not text.strip():
        raise click.BadParameter(f"{spec!r}: use CLASS=TEXT", param_hint="--variant")
    return cls.strip(), text.strip()


def _echo_lineage(rows: list[dict[str, Any]]) -> None:
    click.echo("evolved variants (lineage):")
    for r in rows:
        reason = f"  ({r['reason']})" if r.get("reason") and r["status"] in ("promoted", "retired") else ""
        click.echo(f"  {r['variant']:<40} {r['error_class']:<20} {r['status']:<9} gen {r['generation']} "
                   f"<- {r['parent']} [{r['generator']}] pulls={r['pulls']} mean={r['mean']:.3f} "
                   f"(parent {r['parent_mean']:.3f}){reason}")
        click.echo(f"      {r['text']}")


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    @cli.group(invoke_without_command=True)
    @_store_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--class", "error_class", default=None, help="Only this error class.")
    @click.option("--contexts/--no-contexts", default=True, show_default=True,
                  help="Show the per-context arms as well as the class-level ones.")
    @click.pass_context
    def interventions(ctx: click.Context, store_path: str, as_json: bool, error_class: str | None,
                      contexts: bool) -> None:
        """Efficacy of each intervention variant: pulls, successes, posterior mean with a 95% interval,
        and whether it was disabled, per error class and per context; then the lineage of the evolved
        variants (parent, generator, generation, status). ``immunity interventions evolve`` makes new ones."""
        if ctx.invoked_subcommand is not None:
            return
        from immunity.interventions.bandit import read_report
        from immunity.interventions.evolution import read_lineage
        from immunity.interventions.selector import PLUGIN

        store = _open(store_path)
        try:
            try:
                rows = read_report(store.db)
                lineage = read_lineage(store.db)
            except Exception as exc:
                raise click.ClickException(f"the bandit tables in {store_path} cannot be read: {exc}") from None
            errors = [e for e in store.plugin_errors(limit=200) if e.get("plugin") == PLUGIN][:5]
        finally:
            store.close()
        rows = [r for r in rows if (error_class is None or r["error_class"] == error_class)
                and (contexts or r["level"] == "class")]
        lineage = [r for r in lineage if error_class is None or r["error_class"] == error_class]
        if as_json:
            click.echo(json.dumps({"arms": rows, "lineage": lineage, "recent_errors": errors}, indent=2))
            return
        if lineage:
            _echo_lineage(lineage)
        if not rows:
            click.echo(f"no intervention statistics in {store_path} (the bandit, the default selector, learns from "
                       "hints in runs with an outcome: guard.set_outcome or immunity runs mark)")
        current = None
        for r in rows:
            if r["error_class"] != current:
                current = r["error_class"]
                click.echo(f"{current}:")
            where = "all contexts" if r["level"] == "class" else \
                f"{r['domain']}/{r['position']}/{r['framework']}"
            lo, hi = r["ci95"]
            flag = f"  DISABLED ({r['disabled_reason']})" if r["disabled"] else ""
            click.echo(f"  {r['variant']:<44} {where:<28} pulls={r['pulls']:<4} ok={r['successes']:<4} "
                       f"rewarded={r['rewarded']:<4} mean={r['mean']:.3f} [{lo:.3f}, {hi:.3f}]{flag}")
        for e in errors:
            click.echo(f"bandit error (run {e['run_id']}): {e['hook']}: {e['error']}")

    @interventions.command("evolve")
    @_store_option
    @click.option("--class", "classes", multiple=True, help="Only this error class (repeatable; default: every "
                  "class the grammar has actions for).")
    @click.option("-n", "n", type=click.IntRange(0, 50), default=3, show_default=True,
                  help="New variants per class and generator.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the grammar's choices.")
    @click.option("--llm/--no-llm", default=True, show_default=True,
                  help="Also ask installed plugins that implement immunity_propose_variants (an LLM).")
    @click.option("--approve", "approve_id", default=None, metavar="VARIANT",
                  help="Do not generate: let this proposed (LLM) variant be tried as a candidate.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def evolve_cmd(store_path: str, classes: tuple[str, ...], n: int, seed: int, llm: bool, approve_id: str | None,
                   as_json: bool) -> None:
        """Generate new hint variants (offline) into the store: from the template grammar (tried at
        once as candidates on a small share of traffic) and from LLM plugins (stored as proposed,
        tried only once approved with --approve)."""
        from immunity.config import Config
        from immunity.interventions.evolution import approve, evolve
        from immunity.plugins import get_plugin_manager

        store = _open(store_path, must_exist=approve_id is not None)
        try:
            if approve_id:
                try:
                    row = approve(store, approve_id)
                except (KeyError, ValueError) as exc:
                    raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None
                click.echo(f"{row.variant_id}: candidate (approved)")
                return
            pm = get_plugin_manager() if llm else None
            result = evolve(store, classes=classes or None, n=n, seed=seed, pm=pm, config=Config(), llm=llm)
            store.flush()
        finally:
            store.close()
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        for r in result["added"]:
            click.echo(f"+ {r['variant']:<40} {r['status']:<9} gen {r['generation']} from {r['parent']} "
                       f"({r['generator']}): {r['text']}")
        for r in result["rejected"]:
            click.echo(f"- rejected ({r['error_class']}): {r['why']}: {r['text']}")
        click.echo(f"{len(result['added'])} new variant(s), {len(result['rejected'])} rejected proposal(s)")

    @cli.command()
    @click.argument("run_ids", nargs=-1)
    @_store_option
    @click.option("--diff", "diff", is_flag=True, help="Align two runs' steps and show where they part.")
    @click.option("--all", "all_runs", is_flag=True, help="Replay every stored run and summarise.")
    @click.option("--limit", default=None, type=int, help="Replay the N newest stored runs and summarise.")
    @click.option("--pack", "packs", multiple=True, help="A pattern pack to try (path or installed name).")
    @click.option("--verifier", "verifiers", multiple=True, help="A named verifier to switch on.")
    @click.option("--selector", default=None, help="The intervention selector (default, bandit, ...).")
    @click.option("--variant", "variants", multiple=True, metavar="CLASS=TEXT",
                  help="An intervention variant to try (with --selector bandit it is the only one offered for CLASS).")
    @click.option("--option", "raw_options", multiple=True, metavar="KEY=JSON", help="A runtime option.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def replay(run_ids: tuple[str, ...], store_path: str, diff: bool, all_runs: bool, limit: int | None,
               packs: tuple[str, ...], verifiers: tuple[str, ...], selector: str | None, variants: tuple[str, ...],
               raw_options: tuple[str, ...], as_json: bool) -> None:
        """Re-feed stored runs through a fresh runtime (nothing is written) and show, step by step, what
        would have been flagged and injected; or compare two runs with --diff A B."""
        from immunity.cli import key_values
        from immunity.config import Config
        from immunity.interventions.replay import (
            align,
            imported_from_store,
            render_alignment,
            try_on_runs,
            what_if,
        )

        options: dict[str, Any] = key_values(raw_options)
        if variants:
            user: dict[str, list[str]] = {}
            for spec in variants:
                cls, text = _parse_variant(spec)
                user.setdefault(cls, []).append(text)
            options["variants"] = user
            if (selector or Config().selector) == "bandit":
                from immunity.interventions.variants import stable_id

                only = [f"user:{c}/{stable_id(t)}" for c, ts in user.items() for t in ts]
                options.setdefault("bandit", {})["only"] = only
        kw: dict[str, Any] = {"verifiers": list(verifiers), "packs": list(packs), "selector": selector, "options": options}
        store = _open(store_path)
        try:
            if diff:
                if len(run_ids) != 2:
                    raise click.UsageError("--diff needs two run ids")
                runs = [store.get_run(r) for r in run_ids]
                for rid, run in zip(run_ids, runs, strict=True):
                    if run is None:
                        raise click.ClickException(f"no run {rid!r} in {store_path}")
                a, b = runs
                result = align(store.steps(a.run_id), store.steps(b.run_id))
                click.echo(json.dumps(result, indent=2) if as_json else render_alignment(a, b, result))
                return
            if all_runs or limit:
                summary = try_on_runs(store, limit=None if all_runs else limit, **kw)
                if as_json:
                    click.echo(json.dumps(summary, indent=2))
                    return
                for r in summary["runs"]:
                    click.echo(f"{r['run_id']:<40} {r['outcome']:<8} steps={r['steps']:<4} flagged={r['flagged_steps']:<3} "
                               f"interventions={r['interventions']:<3} first_flag={r['first_flag']} "
                               f"stop={r['stop_step']}")
                for outcome, t in sorted(summary["by_outcome"].items()):
                    click.echo(f"{outcome}: {t['runs']} runs, {t['flagged']} flagged, {t['intervened']} with an "
                               f"intervention, {t['stopped']} stopped")
                return
            if not run_ids:
                raise click.UsageError("give a run id (or --all / --limit N, or --diff A B)")
            reports = []
            for rid in run_ids:
                try:
                    imported = imported_from_store(store, rid)
                except LookupError as exc:
                    raise click.ClickException(str(exc)) from None
                try:
                    reports.append(what_if(imported, store=store, **kw))
                except Exception as exc:
                    raise click.ClickException(f"replay of {rid} failed: {type(exc).__name__}: {exc}") from None
            if as_json:
                click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
            else:
                click.echo("\n\n".join(r.render() for r in reports))
        finally:
            store.close()
        sys.stdout.flush()
