"""A run folder's results as pandas frames, with the dtypes `Run` documents: the samples (from
``samples.parquet`` while it is current, else from the journal by the runner's rule), the
problems, and the summary (``summary.json`` while current, else computed in memory).

"Current" means at least as new as every file it is derived from (run.json, the plan, the
problems, the journals): a run resumed after its report, or still running, has newer sources.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ._config import EvalConfig
from ._results import summarize
from ._store import RunStore
from ._types import STATUSES, Generation, Sample, SampleResult, task_order

# Text columns get pandas' own string dtype (``str``, missing values NaN) from pandas 3 on;
# before, ``object`` (casting to ``str`` there would turn None into the text "None").
_TEXT: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object

_RESULT_DTYPES: dict[str, Any] = {
    "task_id": _TEXT,
    "sample_idx": "int64",
    "completion": _TEXT,
    "prompt": _TEXT,
    "response": _TEXT,
    "status": pd.CategoricalDtype(STATUSES),
    "passed": "bool",
    "duration_s": "float64",
    "driver": _TEXT,
    "isolation": _TEXT,
    "error": _TEXT,
    "exit_code": "Int64",
    "stdout": _TEXT,
    "stderr": _TEXT,
    "output_truncated": "bool",
    "cpu_time_s": "float64",
    "max_rss_mb": "float64",
    "attempts": "int64",
    "cpu_limit_s": "float64",
    "wall_limit_s": "float64",
    "flaky": "bool",
    "first_status": pd.CategoricalDtype(STATUSES),
    "first_error": _TEXT,
}
# What completions.jsonl adds to a model-API run's samples: (column, field of Generation, dtype)
_GENERATION_COLUMNS: list[tuple[str, str, Any]] = [
    ("finish_reason", "finish_reason", _TEXT),
    ("input_tokens", "input_tokens", "Int64"),
    ("output_tokens", "output_tokens", "Int64"),
    ("latency_s", "latency_s", "float64"),
    ("completion_source", "source", _TEXT),
]
SAMPLE_DTYPES: dict[str, Any] = {**_RESULT_DTYPES, **{column: dtype for column, _, dtype in _GENERATION_COLUMNS}}
"""The columns of `Run.samples`, in order, with their dtypes."""

PROBLEM_DTYPES: dict[str, Any] = {
    "task_id": _TEXT,
    "planned": "int64",
    "n": "int64",
    "c": "int64",
    "pass_rate": "float64",
    **{status: "int64" for status in STATUSES},
    "pending": "int64",
    "mean_duration_s": "float64",
    "max_duration_s": "float64",
    "entry_point": _TEXT,
    "prompt": _TEXT,
    "test": _TEXT,
}
"""The columns of `Run.problems`, in order, with their dtypes."""

RUN_COLUMNS: dict[str, Any] = {
    "run": _TEXT,
    "run_name": _TEXT,
    "run_dir": _TEXT,
    "model": _TEXT,
    "benchmark": _TEXT,
    "started": "datetime64[ns, UTC]",
}
"""The run-level columns `load_runs` puts before each run's `Run.samples` columns."""


def _sources(store: RunStore) -> list[Path]:
    """The files that the derived ones (parquet, summary) are computed from."""
    names = ("run.json", "plan.jsonl", "problems.jsonl", "samples.jsonl", "completions.jsonl", "calibration.json")
    return [store.path / name for name in names if (store.path / name).exists()]


def _current(store: RunStore, name: str) -> Path | None:
    """``name`` in the run folder if it is at least as new as every file it derives from."""
    path = store.path / name
    if not path.exists():
        return None
    newest = max((p.stat().st_mtime_ns for p in _sources(store)), default=0)
    return path if path.stat().st_mtime_ns >= newest else None


def stored_json(store: RunStore, name: str) -> dict[str, Any] | None:
    """A JSON file of the run folder if it is current and readable, else None."""
    path = _current(store, name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # computed again from the journal
    return data if isinstance(data, dict) else None


def samples_frame(store: RunStore, results: Callable[[], list[SampleResult]]) -> pd.DataFrame:
    """From samples.parquet if current and complete, else from ``results()`` (the journal)."""
    frame: pd.DataFrame | None = None
    parquet = _current(store, "samples.parquet")
    if parquet is not None:
        try:
            frame = pd.read_parquet(parquet)
        except (OSError, ValueError):
            frame = None
        if frame is not None and not set(_RESULT_DTYPES) <= set(frame.columns):
            frame = None  # written by an evalkit with fewer columns
    if frame is None:
        rows = [r.model_dump() for r in sorted(results(), key=lambda r: (*task_order(r.task_id), r.sample_idx))]
        frame = pd.DataFrame(rows, columns=list(_RESULT_DTYPES))
    frame = frame[list(_RESULT_DTYPES)].astype(_RESULT_DTYPES)
    generated = store.completions()
    for column, field, dtype in _GENERATION_COLUMNS:
        values = [_generation_value(generated.get((t, i)), field) for t, i in zip(frame["task_id"], frame["sample_idx"])]
        frame[column] = pd.Series(values, index=frame.index, dtype=dtype)
    return frame.reset_index(drop=True)


def _generation_value(generation: Generation | None, field: str) -> Any:
    return None if generation is None else getattr(generation, field)


def problems_frame(store: RunStore, planned: Sequence[Sample], samples: pd.DataFrame) -> pd.DataFrame:
    """One row per planned problem: counts from ``samples``, texts from ``problems.jsonl``."""
    tasks = sorted({s.task_id for s in planned} | set(samples["task_id"]), key=task_order)
    frame = pd.DataFrame({"task_id": tasks}).set_index("task_id", drop=False)
    frame["planned"] = pd.Series([s.task_id for s in planned]).value_counts().reindex(tasks, fill_value=0)
    counts = pd.crosstab(samples["task_id"], samples["status"], dropna=False) if len(samples) else pd.DataFrame()
    for status in STATUSES:
        frame[status] = counts[status].reindex(tasks, fill_value=0) if status in counts else 0
    scored = samples[samples["status"] != "infra_error"]
    frame["n"] = frame[[s for s in STATUSES if s != "infra_error"]].sum(axis=1)
    frame["c"] = scored.groupby("task_id")["passed"].sum().reindex(tasks, fill_value=0)
    frame["pass_rate"] = frame["c"] / frame["n"].where(frame["n"] > 0)
    frame["pending"] = frame["planned"] - frame["n"] - frame["infra_error"]
    durations = scored.groupby("task_id")["duration_s"]
    frame["mean_duration_s"] = durations.mean().reindex(tasks)
    frame["max_duration_s"] = durations.max().reindex(tasks)
    texts = {p.task_id: p for p in store.problems() or []}
    for column in ("entry_point", "prompt", "test"):
        frame[column] = [getattr(texts[t], column) if t in texts else None for t in tasks]
    return frame[list(PROBLEM_DTYPES)].astype(PROBLEM_DTYPES).reset_index(drop=True)


def computed_summary(store: RunStore, config: EvalConfig, results: list[SampleResult], planned: int) -> dict[str, Any]:
    """What ``summary.json`` would say, for a run that has none yet (interrupted, still running):
    the runner's own `summarize`, without gates or a baseline comparison."""
    return summarize(store, config, results, planned, store.meta())
