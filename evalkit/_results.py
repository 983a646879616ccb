"""What a run folder's journal adds up to: the planned samples and the verdicts that count,
``summary.json`` (pass@k with intervals, counts, the model API's and the infrastructure's work,
gates, a baseline comparison), the files derived from it (``samples.parquet``, ``junit.xml``,
``report.html``) and the exit code. The runner, ``evalkit report``, ``recheck`` and `load_run`
all use these rules, so they never disagree about a run.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._benchmarks import Benchmark, get_benchmark
from ._calibrate import describe_fixed, read_calibration
from ._compare import Comparison, compare_results, read_run
from ._config import EvalConfig
from ._errors import ConfigError, EvalkitError, UserInputError
from ._gates import INFRA_GATE, evaluate_gates
from ._infra import infrastructure_summary
from ._junit import junit_xml
from ._models import ModelProvider, make_provider
from ._report import render_report
from ._scoring import score
from ._stats import metrics_ci
from ._store import RunStore
from ._types import Problem, Sample, SampleResult
from ._version import __version__

EXIT_OK = 0
EXIT_GATES = 1
EXIT_INPUT = 2
EXIT_INFRA = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunOutcome:
    """What a run left behind, and the exit code the CLI returns for it."""

    run_dir: Path
    summary: dict[str, Any]
    exit_code: int


def run_problems(store: RunStore, config: EvalConfig) -> list[Problem]:
    """The problems of a run: as stored in its folder, or (a folder from before evalkit stored
    them) as its benchmark gives them now; [] if neither can be had."""
    stored = store.problems()
    if stored is not None:
        return stored
    try:
        return select_problems(config)[1]
    except EvalkitError:
        return []


def current_samples(store: RunStore) -> list[Sample]:
    """A run's samples: its plan, with each model-API sample's completion (and raw reply) filled
    in from ``completions.jsonl`` once received."""
    plan = store.plan()
    generated = store.completions()
    return [generated[s.key].sample() if s.key in generated else s for s in plan]


def run_results(store: RunStore) -> list[SampleResult]:
    """The results of a run folder that count: the journal's verdicts on its current samples
    (the rule that resume, the end of a run, report and comparisons all use)."""
    return planned_results(store, current_samples(store))


def select_problems(config: EvalConfig) -> tuple[Benchmark, list[Problem]]:
    benchmark = get_benchmark(config.benchmark)
    try:
        return benchmark, benchmark.select(config.benchmark.ids, config.benchmark.limit)
    except ConfigError as exc:
        raise ConfigError(f"{config.where('benchmark', 'ids')}: {exc}") from None


def model_provider(config: EvalConfig) -> ModelProvider:
    try:
        return make_provider(config.model.model_dump())
    except ConfigError as exc:
        raise ConfigError(f"{config.where('model', 'provider')}: {exc}") from None


def planned_results(store: RunStore, samples: Sequence[Sample]) -> list[SampleResult]:
    """The journal's verdicts on the planned samples: the one rule that resume, the end of a run
    and report all use to decide what counts."""
    planned = {s.key: s.completion for s in samples}
    return [r for r in store.results() if planned.get(r.key) == r.completion]


def _time_limits_summary(store: RunStore, config: EvalConfig) -> dict[str, Any]:
    """``run.time_limits`` of summary.json: the fixed limits, or the calibration's figures."""
    if config.sandbox.time_limit == "fixed":
        return describe_fixed(config.sandbox)
    calibration = read_calibration(store.path)
    if calibration is None:  # stopped before calibration finished: no sample ran
        return {"mode": "calibrated", "measured": None}
    return calibration.describe()


