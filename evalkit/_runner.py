"""One evaluation run, end to end: the Python API behind ``evalkit run``, ``resume`` and ``report``.

    config ─► benchmark problems ─► provider samples ─► programs ─► Ray scheduler ─► journal
                                                                                    └► parquet, summary.json, report.html
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._benchmarks import Benchmark, get_benchmark
from ._config import EvalConfig, load_config
from ._errors import EvalkitError, InfraError, RunInterrupted
from ._models import make_provider
from ._progress import Progress
from ._report import render_report
from ._scoring import score
from ._store import RunStore
from ._types import ExecRequest, SampleResult
from ._version import __version__

_log = logging.getLogger("evalkit")

EXIT_OK = 0
EXIT_GATES = 1
EXIT_INPUT = 2
EXIT_INFRA = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run left behind and the exit code the CLI returns for it."""

    run_dir: Path
    summary: dict[str, Any]
    exit_code: int


def run(config: EvalConfig | str | Path, *, progress: bool = True) -> RunOutcome:
    """Evaluate ``config`` in a new run folder under its ``output_dir``."""
    if not isinstance(config, EvalConfig):
        config = load_config(config)
    requests, benchmark = _plan(config)
    driver, isolation = _check_sandbox(config)
    store = RunStore.create(config)
    _log.info("run folder: %s", store.path)
    return _execute(store, config, requests, benchmark, driver, isolation, progress)


def latest_unfinished(config: EvalConfig) -> Path | None:
    """The newest run folder of ``config.name`` under its output_dir that did not finish."""
    candidates = sorted(Path(config.output_dir).glob(f"{config.name}-*/run.json"), key=lambda p: p.stat().st_mtime)
    for meta_path in reversed(candidates):
        try:
            if RunStore.open(meta_path.parent).meta().get("state") != "finished":
                return meta_path.parent
        except EvalkitError:
            continue
    return None


def resume(run_dir: str | Path, *, progress: bool = True) -> RunOutcome:
    """Finish an interrupted run: samples already in its journal are not run again (but
    ``infra_error`` ones are retried)."""
    store = RunStore.open(run_dir)
    config = store.config()
    requests, benchmark = _plan(config)
    driver, isolation = _check_sandbox(config)
    return _execute(store, config, requests, benchmark, driver, isolation, progress)


def report(run_dir: str | Path) -> RunOutcome:
    """Re-score and re-render a run folder from its journal, without running anything."""
    store = RunStore.open(run_dir)
    config = store.config()
    results = store.results()
    meta = store.meta()
    summary = _finish(store, config, results, meta.get("driver", "?"), meta.get("isolation", "?"), meta)
    return RunOutcome(store.path, summary, _exit_code(summary))


def _plan(config: EvalConfig) -> tuple[list[ExecRequest], Benchmark]:
    benchmark = get_benchmark(config.benchmark)
    problems = benchmark.select(config.benchmark.ids, config.benchmark.limit)
    provider = make_provider(config.model.model_dump())
    samples = provider.samples(problems, config.sampling.n, all_task_ids=[p.task_id for p in benchmark.problems()])
    by_id = {p.task_id: p for p in problems}
    requests = [ExecRequest(sample=s, program=benchmark.program(by_id[s.task_id], s.completion)) for s in samples]
    return requests, benchmark


def _check_sandbox(config: EvalConfig) -> tuple[str, str]:
    """Resolve the driver and start one sandbox here, so a host that cannot run sandboxes fails
    fast with the reason, before Ray starts. Returns (driver, isolation)."""
    from vmpool import Sandbox, VmpoolError, resolve_driver

    try:
        driver = resolve_driver(config.sandbox.driver)
        with Sandbox.create(driver=driver, python=config.sandbox.python) as sandbox:
            isolation = sandbox.isolation
    except VmpoolError as exc:
        raise InfraError(f"cannot start a '{config.sandbox.driver}' sandbox: {exc}") from exc
    if config.sandbox.driver == "auto":
        _log.info("sandbox driver auto resolved to %s (%s)", driver, isolation)
    return driver, isolation


def _execute(
    store: RunStore,
    config: EvalConfig,
    requests: Sequence[ExecRequest],
    benchmark: Benchmark,
    driver: str,
    isolation: str,
    show_progress: bool,
) -> RunOutcome:
    from ._scheduler import RayScheduler

    # A journaled verdict counts only for the very completion it judged: if a samples file
    # changed since the run was interrupted, the changed samples run again.
    done = {r.key: r.completion for r in store.results() if r.status != "infra_error"}
    todo = [r for r in requests if done.get(r.sample.key) != r.sample.completion]
    started = time.monotonic()
    store.write_meta(state="running", driver=driver, isolation=isolation, benchmark=benchmark.name, already_done=len(requests) - len(todo))
    progress = Progress(len(requests), len(requests) - len(todo), enabled=show_progress)
    try:
        if todo:
            with store.journal() as journal, RayScheduler(config.scheduler, config.sandbox, driver) as scheduler:
                store.write_meta(scheduler_start_s=time.monotonic() - started, workers=scheduler.num_workers)
                for result in scheduler.run(todo):
                    journal.append(result)
                    progress.update(result.status)
    except InfraError as exc:
        progress.close()
        store.write_meta(state="failed")
        raise InfraError(f"{exc}; the {progress.done} finished results are kept; continue with: evalkit resume {store.path}") from exc
    except KeyboardInterrupt:
        progress.close()
        store.write_meta(state="interrupted", duration_s=float(store.meta().get("duration_s", 0.0)) + time.monotonic() - started)
        raise RunInterrupted(store.path, progress.done, len(requests)) from None
    progress.close()
    wanted = {r.sample.key for r in requests}
    results = [r for r in store.results() if r.key in wanted]
    meta = store.meta()
    duration = float(meta.get("duration_s", 0.0)) + time.monotonic() - started
    store.write_meta(state="finished", duration_s=duration, finished=_now())
    summary = _finish(store, config, results, driver, isolation, store.meta())
    return RunOutcome(store.path, summary, _exit_code(summary))


def _finish(
    store: RunStore, config: EvalConfig, results: list[SampleResult], driver: str, isolation: str, meta: dict[str, Any]
) -> dict[str, Any]:
    summary = score(results, config.sampling.k)
    summary["run"] = {
        "name": config.name,
        "benchmark": meta.get("benchmark", config.benchmark.name or config.benchmark.path),
        "model": config.model.provider,
        "driver": driver,
        "isolation": isolation,
        "started": meta.get("created"),
        "finished": meta.get("finished"),
        "state": meta.get("state"),
        "duration_s": float(meta.get("duration_s", 0.0)),
        "evalkit_version": __version__,
        "host": platform.node(),
        "python": platform.python_version(),
        "run_format_version": meta.get("format_version"),
    }
    store.write_parquet(results)
    store.write_json("summary.json", summary)
    store.write_text("report.html", render_report(summary, results))
    return summary


def _exit_code(summary: dict[str, Any]) -> int:
    return EXIT_INFRA if summary["counts"]["infra_error"] else EXIT_OK


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
