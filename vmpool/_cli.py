"""The ``vmpool`` command: a thin shell over the Python API.

    vmpool drivers                      each driver, and whether it is usable here (or why not)
    vmpool doctor [--json]              what this host can run and why: drivers, accelerator,
                                        tools (and the command that installs a missing one),
                                        templates
    vmpool run FILE.py [--driver NAME] [--timeout S]
                                        run a program in a fresh sandbox, print its ExecResult
    vmpool template list                each known VM template: hash, built or not, size
    vmpool template build NAME [--force]
                                        build a VM template (progress on stderr), print its folder
    vmpool bench [--driver all|NAME] [--repeat N] [--programs N] [--concurrency 4,8]
                                        time starts, programs and concurrent starts, and measure
                                        host memory per sandbox, for each driver side by side
    vmpool serve [--socket PATH]        run the sandbox service of the E2B-style SDK
                                        (`vmpool.Sandbox`) in the foreground, with logs

Exit status of ``vmpool run``: 0 the program ended ``ok``; 1 it ended otherwise; 2 the sandbox
itself failed (or its driver cannot run here); 3 bad arguments (a missing, unreadable or
non-UTF-8 FILE, a timeout that is not a finite number of seconds up to a day, an unknown
driver, ...), reported as one line on stderr; 130 interrupted. Bad arguments
have a code of their own, not click's usual 2, so that a script can tell them from a sandbox
failure.

``vmpool template build`` exits the same way: 0 built (or built already), 2 the build failed
or cannot run here (not root, a tool missing), 3 bad arguments (an unknown template, an invalid
spec), 130 interrupted. ``vmpool template list`` exits 3 if a spec is invalid, else 0.
``vmpool bench`` exits 0 measured, 2 a sandbox failed or a driver named cannot run here, 3 bad
arguments, 130 interrupted. ``vmpool serve`` exits 0 when stopped by SIGTERM or SIGINT (its
running sandboxes killed, paused ones kept), 2 if it cannot serve (another service listens on
the socket, its folder is not private), 3 bad arguments.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from pydantic import ValidationError

from ._driver import get_driver, list_drivers
from ._errors import VmpoolError
from ._sandbox import LocalSandbox
from ._templates import TemplateSpecError, build, cached, load_spec, spec_hash, template_names
from ._types import MAX_TIME_S, Limits

__all__ = ["main"]

EXIT_OK, EXIT_PROGRAM_FAILED, EXIT_SANDBOX_FAILED, EXIT_BAD_ARGUMENTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BadArguments(click.ClickException):
    """A mistake in what a `vmpool COMMAND` was given: one line on stderr
    (``vmpool COMMAND: error: ...``), exit status 3."""

    exit_code = EXIT_BAD_ARGUMENTS

    def __init__(self, message: str, command: str = "run") -> None:
        super().__init__(message)
        self.command = command

    def show(self, file: IO[Any] | None = None) -> None:
        message = " ".join(self.format_message().split())  # one line, whatever click composed
        click.echo("vmpool %s: error: %s" % (self.command, message), err=True)


class _StrictCommand(click.Command):
    """Turns click's own usage errors (missing FILE, a value of the wrong type, an unknown
    option) into BadArguments, so that every bad argument ends the same way."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            command = ctx.command_path.split()[1] if len(ctx.command_path.split()) > 1 else "run"
            raise BadArguments(exc.format_message(), command) from None