def _generation_summary(store: RunStore, results: list[SampleResult], meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the model API did for the run, from ``completions.jsonl`` and run.json's totals."""
    generated = list(store.completions().values())
    totals = meta.get("generation")
    if not generated and totals is None:
        return None
    return {
        "completions": len(generated),
        "from_api": sum(g.source == "api" for g in generated),
        "from_cache": sum(g.source == "cache" for g in generated),
        "truncated": sum(g.finish_reason in ("length", "max_tokens") for g in generated),
        "input_tokens": sum(g.input_tokens or 0 for g in generated if g.source == "api"),
        "output_tokens": sum(g.output_tokens or 0 for g in generated if g.source == "api"),
        "failed_samples": sum(r.status == "infra_error" and (r.error or "").startswith("model API") for r in results),
        "api": dict((totals or {}).get("api") or {}),
    }


def summarize(store: RunStore, config: EvalConfig, results: list[SampleResult], planned: int, meta: dict[str, Any]) -> dict[str, Any]:
    """What ``summary.json`` says of ``results`` before gates and a baseline: pass@k with
    intervals, counts, the model API's work, the infrastructure's faults (`evalkit._infra`),
    and the run block (where, when and how it ran, as
    run.json recorded it). Pure: writes nothing."""
    summary = score(results, config.sampling.k)
    summary["metrics_ci"] = metrics_ci(summary["problems"], list(summary["metrics"]))
    with_verdict = {r.key for r in results if r.status != "infra_error"}
    model_name = (config.model.model_extra or {}).get("name")
    summary["generation"] = _generation_summary(store, results, meta)
    summary["infrastructure"] = infrastructure_summary(meta.get("infrastructure"), results)
    summary["run"] = {
        "name": config.name,
        "benchmark": meta.get("benchmark", config.benchmark.name or config.benchmark.path),
        "model": config.model.provider if model_name is None else f"{config.model.provider}:{model_name}",
        "model_params": _model_params(config),
        "driver": meta.get("driver", "?"),
        "isolation": meta.get("isolation", "?"),
        "started": meta.get("created"),
        "finished": meta.get("finished"),
        "state": meta.get("state"),
        "planned_samples": planned,
        "complete": meta.get("state") == "finished" and len(with_verdict) == planned,
        "duration_s": float(meta.get("duration_s", 0.0)),
        "evalkit_version": meta.get("evalkit_version", __version__),
        "host": meta.get("host", platform.node()),  # the machine that ran it (older run.json: this one)
        "python": meta.get("python", platform.python_version()),
        "run_format_version": meta.get("format_version"),
        "time_limits": _time_limits_summary(store, config),
        "recheck_failures": config.sandbox.recheck_failures,
    }
    return summary


def finish(store: RunStore, config: EvalConfig, samples: Sequence[Sample], meta: dict[str, Any]) -> dict[str, Any]:
    results = planned_results(store, samples)
    summary = summarize(store, config, results, len(samples), meta)
    comparison, why_not = _compare_with_baseline(store, config, results)
    summary["comparison"] = None if comparison is None else comparison.to_dict()
    summary["gates"] = evaluate_gates(config.parsed_gates(), summary, comparison, why_not)
    summary["gates_passed"] = all(gate["passed"] for gate in summary["gates"])
    summary["determinism"] = store.determinism()
    store.write_parquet(results)
    if comparison is None:
        store.remove("comparison.json")  # from an earlier report with a baseline
    else:
        store.write_json("comparison.json", comparison.to_dict())
    store.write_text("junit.xml", junit_xml(summary, results, [s.task_id for s in samples]))
    store.write_text("report.html", render_report(summary, results, run_problems(store, config), comparison=comparison))
    store.write_json("summary.json", summary)  # last: with a summary, every file of a finished run is written
    return summary


def _model_params(config: EvalConfig) -> dict[str, Any]:
    """The model's options, defaults included, for the report; header values masked (they may
    hold secrets)."""
    try:
        params = model_provider(config).options.model_dump(mode="json", exclude={"provider"})
    except ConfigError:  # a provider plug-in no longer installed: show what the config says
        params = dict(config.model.model_extra or {})
    if isinstance(params.get("extra_headers"), dict):
        params["extra_headers"] = {name: "***" for name in params["extra_headers"]}
    return params


def _compare_with_baseline(store: RunStore, config: EvalConfig, results: Sequence[SampleResult]) -> tuple[Comparison | None, str | None]:
    """The run compared with its baseline, or (None, why not)."""
    if config.baseline is None:
        return None, None
    base = read_run(config.baseline)
    try:
        comparison = compare_results(
            base.results, results, label_a=base.label, label_b=f"{config.name} ({store.path})", ks=sorted({*base.ks, *config.sampling.k})
        )
    except UserInputError as exc:
        return None, str(exc)
    return comparison, None


def exit_code(summary: dict[str, Any]) -> int:
    """The exit code a run's summary gives (DESIGN.md, "Contracts"); infrastructure beats gates.

    3 (`EXIT_INFRA`) when the run did not finish, or when planned samples lack a verdict
    (``infra_error``, or never run) beyond the tolerance: none, unless an ``infra_error_rate``
    gate sets one. Otherwise 1 (`EXIT_GATES`) when a gate is not met, and 0 when every gate is
    met (a run without gates: when it is complete).
    """
    run = summary["run"]
    gates: list[dict[str, Any]] = summary.get("gates", [])
    if run["state"] != "finished":
        return EXIT_INFRA
    tolerance = [gate for gate in gates if gate["metric"] == INFRA_GATE]
    if tolerance:
        if not all(gate["passed"] for gate in tolerance):
            return EXIT_INFRA
    elif not run["complete"] or summary["counts"]["infra_error"]:
        return EXIT_INFRA
    return EXIT_OK if all(gate["passed"] for gate in gates) else EXIT_GATES
