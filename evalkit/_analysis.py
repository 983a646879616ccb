"""Runs in notebooks: `load_run` reads one run folder into pandas frames, `load_runs` stacks many.

    >>> run = evalkit.load_run("reports/my-model-humaneval-20261127-101500")
    >>> run.pass_at_k(1) == run.summary["metrics"]["pass@1"]
    True
    >>> run.problems.sort_values("pass_rate").head(10)

Read only: loading never writes to a run folder, so a run that another process is still
running, or one that was interrupted, loads as it stands. The samples come from
``samples.parquet`` when it is at least as new as every file it is derived from, and otherwise
from the journal with the rule the runner uses (`planned_results`); likewise ``summary.json``,
else a summary computed the same way in memory (`_frames` builds the frames).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ._compare import Comparison, compare_results
from ._config import EvalConfig
from ._errors import RunStoreError
from ._frames import RUN_COLUMNS, computed_summary, problems_frame, samples_frame, stored_json
from ._results import current_samples, planned_results
from ._scoring import mean_pass_at_k
from ._store import RunStore
from ._types import SampleResult

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
            (int64: executions of the program, infrastructure retries and the re-check of a
            failure included), ``cpu_limit_s`` and ``wall_limit_s`` (float64, the time limits
            it ran under: calibrated per problem or fixed; NaN for runs from before evalkit
            recorded them), ``flaky`` (bool: re-run after a failed, timeout or oom verdict,
            and the re-run's verdict, which is ``status``, differed), ``first_status``
            (categorical like ``status``; the first run's verdict of a re-run sample, missing
            otherwise) and ``first_error``; from ``completions.jsonl``, for model-API
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
        self.samples: pd.DataFrame = samples_frame(store, lambda: self.results)
        self.summary: dict[str, Any] = stored_json(store, "summary.json") or computed_summary(store, self.config, self.results, len(self._planned))

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
        return planned_results(self._store, self._planned)

    @cached_property
    def problems(self) -> pd.DataFrame:
        return problems_frame(self._store, self._planned, self.samples)

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
        return compare_results(baseline.results, self.results, label_a=baseline.label, label_b=self.label, alpha=alpha)

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
