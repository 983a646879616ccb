"""Calibrated per-problem time limits (``sandbox.time_limit: calibrated``), EvalPlus's way.

Before a run executes its samples, each problem's reference solution (`Problem.canonical_solution`,
assembled into a program as the benchmark assembles any sample) runs in the run's own sandbox
pool, through the same scheduler and so on the same driver, limited only by ``timeout_s``.
From its CPU time T_ref the problem gets

    CPU limit  = clamp(calibration_factor × T_ref, min_time_s, timeout_s), rounded up to whole
                 seconds (vmpool enforces CPU time in whole seconds) but never above timeout_s
    wall limit = min(timeout_s, WALL_FACTOR × CPU limit)

The CPU limit decides: it grows with what the problem's tests cost on this machine and driver,
not with how busy the machine is. The wall limit only stops programs that wait without
computing (a sleep, a blocked read), and is generous so that load does not turn correct code
into timeouts. A problem without a reference solution, or whose reference does not pass here
(it is reported: a warning, and its entry in ``calibration.json``), keeps the fixed limits.

Measuring is cheap: each reference runs once; one whose time matters (``factor × T_ref`` at
least half of ``min_time_s``, where noise could move its limit) runs `EXTRA_RUNS` more times,
and the largest time counts. HumanEval's references take milliseconds, so they run once: the
164 add about a second to a run on bwrap with two workers (README, "Time limits and flaky
samples", has the measured figures).

The result is ``calibration.json`` in the run folder; a resumed run reads it and never
measures again, so all of a run's samples get the same limits.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._benchmarks import Benchmark
from ._config import SandboxConfig
from ._errors import RunStoreError
from ._types import ExecRequest, Problem, Sample, SampleResult, TimeLimits

_log = logging.getLogger("evalkit")

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT_VERSION: Literal[1] = 1
WALL_FACTOR = 5.0
"""The wall limit of a calibrated problem, in multiples of its CPU limit (at most timeout_s)."""
EXTRA_RUNS = 2
"""More runs of a reference whose time matters; the largest of all its times counts."""

ReferenceStatus = Literal["passed", "failed", "timeout", "oom", "infra_error", "no_reference"]


class _Scheduler(Protocol):
    def run(self, requests: Sequence[ExecRequest]) -> Iterator[SampleResult]: ...


def cpu_limit(t_ref_s: float, factor: float, min_time_s: float, timeout_s: float) -> float:
    """The calibrated CPU limit of a problem whose reference takes ``t_ref_s`` of CPU time:
    ``factor × t_ref_s``, at least ``min_time_s``, rounded up to whole seconds, at most ``timeout_s``."""
    return min(timeout_s, float(math.ceil(max(min_time_s, factor * t_ref_s))))


def wall_limit(cpu_limit_s: float, timeout_s: float) -> float:
    """The wall limit that goes with a calibrated CPU limit (`WALL_FACTOR` times, at most ``timeout_s``)."""
    return min(timeout_s, WALL_FACTOR * cpu_limit_s)


class ReferenceTiming(BaseModel):
    """One problem in ``calibration.json``: how its reference did and the limits it gets."""

    model_config = ConfigDict(frozen=True)

    status: ReferenceStatus = Field(description="the reference's verdict (the worst of its runs), or no_reference")
    error: str | None = None
    runs: int = Field(0, ge=0, description="runs of the reference that were measured")
    cpu_s: float | None = Field(None, description="largest CPU time of its runs")
    wall_s: float | None = Field(None, description="largest wall time of its runs")
    flaky: bool = Field(False, description="a run of it passed only when re-checked")
    calibrated: bool = Field(description="the limits come from the reference; false: the fixed limits")
    cpu_limit_s: float = Field(gt=0, allow_inf_nan=False)
    wall_limit_s: float = Field(gt=0, allow_inf_nan=False)


class Calibration(BaseModel):
    """``calibration.json``: the rule's settings, where it was measured, and every problem's limits."""

    model_config = ConfigDict(frozen=True)

    format_version: Literal[1] = CALIBRATION_FORMAT_VERSION
    factor: float
    min_time_s: float
    timeout_s: float
    wall_factor: float = WALL_FACTOR
    driver: str
    isolation: str
    host: str
    machine: str
    measured: str = Field(description="when (UTC, ISO 8601)")
    duration_s: float = Field(description="wall time the calibration took")
    problems: dict[str, ReferenceTiming]

    def time_limits(self) -> dict[str, TimeLimits]:
        """Every problem's limits, by task_id (the fixed ones for a problem not calibrated)."""
        return {task: TimeLimits(cpu_s=t.cpu_limit_s, wall_s=t.wall_limit_s) for task, t in self.problems.items()}

    def unusable(self) -> dict[str, ReferenceTiming]:
        """The problems whose reference ran and did not pass (they keep the fixed limits)."""
        return {task: t for task, t in self.problems.items() if t.status not in ("passed", "no_reference")}

    def describe(self) -> dict[str, Any]:
        """What ``summary.json``'s ``run.time_limits`` says of it."""
        limits = [t.cpu_limit_s for t in self.problems.values() if t.calibrated]
        return {
            "mode": "calibrated",
            "factor": self.factor,
            "min_time_s": self.min_time_s,
            "timeout_s": self.timeout_s,
            "wall_factor": self.wall_factor,
            "calibrated_problems": len(limits),
            "fixed_problems": len(self.problems) - len(limits),
            "median_cpu_limit_s": statistics.median(limits) if limits else None,
            "max_cpu_limit_s": max(limits) if limits else None,
            "unusable_references": {task: {"status": t.status, "error": t.error} for task, t in self.unusable().items()},
            "driver": self.driver,
            "machine": self.machine,
            "measured": self.measured,
            "duration_s": self.duration_s,
        }


