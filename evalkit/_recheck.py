"""Determinism checks: run a run folder's samples again with another pool, and compare verdicts.

`recheck` executes the exact programs the run executed (its plan's completions, a model API's
from ``completions.jsonl``: no model is asked anything) with another number of workers, batch
size or sandbox driver, compares each sample's status with the run's verdict, and records the
comparison in the run folder's ``determinism.json``; the summary (``determinism``) and the
report then say whether the verdicts were identical. The run's journal is left as it was:
the re-execution's verdicts are compared, never counted.

``determinism.json`` (format version 1) holds the last check::

    {"format_version": 1, "checked": "<UTC time>",
     "executions": [{"role": "run", "driver", "isolation", "workers", "batch_size"},
                    {"role": "recheck", "driver", "isolation", "workers", "batch_size", "duration_s"}],
     "samples": <planned>, "compared": <n>, "identical": <n>, "identical_all": <bool>,
     "differing": [{"task_id", "sample_idx", "run", "recheck", "run_error", "recheck_error"}],
     "excluded": [{"task_id", "sample_idx", "reason"}]}

A sample without a verdict on either side (``infra_error``, or never run) says nothing about
determinism: it is excluded, and listed with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._benchmarks import get_benchmark
from ._calibrate import read_calibration
from ._config import EvalConfig
from ._errors import UserInputError
from ._feed import Feed
from ._progress import Progress
from ._results import EXIT_OK, RunOutcome, current_samples, run_problems, run_results
from ._runner import check_sandbox, exec_requests, report, start_scheduler
from ._store import DETERMINISM_FORMAT_VERSION, RunStore, now
from ._types import Sample, SampleResult, task_order

EXIT_DIFFERENT = 1
"""`evalkit recheck`'s exit code when a verdict differed (0: all identical; 2 and 3 as for run)."""
_ERROR_CHARS = 300  # of each side's error kept per differing sample; samples.parquet has the run's in full


@dataclass(frozen=True)
class RecheckOutcome:
    """What a recheck found (as written to ``determinism.json``), the CLI's exit code (0 when
    every compared verdict was identical, 1 when any differed), and the run as re-reported
    with the check (its summary has ``determinism``)."""

    run_dir: Path
    determinism: dict[str, Any]
    exit_code: int
    run: RunOutcome

    @property
    def identical(self) -> bool:
        return bool(self.determinism["identical_all"])


