"""The ``immunity`` command line. Core's commands live in :mod:`immunity.defaults.commands`;
plugins add theirs through ``immunity_register_commands``."""

from __future__ import annotations

import logging
import os
import sys

import click

from immunity.plugins import get_plugin_manager


@click.group()
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
    hook = pm.hook.immunity_register_commands
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(cli=cli)
        except Exception as exc:  # one plugin's broken command does not take the CLI down
            click.echo(f"warning: plugin {impl.plugin_name} could not add its commands: {exc}", err=True)
    cli.pm = pm  # type: ignore[attr-defined]
    return cli


def main(argv: list[str] | None = None) -> None:
    build_cli()(args=argv if argv is not None else sys.argv[1:], prog_name="immunity")


if __name__ == "__main__":  # pragma: no cover
    main()
