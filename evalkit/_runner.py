"""One evaluation run, end to end: the Python API behind ``evalkit run``, ``resume`` and ``report``.

    config ─► problems ─► samples (the plan) ─► programs ─► Feed ─► Ray scheduler ─► journal
                              └► model API (generation stage) ──┘                  └► parquet, summary.json (gates),
                                                                                       comparison.json, junit.xml, report.html

A run folder is self-contained: the plan (every sample with its completion, or for a model API
its rendered prompt) is written when the run starts, and a model's completions are journaled as
they arrive, so resuming or re-reporting needs neither the samples file nor the model for what
the run already has.

What the journal adds up to (the verdicts that count, summary.json, the derived files and the
exit code) is `evalkit._results`; this module makes the journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._benchmarks import Benchmark
from ._calibrate import CALIBRATION_FILE, calibrate, read_calibration
from ._config import EvalConfig, load_config
from ._errors import ConfigError, EvalkitError, InfraError, RunInterrupted, RunStoreError, StorageError, UserInputError
from ._api import ApiProvider
from ._compare import read_run
from ._feed import Feed
from ._infra import InfraCounts
from ._generation import GenerationStage, api_key, cache_folder, completion_stops, planned_samples
from ._models import ModelProvider
from ._progress import Progress
from ._results import RunOutcome, current_samples, exit_code, finish, model_provider, planned_results, run_problems, select_problems
from ._store import RunStore, low_space, now
from ._types import ExecRequest, Problem, Sample, TimeLimits

_log = logging.getLogger("evalkit")



def run(
    config: EvalConfig | str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    use_cache: bool = True,
    baseline: str | Path | None = None,
) -> RunOutcome:
    """Evaluate ``config`` in a new run folder under its ``output_dir``.

    With ``resume=True``, continue instead the newest unfinished run of the same config whose
    plan (every sample and completion, or prompt) and problems are exactly what this config
    gives now; start a new run if there is none. ``use_cache=False``: ask a model API for every
    completion even if the completion cache has it (fresh completions still go to the cache).
    ``baseline``: a run folder to compare with, instead of the config's ``baseline`` (it is
    recorded in the new run's config.yaml).
    """
    if not isinstance(config, EvalConfig):
        config = load_config(config)
    config = _with_baseline(config, baseline)
    benchmark, problems = select_problems(config)
    _check_baseline(config, problems)
    RunStore.prepare(config)
    provider = model_provider(config)
    samples = _plan(config, benchmark, problems, provider)
    _warn_low_space(Path(config.output_dir), samples)
    digest = problems_digest(problems)
    if resume:
        previous = _resumable(config, samples, digest)
        if previous is not None:
            _log.info("resuming %s", previous)
            return _continue(previous, progress, use_cache, baseline)
    if isinstance(provider, ApiProvider):
        api_key(config, provider)  # a missing key is a config error, before anything starts
    driver, isolation = check_sandbox(config)
    if not provider.generative:
        with start_scheduler(config, driver, needed=True) as (scheduler, start_s):
            store = RunStore.create(config)  # only once Ray is up: a failed start leaves no folder
            try:
                _start_store(store, samples, problems, digest, start_s)
                with _work(store, config, benchmark, problems, provider, samples, driver, use_cache) as (feed, stage):
                    return _execute(store, config, benchmark, samples, feed, stage, scheduler, driver, isolation, progress, Counter())
            finally:
                store.release()
    store = RunStore.create(config)  # before Ray: the model's first completions arrive while Ray starts
    try:
        _start_store(store, samples, problems, digest, 0.0)
        with _work(store, config, benchmark, problems, provider, samples, driver, use_cache) as (feed, stage):
            with start_scheduler(config, driver, needed=True) as (scheduler, start_s):
                store.write_meta(scheduler_start_s=start_s)
                return _execute(store, config, benchmark, samples, feed, stage, scheduler, driver, isolation, progress, Counter())
    finally:
        store.release()


def _start_store(store: RunStore, samples: Sequence[Sample], problems: Sequence[Problem], digest: str, start_s: float) -> None:
    # the plan last: a folder with a plan has everything `--resume` checks (a kill -9 can come between)
    store.write_meta(planned_samples=len(samples), scheduler_start_s=start_s, problems_sha256=digest)
    store.write_problems(problems)
    store.write_plan(samples)
    _log.info("run folder: %s", store.path)


def resume(run_dir: str | Path, *, progress: bool = True, use_cache: bool = True, baseline: str | Path | None = None) -> RunOutcome:
    """Finish a run from its plan and journals: samples with a verdict are not run again;
    missing and ``infra_error`` ones are (so this also retries the infrastructure failures of
    a finished run). A model API is asked only for completions that ``completions.jsonl`` lacks.
    A finished run with nothing left to run is only re-reported. ``baseline``: a run folder to
    compare with instead of the one in the run's config (for this call only).

    Raises `RunStoreError` if another process is running it, or if its problems changed.
    """
    return _continue(run_dir, progress, use_cache, baseline)


def _continue(run_dir: str | Path, progress: bool, use_cache: bool, baseline: str | Path | None) -> RunOutcome:
    store = RunStore.open(run_dir)
    store.check_writable()
    store.acquire()
    try:
        samples = current_samples(store)
        finished = {r.key: r.status for r in planned_results(store, samples) if r.status != "infra_error"}
        todo = [s for s in samples if s.key not in finished]
        _warn_low_space(store.path, todo)
        if store.meta().get("state") == "finished" and not todo:
            _log.info("%s has already finished; re-rendering its report", store.path)
            store.release()
            return report(run_dir, baseline=baseline)
        config = _with_baseline(store.config(), baseline)
        benchmark, problems = select_problems(config)
        _check_unchanged(store, samples, problems)
        _check_baseline(config, problems)
        provider = model_provider(config)
        driver, isolation = check_sandbox(config)
        with _work(store, config, benchmark, problems, provider, todo, driver, use_cache) as (feed, stage):
            with start_scheduler(config, driver, needed=bool(todo)) as (scheduler, start_s):
                store.write_meta(scheduler_start_s=start_s)
                return _execute(store, config, benchmark, samples, feed, stage, scheduler, driver, isolation, progress,
                                Counter(finished.values()))
    finally:
        store.release()


@contextlib.contextmanager
def _work(
    store: RunStore,
    config: EvalConfig,
    benchmark: Benchmark,
    problems: list[Problem],
    provider: ModelProvider,
    todo: Sequence[Sample],
    driver: str,
    use_cache: bool,
) -> Iterator[tuple[Feed, GenerationStage | None]]:
    """The feed of ``todo``'s requests: at once for samples with a completion, and, for a model
    API, as the generation stage receives the others."""
    generated = store.completions() if isinstance(provider, ApiProvider) else {}
    ready = [s for s in todo if not isinstance(provider, ApiProvider) or s.key in generated]
    requests = exec_requests(benchmark, problems, ready)
    if not isinstance(provider, ApiProvider):
        yield Feed.of(requests), None
        return
    missing = [s for s in todo if s.key not in generated]
    stage = GenerationStage(
        provider, benchmark, problems, store.completions_journal,
        key=api_key(config, provider) if missing else None,
        stops=completion_stops(provider, benchmark),
        driver=driver,
        cache_dir=cache_folder(provider),
        read_cache=use_cache,
    )
    for request in requests:
        stage.feed.put(request)
    if missing:
        _log.info("asking %s for %d completion(s)%s", provider.endpoint(), len(missing), f"; {len(ready)} already received" if ready else "")
    with stage:
        stage.start(missing)
        yield stage.feed, stage


def report(run_dir: str | Path, *, baseline: str | Path | None = None) -> RunOutcome:
    """Re-score, re-gate and re-render a run folder from its plan and journal, without running
    anything; the exit code is the one the run itself gives now (`exit_code`). ``baseline``: a
    run folder to compare with instead of the one in the run's config."""
    store = RunStore.open(run_dir)
    store.check_writable()
    config = _with_baseline(store.config(), baseline)
    _check_baseline(config, run_problems(store, config))
    samples = current_samples(store)
    summary = finish(store, config, samples, store.meta())
    return RunOutcome(store.path, summary, exit_code(summary))


