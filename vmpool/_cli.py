"""The ``vmpool`` command: a thin shell over the Python API.

    vmpool drivers                      each driver, and whether it is usable here (or why not)
    vmpool run FILE.py [--driver NAME] [--timeout S]
                                        run a program in a fresh sandbox, print its ExecResult
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ._driver import get_driver, list_drivers
from ._errors import VmpoolError
from ._sandbox import Sandbox
from ._types import Limits

__all__ = ["main"]


@click.group(help="Self-hosted sandboxes for running untrusted Python programs.")
def cli() -> None:
    pass


@cli.command("drivers")
def drivers_command() -> None:
    """List the sandbox drivers and whether each can run on this host."""
    for name in list_drivers():
        try:
            driver = get_driver(name)
            reason = driver.available()
            state = "usable: %s" % driver.isolation() if reason is None else "unusable: %s" % reason
        except VmpoolError as exc:
            state = "unusable: %s" % exc
        click.echo("%-8s %s" % (name, state))


@cli.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--driver", default="auto", show_default=True, help="auto, bwrap, microvm, ...")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="wall-time limit in seconds")
@click.option("--memory-mb", type=click.IntRange(min=1), default=512, show_default=True)
def run_command(file: Path, driver: str, timeout: float, memory_mb: int) -> None:
    """Run FILE in a fresh sandbox and print the ExecResult as JSON.

    Exit status: 0 if the program ended "ok", 1 for any other program outcome, 2 if the sandbox
    itself failed.
    """
    code = file.read_text(encoding="utf-8")
    try:
        with Sandbox.create(driver) as sandbox:
            result = sandbox.run_program(code, Limits(wall_time_s=timeout, memory_mb=memory_mb))
            payload = {"driver": sandbox.driver, "isolation": sandbox.isolation, **result.model_dump()}
    except VmpoolError as exc:
        click.echo("vmpool: %s: %s" % (type(exc).__name__, exc), err=True)
        sys.exit(2)
    click.echo(json.dumps(payload, indent=2))
    sys.exit(0 if result.status == "ok" else 1)


def main() -> None:
    """Entry point of the ``vmpool`` console script."""
    cli(prog_name="vmpool")
