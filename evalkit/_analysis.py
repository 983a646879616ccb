"""Runs in notebooks: `load_run` reads one run folder into pandas frames, `load_runs` stacks many.

    >>> run = evalkit.load_run("reports/my-model-humaneval-20261127-101500")
    >>> run.pass_at_k(1) == run.summary["metrics"]["pass@1"]
    True
    >>> run.problems.sort_values("pass_rate").head(10)

Read only: loading never writes to a run folder, so a run that another process is still
running, or one that was interrupted, loads as it stands. The samples come from
``samples.parquet`` when it is at least as new as every file it is derived from, and otherwise
from the journal with the rule the runner uses (`_planned_results`); likewise ``summary.json``,
else a summary computed the same way in memory.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._config import EvalConfig
from ._errors import RunStoreError
from ._runner import _generation_summary, _planned_results, current_samples
from ._scoring import mean_pass_at_k, score
from ._store import RunStore
from ._types import STATUSES, Generation, SampleResult, task_order

if TYPE_CHECKING:
    from ._compare import Comparison

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


class Run:
    """One run folder, loaded for analysis (see `load_run`).

    Attributes:
        path: the run folder (absolute).
        name: the run's name (the config's ``name``; the folder adds the start time to it).
        label: ``name (path)``, how comparisons name the run.
        config: the resolved `EvalConfig` the run was started with.
        summary: ``summary.json`` as a dict (``metrics``, ``counts``, ``problems``, ``run``, ...).
        samples: one row per sample with a verdict (an unfinished run has fewer rows than planned
            samples), sorted by task and sample. Text columns have pandas' string dtype (``str``;
            ``object`` under pandas 2), a missing value is NaN. Columns: ``task_id``,
            ``sample_idx`` (int64), ``completion``, ``prompt`` and ``response`` (a model API's
            rendered prompt and raw reply; missing otherwise), ``status`` (categorical: passed,
            failed, timeout, oom, infra_error), ``passed`` (bool), ``duration_s`` (float64, wall
            time in the sandbox),
            ``driver``, ``isolation``, ``error`` (why it did not pass; missing if it did),
            ``exit_code`` (Int64, missing after a timeout), ``stdout``, ``stderr``,
            ``output_truncated`` (bool), ``cpu_time_s``, ``max_rss_mb`` (float64), ``attempts``
            (int64, infrastructure retries included); from ``completions.jsonl``, for model-API
            runs only (missing otherwise): ``finish_reason``, ``input_tokens``,
            ``output_tokens`` (Int64), ``latency_s`` (float64), ``completion_source`` (api, cache).
        problems: one row per planned problem, sorted by task. Columns: ``task_id``, ``planned``
            (samples planned), ``n`` (scored samples: infra_error left out), ``c`` (passed),
            ``pass_rate`` (c / n; NaN when n is 0), one count per status (``passed``, ``failed``,
            ``timeout``, ``oom``, ``infra_error``), ``pending`` (planned samples without a
            verdict yet), ``mean_duration_s`` and ``max_duration_s`` (over the scored samples),
            and from ``problems.jsonl`` (missing for a folder written before evalkit kept it):
            ``entry_point``, ``prompt``, ``test``.
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.path: Path = store.path
        self.config: EvalConfig = store.config()
        self.name: str = self.config.name
        self._planned = current_samples(store)
        self.samples: pd.DataFrame = _samples_frame(store, lambda: self.results)
        self.summary: dict[str, Any] = _stored_json(store, "summary.json") or _computed_summary(store, self.config, self.results, len(self._planned))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.path})"

    @property
    def complete(self) -> bool:
        """Whether the run finished with a verdict on every planned sample (infra_error counts
        as no verdict)."""
        return bool(self.summary["run"]["complete"])

    @cached_property
    def results(self) -> list[SampleResult]:
        """The verdicts as `SampleResult` records, read from the journal (the runner's rule)."""
        return _planned_results(self._store, self._planned)

    @cached_property
    def problems(self) -> pd.DataFrame:
        return _problems_frame(self._store, self._planned, self.samples)

    def pass_at_k(self, k: int) -> float:
        """pass@k over the problems with a scored sample, from `samples`: the very float of
        ``summary["metrics"][f"pass@{k}"]``. ValueError if some such problem has fewer than k
        scored samples, or none has any."""
        scored = self.problems[self.problems["n"] > 0]
        if scored.empty:
            raise ValueError(f"{self.path.name} has no scored sample, so no pass@{k}")
        smallest = scored.loc[scored["n"].idxmin()]
        if not 1 <= k <= smallest["n"]:
            raise ValueError(f"pass@{k} needs 1 <= k <= n for every problem; {smallest['task_id']} has n = {smallest['n']} scored samples")
        return mean_pass_at_k(list(zip(scored["n"].tolist(), scored["c"].tolist())), k)

    def compare(self, baseline: Run, *, alpha: float = 0.05) -> Comparison:
        """This run (B) against ``baseline`` (A), over the problems both scored: the flips each
        way and a paired test (see `evalkit._compare.Comparison`)."""
        # imported here until the comparison functions land in _compare (issue 6)
        from ._compare import compare_results  # type: ignore[attr-defined,unused-ignore]

        comparison: Comparison = compare_results(baseline.results, self.results, label_a=baseline.label, label_b=self.label, alpha=alpha)
        return comparison

    def __repr__(self) -> str:
        metrics = " ".join(f"{name}={value:.4f}" for name, value in self.summary["metrics"].items())
        run = self.summary["run"]
        return (f"<evalkit.Run {self.path.name!r} model={run['model']!r} benchmark={run['benchmark']!r} "
                f"samples={len(self.samples)}{' ' + metrics if metrics else ''} state={run['state']!r}>")

    def _repr_html_(self) -> str:
        from ._run_html import run_html

        return run_html(self)