def describe_time_limits(limits: dict[str, Any]) -> str:
    """``run.time_limits`` of summary.json in a phrase, as the CLI and the report show it."""
    if limits.get("mode") != "calibrated":
        return f"fixed: {limits['cpu_limit_s']:g} s CPU, {limits['wall_limit_s']:g} s wall"
    if not limits.get("measured"):
        return "calibrated from reference solutions (not measured yet: no sample has run)"
    text = f"calibrated from reference solutions: {limits['factor']:g}x factor, min {limits['min_time_s']:g} s, at most {limits['timeout_s']:g} s"
    if limits.get("median_cpu_limit_s") is not None:
        text += f", median CPU limit {limits['median_cpu_limit_s']:g} s"
    if limits.get("fixed_problems"):
        text += f"; {limits['fixed_problems']} problem(s) without a usable reference keep the fixed limits"
    return text


def fixed_limits(sandbox: SandboxConfig) -> TimeLimits:
    """The time limits of `evalkit._executor.limits_for` (the one rule of the fixed case), as a `TimeLimits`."""
    from ._executor import limits_for  # here: the report and junit.xml need this module, not vmpool

    limits = limits_for(sandbox)
    return TimeLimits(cpu_s=limits.cpu_time_s or limits.wall_time_s, wall_s=limits.wall_time_s)


def describe_fixed(sandbox: SandboxConfig) -> dict[str, Any]:
    """``run.time_limits`` of a run with fixed limits."""
    fixed = fixed_limits(sandbox)
    return {"mode": "fixed", "cpu_limit_s": fixed.cpu_s, "wall_limit_s": fixed.wall_s}


def reference_requests(
    benchmark: Benchmark, problems: Iterable[Problem], timeout_s: float, runs: int = 1, first: int = 0
) -> list[ExecRequest]:
    """The programs of the problems' reference solutions, ``runs`` of each (sample_idx ``first``...),
    limited only by the ceiling ``timeout_s`` (CPU and wall): a reference slower than a tight
    ``cpu_time_s`` is what calibration is for."""
    ceiling = TimeLimits(cpu_s=timeout_s, wall_s=timeout_s)
    return [
        ExecRequest(
            sample=Sample(task_id=p.task_id, sample_idx=i, completion=p.canonical_solution),
            program=benchmark.program(p, p.canonical_solution),
            time_limits=ceiling,
        )
        for p in problems
        if p.canonical_solution is not None
        for i in range(first, first + runs)
    ]


