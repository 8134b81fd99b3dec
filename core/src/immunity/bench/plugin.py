"""Plugin: the ``immunity bench closed-loop`` and ``immunity bench precision`` commands."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
import pluggy

hookimpl = pluggy.HookimplMarker("immunity")


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("closed-loop")
@click.option("--frameworks", default=None, help="Comma-separated driver names: langgraph, llamaindex, openai_agents, "
              "crewai, or any an installed adapter registers (default: every one installed).")
@click.option("--faults", default=None, help="Comma-separated fault types (default: all; see docs/benchmark.md).")
@click.option("--tasks", default=None, help="Comma-separated tasks: research, support, coding (default: all).")
@click.option("--seeds", type=click.IntRange(1), default=21, show_default=True,
              help="Seeds per framework and fault type (tasks rotate over the seeds).")
@click.option("--p", "ps", default="0,0.5,1", show_default=True,
              help="Hint-following probabilities to run with immunity, comma-separated in [0, 1].")
@click.option("--quick", is_flag=True, help="A small run: 3 seeds, p in {0, 1}.")
@click.option("--json", "as_json", is_flag=True, help="Print the aggregated results as JSON.")
@click.option("--markdown", is_flag=True, help="Print the results as Markdown tables.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the aggregated results and every trial to this JSON file.")
@click.option("--real", is_flag=True, help="Use the frameworks' real OpenAI models (needs OPENAI_API_KEY; costs "
              "money). Only tool faults are injected; the model decides for itself whether to follow hints.")
@click.option("--report", "report_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Do not run: aggregate and print the trials saved by an earlier --out file.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress on stderr.")
@click.option("--bandit", is_flag=True, help="Also run every p with the bandit selector (the runtime's default), "
              "learning across trials from their judged outcomes (one store per p), next to the rules alone "
              "(selector default, which the other arms run).")
@click.option("--evolve", "evolve_n", type=click.IntRange(0, 20), default=3, show_default=True,
              help="With --bandit: grammar variants per class put in each bandit store before the first trial.")
@click.option("--evolution-traffic", type=click.FloatRange(0, 1), default=None,
              help="With --bandit: the share of a class's hints given to candidate variants (default 0.1).")
@click.option("--evolution-min-trials", type=click.IntRange(1), default=None,
              help="With --bandit: rewarded pulls before a candidate is promoted or retired (default 20).")
@click.option("--compliance", type=click.Choice(["content", "flat"]), default="content", show_default=True,
              help="How the scripted agent follows a hint: with a probability that depends on the hint's text "
              "(content) or on p alone (flat).")
def closed_loop(frameworks: str | None, faults: str | None, tasks: str | None, seeds: int, ps: str, quick: bool,
                as_json: bool, markdown: bool, out: str | None, real: bool, report_path: str | None,
                progress: bool, bandit: bool, evolve_n: int, evolution_traffic: float | None,
                evolution_min_trials: int | None, compliance: str) -> None:
    """Fault-injection benchmark: scripted agents in each framework, with and without immunity.

    Every trial runs a small task through a real framework runtime with one injected fault; the
    same seed gives the same task, fault and coin flips with and without immunity. Outcomes are
    judged from the task's ground truth only.
    """
    from immunity.bench.drivers import bench_drivers
    from immunity.bench.harness import BenchConfig, Trial, aggregate, run_benchmark
    from immunity.bench.report import render, render_markdown
    from immunity.bench.tasks import FAULT_TYPES, TASKS, TOOL_FAULTS

    if report_path:
        with open(report_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        summary = aggregate([Trial(**t) for t in saved.get("trials", [])])
        summary["config"] = saved.get("config", {})
        if saved.get("lineage"):
            summary["lineage"] = saved["lineage"]
        _print(summary, as_json, markdown, render, render_markdown, _header(summary["config"]))
        return

    drivers = bench_drivers()
    fws = _split(frameworks) or [n for n, d in drivers.items() if d.available()]
    unknown = [f for f in fws if f not in drivers]
    if unknown:
        raise click.BadParameter(f"unknown framework(s) {unknown}; known: {sorted(drivers)}", param_hint="--frameworks")
    fault_list = _split(faults) or list(FAULT_TYPES)
    bad = [f for f in fault_list if f not in FAULT_TYPES]
    if bad:
        raise click.BadParameter(f"unknown fault type(s) {bad}; known: {list(FAULT_TYPES)}", param_hint="--faults")
    task_list = _split(tasks) or list(TASKS)
    bad = [t for t in task_list if t not in TASKS]
    if bad:
        raise click.BadParameter(f"unknown task(s) {bad}; known: {sorted(TASKS)}", param_hint="--tasks")
    try:
        p_list = sorted({float(p) for p in _split(ps) or []})
    except ValueError:
        raise click.BadParameter(f"{ps!r}: use numbers in [0, 1]", param_hint="--p") from None
    if not p_list or any(not 0 <= p <= 1 for p in p_list):
        raise click.BadParameter(f"{ps!r}: use numbers in [0, 1]", param_hint="--p")
    if quick:
        seeds, p_list = min(seeds, 3), [0.0, 1.0]
    if real:
        if not os.environ.get("OPENAI_API_KEY"):
            raise click.ClickException("--real needs OPENAI_API_KEY in the environment")
        fault_list = [f for f in fault_list if f == "none" or f in TOOL_FAULTS]
        p_list = [1.0]
    evolution: dict[str, Any] = {}
    if evolution_traffic is not None:
        evolution["traffic"] = evolution_traffic
    if evolution_min_trials is not None:
        evolution["min_trials"] = evolution_min_trials
    cfg = BenchConfig(frameworks=fws, faults=fault_list, tasks=task_list, seeds=seeds, ps=p_list, real=real,
                      bandit=bandit, evolve=evolve_n, compliance=compliance, evolution=evolution)
    t0 = time.perf_counter()

    def report(i: int, n: int, trial: Any) -> None:
        if progress and (i == n or i % 50 == 0):
            click.echo(f"  {i}/{n} trials ({time.perf_counter() - t0:.0f} s)", err=True)

    try:
        lineage: dict[str, Any] = {}
        trials = run_benchmark(cfg, progress=report, lineage=lineage)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - t0
    summary = aggregate(trials)
    summary["config"] = {"frameworks": fws, "faults": fault_list, "tasks": task_list, "seeds": seeds,
                         "ps": p_list, "real": real, "trials": len(trials), "seconds": round(elapsed, 1),
                         "python": sys.version.split()[0], "versions": _versions(fws), "bandit": bandit,
                         "evolve": evolve_n if bandit else 0, "evolution": evolution, "compliance": compliance}
    if lineage:
        summary["lineage"] = lineage
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({**summary, "trials": [t.as_dict() for t in trials]}, fh, indent=1, default=str)
    _print(summary, as_json, markdown, render, render_markdown, _header(summary["config"]))


@click.command("precision")
@click.option("--data", "data_dir", type=click.Path(exists=True), default=None,
              help="The shared dev-data folder: its tau-bench and SWE-bench trace files are used.")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "fmt", default="auto", show_default=True, help="Trace format of PATHS.")
@click.option("--selector", default="bandit", show_default=True,
              help="The intervention selector (bandit, the default; default: the rules alone).")
@click.option("--sample", type=click.IntRange(1), default=None,
              help="A seeded random sample of this many successful runs per dataset (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--budget", type=click.FloatRange(0, 1), default=None,
              help="The share of successful runs any check may flag (default 0.05); exit 1 if exceeded or "
                   "if any run is stopped, with --check.")
@click.option("--check", "enforce", is_flag=True, help="Exit with status 1 when the budget is not met.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--markdown", is_flag=True, help="Print the results as Markdown tables.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the results and every run's record to this JSON file.")
@click.option("--option", "raw_options", multiple=True, metavar="KEY=JSON",
              help="A runtime option (bandit='{\"warmup\": 0}': the bandit picks wordings from the first hint).")
def precision(data_dir: str | None, paths: tuple[str, ...], fmt: str, selector: str, sample: int | None, seed: int,
              budget: float | None, enforce: bool, as_json: bool, markdown: bool, out: str | None,
              raw_options: tuple[str, ...]) -> None:
    """False alarms on real successes: replay every successful run through the default runtime of
    its domain and report, per check, the runs flagged, blocked and stopped and the hints sent.

    Give trace files as PATHS, or --data DIR for the dev-data layout (tau-bench and SWE-bench)."""
    from immunity.bench.precision import FLAG_BUDGET, dev_datasets, precision_report

    groups: dict[str, list[str]] = {}
    if data_dir:
        groups.update(dev_datasets(data_dir))
        if not groups:
            raise click.ClickException(f"no tau-bench or SWE-bench trace files under {data_dir}")
    for p in paths:
        groups.setdefault(os.path.basename(os.path.normpath(p)), []).append(p)
    if not groups:
        raise click.UsageError("give trace files or --data DIR")
    t0 = time.perf_counter()

    def tick(n: int) -> None:
        if n % 100 == 0:
            click.echo(f"  {n} runs ({time.perf_counter() - t0:.0f} s)", err=True)

    from immunity.cli import key_values

    options: dict[str, Any] = key_values(raw_options)
    report = precision_report(groups, fmt, selector=selector, sample=sample, seed=seed, progress=tick,
                              options=options)
    report.budget = FLAG_BUDGET if budget is None else budget
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(report.as_dict(runs=True), fh, indent=1, default=str)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1, default=str))
    else:
        click.echo(f"immunity bench precision: selector {selector}, {len(report.runs)} successful runs in "
                   f"{report.config['seconds']:.0f} s\n")
        click.echo(report.render(markdown=markdown))
    if enforce and not report.within_budget():
        sys.exit(1)


def _header(cfg: dict[str, Any]) -> str:
    if not cfg:
        return "immunity bench closed-loop"
    return (f"immunity bench closed-loop: {len(cfg['frameworks'])} framework(s) x {len(cfg['faults'])} fault type(s) "
            f"x {cfg['seeds']} seed(s), tasks {', '.join(cfg['tasks'])}, p in "
            f"{{{', '.join(str(p) for p in cfg['ps'])}}}{' (real model)' if cfg.get('real') else ''}"
            f"{', compliance ' + cfg['compliance'] if cfg.get('compliance') else ''}"
            f"{', with the bandit arm' if cfg.get('bandit') else ''}; "
            f"{cfg['trials']} trials in {cfg['seconds']:.0f} s")


def _print(summary: dict[str, Any], as_json: bool, markdown: bool, render: Any, render_markdown: Any,
           header: str) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=1, default=str))
    elif markdown:
        click.echo(render_markdown(summary))
    else:
        click.echo(render(summary, header=header))


def _versions(frameworks: list[str]) -> dict[str, str | None]:
    from importlib import metadata

    dists = {"langgraph": "langgraph", "llamaindex": "llama-index-core", "openai_agents": "openai-agents",
             "crewai": "crewai"}
    out: dict[str, str | None] = {"immunity": None}
    for name in ["immunity", *[dists[f] for f in frameworks if f in dists]]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@hookimpl
def immunity_register_commands(cli: click.Group) -> None:
    group = cli.commands.get("bench")
    if not isinstance(group, click.Group):
        @cli.group("bench")
        def bench() -> None:
            """Benchmarks of immunity itself."""

        group = bench
    group.add_command(closed_loop)
    group.add_command(precision)