def latest_unfinished(config: EvalConfig) -> Path | None:
    """The newest run folder of this very config (same name, same resolved settings) under its
    output_dir that did not finish and that no other process is running; None if there is none."""
    pattern = re.compile(rf"{re.escape(config.name)}-\d{{8}}-\d{{6}}(-\d+)?")
    folders = [p.parent for p in Path(config.output_dir).glob(f"{config.name}-*/run.json") if pattern.fullmatch(p.parent.name)]
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            store = RunStore.open(folder)
            finished = store.meta().get("state") == "finished" and (folder / "summary.json").exists()
            if finished or store.in_use():  # (finished without a summary: killed while writing it)
                continue
            if not (folder / "plan.jsonl").exists():  # killed while it was being created: nothing to continue
                continue
            if store.config().model_dump() != config.model_dump():
                _log.info("not resuming %s: it was started with a different config", folder)
                continue
        except EvalkitError:
            continue
        return folder
    return None


def problems_digest(problems: Sequence[Problem]) -> str:
    """A fingerprint of the problems a run is checked against (prompts and tests included)."""
    text = json.dumps([p.model_dump(mode="json") for p in problems], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resumable(config: EvalConfig, samples: Sequence[Sample], digest: str) -> Path | None:
    folder = latest_unfinished(config)
    if folder is None:
        return None
    store = RunStore.open(folder)
    if store.meta().get("problems_sha256") != digest or store.plan() != list(samples):
        _log.info("not resuming %s: its samples or problems differ from what this config gives now; starting a new run", folder)
        return None
    return folder


def _with_baseline(config: EvalConfig, baseline: str | Path | None) -> EvalConfig:
    if baseline is None:
        return config
    return config.model_copy(update={"baseline": str(Path(baseline).resolve())})


def _check_baseline(config: EvalConfig, problems: Sequence[Problem]) -> None:
    """Before anything runs: a gate that needs a baseline has one, and the baseline is a run
    folder that scored some of these problems (`UserInputError` otherwise)."""
    needing = [gate.metric for gate in config.parsed_gates() if gate.needs_baseline]
    if config.baseline is None:
        if needing:
            raise ConfigError(f"{config.where('gates', needing[0])}: gate '{needing[0]}' compares with a baseline run: set 'baseline' in the config or pass --baseline RUN_DIR")
        return
    try:
        base = read_run(config.baseline)
    except RunStoreError as exc:
        raise RunStoreError(f"baseline: {exc}") from None
    scored = {r.task_id for r in base.results if r.status != "infra_error"}
    if problems and not scored & {p.task_id for p in problems}:
        raise UserInputError(f"the baseline {base.label} scored none of this run's {len(problems)} problems: there is nothing to compare")


def _check_unchanged(store: RunStore, samples: Sequence[Sample], problems: Sequence[Problem]) -> None:
    known = {p.task_id for p in problems}
    stray = next((s for s in samples if s.task_id not in known), None)
    if stray is not None:
        raise RunStoreError(f"{store.path / 'plan.jsonl'}: sample of {stray.task_id!r}, which is not among the run's problems")
    recorded = store.meta().get("problems_sha256")
    if recorded is not None and recorded != problems_digest(problems):
        raise RunStoreError(f"{store.path}: the problems (prompts or tests) changed since this run started; start a new run instead")


def _plan(config: EvalConfig, benchmark: Benchmark, problems: list[Problem], provider: ModelProvider) -> list[Sample]:
    """Every sample the run evaluates: with completions (a file, the reference), or with the
    prompts a model API will be asked (completions come during the run)."""
    if isinstance(provider, ApiProvider):
        return planned_samples(config, benchmark, problems, provider)
    try:
        return provider.samples(problems, config.sampling.n, all_task_ids=[p.task_id for p in benchmark.problems()])
    except ConfigError as exc:  # SamplesError names its own file and line
        raise ConfigError(f"{config.where('model', 'provider')}: {exc}") from None


def exec_requests(benchmark: Benchmark, problems: list[Problem], samples: Sequence[Sample]) -> list[ExecRequest]:
    by_id = {p.task_id: p for p in problems}
    return [ExecRequest(sample=s, program=benchmark.program(by_id[s.task_id], s.completion)) for s in samples]


def check_sandbox(config: EvalConfig) -> tuple[str, str]:
    """Resolve the driver and start one sandbox here, so a host that cannot run sandboxes fails
    fast with the reason, before Ray starts. Returns (driver, isolation)."""
    from vmpool import LocalSandbox, VmpoolError, resolve_driver

    try:
        driver = resolve_driver(config.sandbox.driver)
        with LocalSandbox.create(driver=driver, python=config.sandbox.python, template=config.sandbox.template) as sandbox:
            isolation = sandbox.isolation
    except VmpoolError as exc:
        raise InfraError(f"cannot start a '{config.sandbox.driver}' sandbox: {exc}") from exc
    if config.sandbox.driver == "auto":
        _log.info("sandbox driver auto resolved to %s (%s)", driver, isolation)
    return driver, isolation


@contextlib.contextmanager
def start_scheduler(config: EvalConfig, driver: str, *, needed: bool) -> Iterator[tuple[Any, float]]:
    """A started `RayScheduler` and its start-up time, or (None, 0) when nothing is left to run."""
    if not needed:
        yield None, 0.0
        return
    from ._scheduler import RayScheduler

    started = time.monotonic()
    with RayScheduler(config.scheduler, config.sandbox, driver) as scheduler:
        yield scheduler, time.monotonic() - started


def _execute(
    store: RunStore,
    config: EvalConfig,
    benchmark: Benchmark,
    samples: Sequence[Sample],
    feed: Feed,
    stage: GenerationStage | None,
    scheduler: Any,
    driver: str,
    isolation: str,
    show_progress: bool,
    done: Counter[str],
) -> RunOutcome:
    started = time.monotonic()
    previous_s = float(store.meta().get("duration_s", 0.0))
    store.write_meta(state="running", driver=driver, isolation=isolation, benchmark=benchmark.name,
                     host=platform.node(), python=platform.python_version(),
                     workers=getattr(scheduler, "num_workers", 0))
    progress: Progress | None = None

    def elapsed() -> float:
        return previous_s + time.monotonic() - started

    def finished() -> int:
        return sum(done.values()) if progress is None else progress.done

    try:
        try:
            time_limits = None if feed.exhausted else _time_limits(store, config, benchmark, scheduler, driver, isolation)
            progress = Progress(len(samples), done, enabled=show_progress)  # after calibration: its log lines stay clear of the bar
            if not feed.exhausted:
                with store.journal() as journal:
                    for result in scheduler.run(feed, time_limits):
                        journal.append(result)
                        progress.update(result.status)
        finally:
            if progress is not None:
                progress.close()
            _save_generation_counts(store, stage)
            _save_infra_counts(store, scheduler)
        store.write_meta(state="finished", duration_s=elapsed(), finished=now())
        summary = finish(store, config, current_samples(store), store.meta())
    except StorageError as exc:
        raise _stopped_by_storage(store, exc, elapsed(), finished()) from exc
    except InfraError as exc:
        store.write_meta(state="failed", duration_s=elapsed())
        raise InfraError(f"{exc}; the {finished()} finished results are kept; continue with: evalkit resume {store.path}") from exc
    except KeyboardInterrupt:
        if store.meta().get("state") != "finished":  # a late Ctrl-C, while writing the report
            store.write_meta(state="interrupted", duration_s=elapsed())
        raise RunInterrupted(store.path, finished(), len(samples)) from None
    except BaseException:
        store.write_meta(state="failed", duration_s=elapsed())
        raise
    return RunOutcome(store.path, summary, exit_code(summary))


def _time_limits(
    store: RunStore, config: EvalConfig, benchmark: Benchmark, scheduler: Any, driver: str, isolation: str
) -> dict[str, TimeLimits] | None:
    """Per task_id, the time limits of a calibrated run (None: the fixed limits for all): from
    the run folder's calibration.json, or measured now (`evalkit._calibrate`) and recorded
    there before any sample runs. A resumed run never measures again: its remaining samples
    get the limits the others got."""
    if config.sandbox.time_limit == "fixed":
        return None
    calibration = read_calibration(store.path)
    if calibration is not None:
        _log.info("time limits as calibrated on %s (%s)", calibration.measured, CALIBRATION_FILE)
        return calibration.time_limits()
    if any(r.status != "infra_error" for r in store.results()):
        raise RunStoreError(f"{store.path} has verdicts but no {CALIBRATION_FILE}: its other samples cannot get the limits these got; start a new run")
    calibration = calibrate(scheduler, benchmark, run_problems(store, config), config.sandbox, driver, isolation)
    store.write_json(CALIBRATION_FILE, calibration.model_dump(mode="json"))
    return calibration.time_limits()


def _stopped_by_storage(store: RunStore, exc: StorageError, duration_s: float, done: int) -> StorageError:
    """What a run stopped by a failed write reports: the first write that failed (not a later
    one it caused, such as saving counts to run.json), that the journal is intact, and what to do.
    A run whose verdicts were all in (state finished) stays finished: only its derived files
    are missing, and `report` or `resume` writes them."""
    first, context = exc, exc.__context__
    while context is not None:
        if isinstance(context, StorageError):
            first = context
        context = context.__context__
    finished = store.meta().get("state") == "finished"
    if not finished:
        with contextlib.suppress(StorageError):  # the disk may be too full even for run.json
            store.write_meta(state="failed", duration_s=duration_s)
    kept = f"all {done} verdicts are in the journal" if finished else f"the run stopped; the {done} verdicts journaled so far are kept"
    return StorageError(f"{first}; {kept}. Free space (or make the folder writable), then run: evalkit resume {store.path}",
                        first.path, first.errno)


def _warn_low_space(folder: Path, samples: Sequence[Sample]) -> None:
    warning = low_space(folder, samples)
    if warning is not None:
        _log.warning("%s", warning)


def _save_generation_counts(store: RunStore, stage: GenerationStage | None) -> None:
    """Add what the generation stage did in this session to run.json's running totals."""
    if stage is None:
        return
    totals: dict[str, Any] = store.meta().get("generation") or {}
    counts = stage.counts
    for name, value in (("from_api", counts.from_api), ("from_cache", counts.from_cache), ("failed", counts.failed)):
        totals[name] = int(totals.get(name, 0)) + value
    api: dict[str, float] = dict(totals.get("api") or {})
    for counter, amount in counts.api.items():
        api[counter] = round(api.get(counter, 0) + amount, 3)
    totals["api"] = api
    store.write_meta(generation=totals)


def _save_infra_counts(store: RunStore, scheduler: Any) -> None:
    """Add what the scheduler counted in this session (`evalkit._infra`) to run.json's totals."""
    counts = getattr(scheduler, "counts", None)
    if counts is None:
        return
    totals = InfraCounts()
    totals.add(store.meta().get("infrastructure") or {})
    totals.add(counts.take())
    store.write_meta(infrastructure=totals.as_dict())