@contextlib.contextmanager
def _failures_exit(code: int) -> Iterator[None]:
    """A VmpoolError ends the command with `code` and one line on stderr; Ctrl-C with 130."""
    try:
        yield
    except VmpoolError as exc:
        click.echo("vmpool: %s: %s" % (type(exc).__name__, exc), err=True)
        sys.exit(code)
    except KeyboardInterrupt:
        click.echo("vmpool: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _finite_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # FloatRange lets nan through: every comparison with it is false
    if math.isnan(value):
        raise click.BadParameter("nan is not a number of seconds", ctx, param)
    return value


def _known_driver(ctx: click.Context, param: click.Parameter, value: str) -> str:
    known = ["auto", *list_drivers()]
    if value not in known:
        raise click.BadParameter("unknown driver %r (known: %s)" % (value, ", ".join(known)), ctx, param)
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("evalkit")  # vmpool ships in the evalkit distribution
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@click.group(help="Self-hosted sandboxes for running untrusted Python programs.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="vmpool")
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


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="print the facts as JSON")
def doctor_command(as_json: bool) -> None:
    """Explain which drivers can run here, with which accelerator, and what is missing."""
    from ._doctor import diagnose, render

    facts = diagnose()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo("\n".join(render(facts)))


@cli.command("run", cls=_StrictCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--driver", default="auto", show_default=True, callback=_known_driver,
              help="sandbox driver: auto picks the strongest usable one (see `vmpool drivers`)")
@click.option("--timeout", type=click.FloatRange(min=0, max=MAX_TIME_S, min_open=True), default=10.0,
              show_default=True, callback=_finite_timeout,
              help="wall-time limit in seconds, at most a day; the CPU-time limit is the same")
@click.option("--memory-mb", type=click.IntRange(min=1), default=512, show_default=True,
              help="memory the program may allocate beyond the interpreter, per process")
def run_command(file: Path, driver: str, timeout: float, memory_mb: int) -> None:
    """Run FILE (Python source, UTF-8) in a fresh sandbox and print the ExecResult as JSON.

    \b
    Exit status:
      0  the program ended "ok"
      1  the program ended any other way (error, exited, timeout, oom)
      2  the sandbox itself failed, or the driver cannot run here
      3  bad arguments: FILE missing, unreadable or not UTF-8, a bad option value
         or an unknown driver (one line on stderr)
      130  interrupted (Ctrl-C)
    """
    try:
        code = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadArguments("%s is not UTF-8 text (byte %d: %s)" % (file, exc.start, exc.reason)) from None
    except OSError as exc:  # e.g. removed or made unreadable since click checked it
        raise BadArguments("cannot read %s: %s" % (file, exc.strerror or exc)) from None
    try:
        limits = Limits(wall_time_s=timeout, memory_mb=memory_mb)
    except ValidationError as exc:  # the options' own checks should have caught this already
        raise BadArguments("invalid limits: %s" % exc.errors()[0]["msg"]) from None
    with _failures_exit(EXIT_SANDBOX_FAILED):  # on Ctrl-C the sandbox's context manager killed it
        with LocalSandbox.create(driver) as sandbox:
            result = sandbox.run_program(code, limits)
            payload = {"driver": sandbox.driver, "isolation": sandbox.isolation, **result.model_dump()}
    click.echo(json.dumps(payload, indent=2))
    sys.exit(EXIT_OK if result.status == "ok" else EXIT_PROGRAM_FAILED)


EXIT_BUILD_FAILED = EXIT_SANDBOX_FAILED  # the machinery failed, not the user's arguments


@cli.group("template")
def template_group() -> None:
    """Build and list the sandbox templates both drivers start from (vmpool/templates/*.yaml)."""


@template_group.command("list", cls=_StrictCommand)
def template_list_command() -> None:
    """List each known template: its hash, whether it is built, and its size on disk.

    Exit status: 0, or 3 if a template's spec is invalid (the line says why).
    """
    invalid = False
    for name in template_names():
        try:
            spec = load_spec(name)
            digest, built = spec_hash(spec)[:16], cached(spec)
        except TemplateSpecError as exc:
            click.echo("%-18s %-16s  invalid: %s" % (name, "-", exc))
            invalid = True
            continue
        if built is None:
            click.echo("%-18s %s  not built" % (name, digest))
        else:
            click.echo("%-18s %s  built  %5d MiB  %s" % (name, digest, built.disk_usage() // 2**20, built.dir))
    sys.exit(EXIT_BAD_ARGUMENTS if invalid else EXIT_OK)


@template_group.command("build", cls=_StrictCommand)
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if the template is built already")
def template_build_command(name: str, force: bool) -> None:
    """Build template NAME (a known template, or the path of a YAML spec) unless it is built
    already, and print its folder. Progress goes to stderr. Building needs root.

    \b
    Exit status:
      0  built, or built already
      2  the build failed (the step and the tool's output on stderr), or cannot run here
      3  bad arguments: an unknown template or an invalid spec (one line on stderr)
      130  interrupted (Ctrl-C); nothing half-built is left behind
    """
    def progress(message: str) -> None:
        click.echo("vmpool template build %s: %s" % (name, message), err=True)

    with _failures_exit(EXIT_BUILD_FAILED):
        try:
            built = build(name, force=force, progress=progress)
        except TemplateSpecError as exc:  # the user's mistake, not a failed build
            raise BadArguments(str(exc), "template") from None
    click.echo(str(built.dir))


def _bench_driver(ctx: click.Context, param: click.Parameter, value: str) -> str:
    known = ["all", *list_drivers()]
    if value not in known:
        raise click.BadParameter("unknown driver %r (known: %s)" % (value, ", ".join(known)), ctx, param)
    return value


def _concurrency(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise click.BadParameter("%r is not a comma-separated list of positive integers" % value, ctx, param)
    return tuple(int(part) for part in parts)


@cli.command("bench", cls=_StrictCommand)
@click.option("--driver", default="all", show_default=True, callback=_bench_driver,
              help="a driver to measure, or all usable ones (the ratios need bwrap and microvm)")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="cold boots, starts and rounds of each concurrency level to time")
@click.option("--programs", type=click.IntRange(min=1), default=20, show_default=True,
              help="runs of print(1) on one warm sandbox")
@click.option("--concurrency", default="4,8", show_default=True, callback=_concurrency,
              help="numbers of sandboxes started at once, comma-separated; empty for none")
def bench_command(driver: str, repeat: int, programs: int, concurrency: tuple[int, ...]) -> None:
    """Time each driver's sandbox starts (microvm: cold boot and snapshot restore), a trivial
    program, and concurrent starts, and measure the host memory of one sandbox: medians with
    min-max, then the ratios microvm/bwrap from this same run. Progress goes to stderr.

    \b
    Exit status:
      0  measured
      2  a sandbox failed, or the driver named cannot run here
      3  bad arguments (one line on stderr)
      130  interrupted (Ctrl-C); every sandbox started is killed
    """
    from ._bench import Figures, choose_drivers, machine, measure, render, render_ratios

    def progress(message: str) -> None:
        click.echo("vmpool bench: %s" % message, err=True)

    click.echo("machine: %s" % machine())
    click.echo("settings: %d repetition(s), %d programs, concurrent starts: %s; figures are "
               "median (min-max)" % (repeat, programs, ", ".join(map(str, concurrency)) or "none"))
    measured: dict[str, Figures] = {}
    with _failures_exit(EXIT_SANDBOX_FAILED):
        for name, reason in choose_drivers(driver):
            if reason is not None:
                if driver != "all":
                    click.echo("vmpool bench: driver %r cannot run here: %s" % (name, reason), err=True)
                    sys.exit(EXIT_SANDBOX_FAILED)
                click.echo("%s: not measured: %s" % (name, reason))
                continue
            measured[name] = measure(name, repeat, programs, concurrency, progress)
            click.echo("\n".join(render(measured[name])))
    if "microvm" in measured and "bwrap" in measured:
        click.echo("\n".join(render_ratios(measured["microvm"], measured["bwrap"])))


@cli.command("serve", cls=_StrictCommand)
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="unix socket to listen on (default: $VMPOOL_SERVICE, else "
                   "$XDG_RUNTIME_DIR/vmpool/service.sock, else /tmp/vmpool-UID/service.sock)")
def serve_command(socket_path: Path | None) -> None:
    """Run the vmpool service in the foreground: the sandboxes of the E2B-style SDK
    (`vmpool.Sandbox`) live in it, so they outlive the processes that create them and any
    process of this user can connect to them. Logs go to stderr.

    \b
    SIGTERM or SIGINT (Ctrl-C) stops it: running sandboxes are killed, paused ones stay on disk.

    \b
    Exit status:
      0  stopped by SIGTERM or SIGINT
      2  cannot serve: another service listens on the socket, or its folder is not private
      3  bad arguments (one line on stderr)
    """
    from ._service_main import serve

    with _failures_exit(EXIT_SANDBOX_FAILED):
        serve(socket_path)


def main() -> None:
    """Entry point of the ``vmpool`` console script."""
    cli(prog_name="vmpool")