def calibrate(
    scheduler: _Scheduler, benchmark: Benchmark, problems: Sequence[Problem], sandbox: SandboxConfig, driver: str, isolation: str
) -> Calibration:
    """Time every problem's reference on ``scheduler`` and derive the limits (see the module's
    docstring). Logs a warning for each reference that does not pass."""
    started = time.monotonic()
    _log.info("calibrating time limits: running %d reference solution(s)", sum(p.canonical_solution is not None for p in problems))
    results: dict[str, list[SampleResult]] = defaultdict(list)
    for result in scheduler.run(reference_requests(benchmark, problems, sandbox.timeout_s)):
        results[result.task_id].append(result)
    threshold = sandbox.min_time_s / 2
    again = [p for p in problems if _passed(results[p.task_id]) and sandbox.calibration_factor * _max_cpu(results[p.task_id]) >= threshold]
    if again:
        for result in scheduler.run(reference_requests(benchmark, again, sandbox.timeout_s, EXTRA_RUNS, first=1)):
            results[result.task_id].append(result)
    timings = {p.task_id: _timing(results.get(p.task_id, []), sandbox) for p in problems}
    calibration = Calibration(
        factor=sandbox.calibration_factor,
        min_time_s=sandbox.min_time_s,
        timeout_s=sandbox.timeout_s,
        driver=driver,
        isolation=isolation,
        host=platform.node(),
        machine=machine_description(),
        measured=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - started, 3),
        problems=timings,
    )
    for task, timing in calibration.unusable().items():
        _log.warning("the reference solution of %s did not pass in calibration (%s: %s); the problem keeps the fixed time limits", task, timing.status, timing.error)
    described = calibration.describe()
    _log.info(
        "time limits calibrated in %.1f s: %d problem(s) from their reference, %d with the fixed limits; median CPU limit %s s",
        calibration.duration_s, described["calibrated_problems"], described["fixed_problems"], described["median_cpu_limit_s"],
    )
    return calibration


def _passed(results: Sequence[SampleResult]) -> bool:
    return bool(results) and all(r.status == "passed" for r in results)


def _max_cpu(results: Sequence[SampleResult]) -> float:
    return max((r.cpu_time_s for r in results), default=0.0)


def _timing(results: Sequence[SampleResult], sandbox: SandboxConfig) -> ReferenceTiming:
    fixed = fixed_limits(sandbox)
    if not results:
        return ReferenceTiming(status="no_reference", calibrated=False, cpu_limit_s=fixed.cpu_s, wall_limit_s=fixed.wall_s)
    worst = next((r for r in results if r.status != "passed"), results[0])
    measured = {
        "runs": len(results),
        "cpu_s": _max_cpu(results),
        "wall_s": max(r.duration_s for r in results),
        "flaky": any(r.flaky for r in results),
    }
    if worst.status != "passed":
        return ReferenceTiming(status=worst.status, error=worst.error, calibrated=False, cpu_limit_s=fixed.cpu_s, wall_limit_s=fixed.wall_s, **measured)
    cpu = cpu_limit(measured["cpu_s"], sandbox.calibration_factor, sandbox.min_time_s, sandbox.timeout_s)
    return ReferenceTiming(status="passed", calibrated=True, cpu_limit_s=cpu, wall_limit_s=wall_limit(cpu, sandbox.timeout_s), **measured)


def read_calibration(run_dir: Path) -> Calibration | None:
    """The run folder's ``calibration.json``, None if it has none; `RunStoreError` if it cannot
    be read or is not one this evalkit reads."""
    path = run_dir / CALIBRATION_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunStoreError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return Calibration.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise RunStoreError(f"{path} is not a calibration this evalkit reads ({where}: {err['msg']}); start a new run to calibrate again") from None


def machine_description() -> str:
    """CPUs, their model and the OS: what calibrated limits were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({model or 'unknown model'}), {platform.system()} {platform.release()}"