def recheck(
    run_dir: str | Path,
    *,
    workers: int | None = None,
    driver: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> RecheckOutcome:
    """Execute again every sample of ``run_dir`` that has a verdict, with ``workers``,
    ``driver`` and ``batch_size`` instead of the run's (None: as the run's config says), compare
    the statuses, write ``determinism.json`` and re-render the summary and report.

    Raises `RunStoreError` if the folder is not a run, cannot be written or is being run,
    `UserInputError` if it has no verdict to compare, `InfraError` if the sandboxes or Ray
    cannot start.
    """
    store = RunStore.open(run_dir)
    store.check_writable()
    store.acquire()
    try:
        config = store.config()
        samples = current_samples(store)
        verdicts = {r.key: r for r in run_results(store)}
        judged = [s for s in samples if s.key in verdicts and verdicts[s.key].status != "infra_error"]
        if not judged:
            raise UserInputError(f"{store.path} has no verdict to check yet: run or resume it first")
        execution = _execution_config(config, workers, driver, batch_size)
        started = time.monotonic()
        again, used = _execute(store, execution, judged, progress)
        used["duration_s"] = round(time.monotonic() - started, 3)
        determinism = compare(samples, verdicts, again, _run_execution(store, config), used)
        store.write_json("determinism.json", determinism)
        reported = report(store.path)  # the summary and report now say what the check found
    finally:
        store.release()
    return RecheckOutcome(store.path, determinism, EXIT_OK if determinism["identical_all"] else EXIT_DIFFERENT, reported)


def contrasting_pool(run_dir: str | Path) -> tuple[int, int]:
    """The (workers, batch size) `run --check-determinism` rechecks with: one worker taking one
    sample at a time (no two samples share a moment or a batch), or two workers if the run had one."""
    workers = RunStore.open(run_dir).meta().get("workers")
    return (2 if workers == 1 else 1), 1


def _execution_config(config: EvalConfig, workers: int | None, driver: str | None, batch_size: int | None) -> EvalConfig:
    scheduler = config.scheduler.model_copy(update={k: v for k, v in (("workers", workers), ("batch_size", batch_size)) if v is not None})
    sandbox = config.sandbox if driver is None else config.sandbox.model_copy(update={"driver": driver})
    return config.model_copy(update={"scheduler": scheduler, "sandbox": sandbox})


def _execute(store: RunStore, config: EvalConfig, samples: Sequence[Sample], progress: bool) -> tuple[dict[tuple[str, int], SampleResult], dict[str, Any]]:
    """The samples' verdicts in this execution, and how it ran."""
    benchmark = get_benchmark(config.benchmark)
    requests = exec_requests(benchmark, run_problems(store, config), samples)
    driver, isolation = check_sandbox(config)
    calibration = read_calibration(store.path)  # a calibrated run's samples get the limits they got
    time_limits = calibration.time_limits() if calibration is not None else None
    shown = Progress(len(requests), enabled=progress)
    results: dict[tuple[str, int], SampleResult] = {}
    try:
        with start_scheduler(config, driver, needed=True) as (scheduler, _):
            for result in scheduler.run(Feed.of(requests), time_limits):
                results[result.key] = result
                shown.update(result.status)
            workers = int(scheduler.num_workers)
    finally:
        shown.close()
    used = {"role": "recheck", "driver": driver, "isolation": isolation, "workers": workers, "batch_size": config.scheduler.batch_size}
    return results, used


def _run_execution(store: RunStore, config: EvalConfig) -> dict[str, Any]:
    meta = store.meta()
    return {"role": "run", "driver": meta.get("driver", "?"), "isolation": meta.get("isolation", "?"),
            "workers": meta.get("workers"), "batch_size": config.scheduler.batch_size}


def compare(
    samples: Sequence[Sample],
    verdicts: Mapping[tuple[str, int], SampleResult],
    again: Mapping[tuple[str, int], SampleResult],
    run: dict[str, Any],
    recheck: dict[str, Any],
) -> dict[str, Any]:
    """``determinism.json``'s content: the run's ``verdicts`` against the re-execution's, sample
    by sample (``samples``: the run's plan). Pure."""
    differing: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    compared = 0
    for sample in sorted(samples, key=lambda s: (*task_order(s.task_id), s.sample_idx)):
        first, second = verdicts.get(sample.key), again.get(sample.key)
        reason = None
        if first is None:
            reason = "no verdict in the run"
        elif first.status == "infra_error":
            reason = _because("infra_error in the run", first)
        elif second is None or second.status == "infra_error":
            reason = _because("infra_error in the recheck", second)
        if reason is not None:
            excluded.append({"task_id": sample.task_id, "sample_idx": sample.sample_idx, "reason": reason})
            continue
        assert first is not None and second is not None
        compared += 1
        if first.status != second.status:
            differing.append({"task_id": sample.task_id, "sample_idx": sample.sample_idx, "run": first.status, "recheck": second.status,
                              "run_error": _cut(first.error), "recheck_error": _cut(second.error)})
    return {
        "format_version": DETERMINISM_FORMAT_VERSION,
        "checked": now(),
        "executions": [run, recheck],
        "samples": len(samples),
        "compared": compared,
        "identical": compared - len(differing),
        "identical_all": not differing,
        "differing": differing,
        "excluded": excluded,
    }


def _because(what: str, result: SampleResult | None) -> str:
    error = _cut(result.error) if result is not None else "not run"
    return f"{what}: {error}" if error else what


def _cut(error: str | None) -> str | None:
    """An error's last line (a traceback's exception), at most `_ERROR_CHARS` characters."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return lines[-1].strip()[:_ERROR_CHARS] if lines else None

