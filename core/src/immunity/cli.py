"""The ``immunity`` command line. Core's commands live in :mod:`immunity.defaults.commands`;
plugins add theirs through ``immunity_register_commands``."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys

import click

from immunity.hookcall import CallPolicy
from immunity.plugins import get_plugin_manager


class _CommandsPolicy(CallPolicy):
    """One plugin's broken command does not take the CLI down, strict mode or not: a warning on
    stderr, the error on its `immunity plugins` line, and the other plugins add theirs."""

    def error(self, plugin: str, hook: str, exc: BaseException) -> None:
        click.echo(f"warning: plugin {plugin} could not add its commands: {exc}", err=True)
        info = self.pm.infos.get(plugin) if self.pm is not None else None
        if info is not None and not info.error:
            info.error = f"{hook} failed: {type(exc).__name__}: {exc}"


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception as one line: its message (or its type when it has none), clipped."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    elif isinstance(exc, MemoryError | RecursionError | OverflowError | ValueError | TypeError | KeyError |
                    LookupError) or type(exc).__module__ not in ("immunity.errors", "builtins"):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + "..."


class ImmunityGroup(click.Group):
    """The command group: any error a command did not turn into a message itself becomes one line
    on stderr and exit status 1 (``-vv`` logs the traceback), never a traceback on the terminal."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit,
                KeyboardInterrupt):
            raise
        except sqlite3.Error as exc:
            logging.getLogger("immunity.cli").debug("command failed", exc_info=True)
            raise click.ClickException(f"the store cannot be used: {one_line(exc)} (is it an immunity database, "
                                       "and can it be read and written?)") from None
        except Exception as exc:  # noqa: BLE001 - the last net under every command
            logging.getLogger("immunity.cli").debug("command failed", exc_info=True)
            raise click.ClickException(one_line(exc)) from None


def key_values(raw: tuple[str, ...] | list[str], param_hint: str = "--option") -> dict[str, object]:
    """``KEY=JSON`` command-line options as a dict (a value that is not JSON is kept as a string)."""
    import json

    out: dict[str, object] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use KEY=JSON", param_hint=param_hint)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.group(cls=ImmunityGroup)
@click.version_option(package_name="immunity")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """immunity: catch agents' repeating failures while the run is still going."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def default_store() -> str:
    return os.environ.get("IMMUNITY_STORE", "immunity.db")


def build_cli() -> click.Group:
    pm = get_plugin_manager()
    pm.call("immunity_register_commands", _CommandsPolicy(pm), cli=cli)
    cli.pm = pm  # type: ignore[attr-defined]
    return cli


def main(argv: list[str] | None = None) -> None:
    build_cli()(args=argv if argv is not None else sys.argv[1:], prog_name="immunity")


if __name__ == "__main__":  # pragma: no cover
    main()