def load_run(path: str | Path) -> Run:
    """Load a run folder for analysis, finished or not; `RunStoreError` if ``path`` is not a run
    folder this evalkit can read."""
    folder = Path(path)
    if not folder.exists():
        raise RunStoreError(f"no run folder at {folder}: it does not exist")
    if not folder.is_dir():
        raise RunStoreError(f"{folder} is a file, not a run folder")
    return Run(RunStore.open(folder))


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The samples of many runs in one frame: `RUN_COLUMNS` (``run`` the folder's name,
    ``run_name``, ``run_dir``, ``model``, ``benchmark``, ``started``), then `Run.samples`.

    ``paths`` is a run folder, a glob pattern (``"reports/nightly-*"``), or a list of either. A
    pattern keeps the folders it matches that hold a ``run.json``, in name order (the start time
    for one config), and is a ValueError if it matches none; a folder named outright that is not
    a run is a `RunStoreError`.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ValueError("load_runs needs at least one run folder or pattern")
    frames = [_with_run_columns(load_run(folder)) for item in items for folder in _expand(item)]
    return pd.concat(frames, ignore_index=True)


def _expand(item: str | Path) -> list[Path]:
    if isinstance(item, Path) or not glob.has_magic(item):
        return [Path(item)]
    matches = sorted(Path(m) for m in glob.glob(item))
    runs = [m for m in matches if (m / "run.json").is_file()]
    if not runs:
        found = f"matches {len(matches)} path(s), none a run folder" if matches else "matches nothing"
        raise ValueError(f"the pattern {item!r} {found}")
    return runs


def _with_run_columns(run: Run) -> pd.DataFrame:
    info = run.summary["run"]
    columns = {
        "run": run.path.name,
        "run_name": run.name,
        "run_dir": str(run.path),
        "model": info["model"],
        "benchmark": info["benchmark"],
        "started": pd.Timestamp(info["started"]).tz_convert("UTC") if info.get("started") else pd.NaT,
    }
    frame = run.samples.copy()
    for position, (column, value) in enumerate(columns.items()):
        frame.insert(position, column, pd.Series([value] * len(frame), index=frame.index, dtype=RUN_COLUMNS[column]))
    return frame


def _sources(store: RunStore) -> list[Path]:
    """The files that the derived ones (parquet, summary) are computed from."""
    names = ("run.json", "plan.jsonl", "problems.jsonl", "samples.jsonl", "completions.jsonl")
    return [store.path / name for name in names if (store.path / name).exists()]


def _current(store: RunStore, name: str) -> Path | None:
    """``name`` in the run folder if it is at least as new as every file it derives from."""
    path = store.path / name
    if not path.exists():
        return None
    newest = max((p.stat().st_mtime_ns for p in _sources(store)), default=0)
    return path if path.stat().st_mtime_ns >= newest else None


def _stored_json(store: RunStore, name: str) -> dict[str, Any] | None:
    path = _current(store, name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # computed again from the journal
    return data if isinstance(data, dict) else None


def _samples_frame(store: RunStore, results: Callable[[], list[SampleResult]]) -> pd.DataFrame:
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


def _problems_frame(store: RunStore, planned: Sequence[Any], samples: pd.DataFrame) -> pd.DataFrame:
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


def _computed_summary(store: RunStore, config: EvalConfig, results: list[SampleResult], planned: int) -> dict[str, Any]:
    """What ``summary.json`` would say, for a run that has none yet (interrupted, still running):
    the runner's scoring, with the run's own record of where and when it ran."""
    meta = store.meta()
    summary = score(results, config.sampling.k)
    summary["generation"] = _generation_summary(store, results, meta)
    model_name = (config.model.model_extra or {}).get("name")
    with_verdict = {r.key for r in results if r.status != "infra_error"}
    summary["run"] = {
        "name": config.name,
        "benchmark": meta.get("benchmark", config.benchmark.name or config.benchmark.path),
        "model": config.model.provider if model_name is None else f"{config.model.provider}:{model_name}",
        "driver": meta.get("driver", "?"),
        "isolation": meta.get("isolation", "?"),
        "started": meta.get("created"),
        "finished": meta.get("finished"),
        "state": meta.get("state"),
        "planned_samples": planned,
        "complete": meta.get("state") == "finished" and len(with_verdict) == planned,
        "duration_s": float(meta.get("duration_s", 0.0)),
        "evalkit_version": meta.get("evalkit_version"),
        "run_format_version": meta.get("format_version"),
    }
    return summary
