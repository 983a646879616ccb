"""Comparing two runs problem by problem: what flipped each way, and whether the difference is
more than noise (a paired test over the problems both runs scored).

Only problems scored in both runs are compared (``infra_error`` samples are left out, as in
pass@k; a problem with no scored sample in a run is not scored there). Run A is the baseline:
``delta`` is B minus A, so a negative delta is a regression.

The test behind ``p_value`` (see `evalkit._stats`):

- every common problem has one sample in each run (pass/fail): the **exact McNemar test**, a
  binomial test on the problems that flipped; exact because a nightly run flips a handful;
- otherwise: a **paired sign-flip permutation test** on per-problem pass-rate differences
  (pass@1 per problem), exact up to 16 problems that differ and from 20,000 random sign
  patterns beyond; it assumes nothing about how the differences are distributed.

``delta_ci`` is a paired bootstrap over problems (the same problems resampled in both runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ._errors import UserInputError
from ._scoring import mean_pass_at_k
from ._stats import bootstrap_mean_ci, mcnemar_exact, sign_flip_test
from ._store import RunStore
from ._types import SampleResult, task_order

DEFAULT_KS = (1, 10, 100)


@dataclass(frozen=True)
class ProblemChange:
    """One problem whose pass rate differs between the runs (rates are c/n, infra_error excluded)."""

    task_id: str
    rate_a: float
    rate_b: float
    n_a: int
    n_b: int


@dataclass(frozen=True)
class Comparison:
    """Run B compared with run A (the baseline), over the problems both runs scored."""

    a: str = field(metadata={"doc": "label of run A (the baseline): run name and folder"})
    b: str = field(metadata={"doc": "label of run B"})
    problems: int = field(metadata={"doc": "problems both runs scored"})
    only_a: list[str] = field(metadata={"doc": "problems scored in A only (left out of the comparison)"})
    only_b: list[str] = field(metadata={"doc": "problems scored in B only"})
    metrics: dict[str, tuple[float, float]] = field(metadata={"doc": "e.g. 'pass@1': (A, B), over the common problems"})
    delta: float = field(metadata={"doc": "pass@1 of B minus pass@1 of A"})
    delta_ci: tuple[float, float] = field(metadata={"doc": "95% paired bootstrap interval of delta"})
    p_value: float = field(metadata={"doc": "two-sided p-value of the paired test"})
    test: str = field(metadata={"doc": "which paired test gave p_value"})
    alpha: float = field(metadata={"doc": "significance level"})
    significant: bool = field(metadata={"doc": "p_value < alpha"})
    regressed: list[ProblemChange] = field(metadata={"doc": "rate_b < rate_a, largest drop first"})
    improved: list[ProblemChange] = field(metadata={"doc": "rate_b > rate_a, largest gain first"})

    @property
    def significant_regression(self) -> bool:
        return self.significant and self.delta < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        values = dict(data)
        values["metrics"] = {k: (float(v[0]), float(v[1])) for k, v in data["metrics"].items()}
        values["delta_ci"] = (float(data["delta_ci"][0]), float(data["delta_ci"][1]))
        values["regressed"] = [ProblemChange(**c) for c in data["regressed"]]
        values["improved"] = [ProblemChange(**c) for c in data["improved"]]
        return cls(**values)


class RunResults(NamedTuple):
    """What a comparison needs of a run folder: a label, the results that count, its ks."""

    label: str
    results: list[SampleResult]
    ks: list[int]


def read_run(run_dir: str | Path) -> RunResults:
    """The results of a run folder that count (those of its planned samples, by the rule
    ``evalkit report`` uses), labelled ``"name (folder)"``; `RunStoreError` if it is not a run."""
    from ._results import run_results  # that module uses this one: imported when called

    store = RunStore.open(run_dir)
    config = store.config()
    return RunResults(f"{config.name} ({store.path})", run_results(store), list(config.sampling.k))


def compare_runs(run_a: str | Path, run_b: str | Path, *, alpha: float = 0.05) -> Comparison:
    """Compare run folder ``run_b`` with ``run_a`` (the baseline), as `compare_results` does,
    for pass@1 and each k either run's config asks for. Raises `RunStoreError` for a folder that
    is not a run, `UserInputError` when no problem was scored in both."""
    a, b = read_run(run_a), read_run(run_b)
    return compare_results(a.results, b.results, label_a=a.label, label_b=b.label, alpha=alpha, ks=sorted({*a.ks, *b.ks}))


def compare_results(
    results_a: Sequence[SampleResult],
    results_b: Sequence[SampleResult],
    *,
    label_a: str,
    label_b: str,
    alpha: float = 0.05,
    ks: Iterable[int] = DEFAULT_KS,
) -> Comparison:
    """Run B's results compared with run A's (the baseline), over the problems both scored.

    ``metrics`` holds pass@1 and each of ``ks`` that is <= n for every common problem in both
    runs. ``delta`` is B's pass@1 minus A's, ``delta_ci`` its 95% paired bootstrap interval,
    ``p_value`` the two-sided p-value of the paired test (module docstring), ``significant``
    whether it is below ``alpha``. Raises ValueError for ``alpha`` outside (0, 1) and
    `UserInputError` when no problem was scored in both runs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    table_a, table_b = _scored(results_a), _scored(results_b)
    common = sorted(table_a.keys() & table_b.keys(), key=task_order)
    if not common:
        raise UserInputError(f"no problem was scored in both {label_a} and {label_b}: nothing to compare")
    min_n = min(min(table_a[t][0], table_b[t][0]) for t in common)
    metrics = {
        f"pass@{k}": (mean_pass_at_k([table_a[t] for t in common], k), mean_pass_at_k([table_b[t] for t in common], k))
        for k in sorted({1, *(k for k in ks if 1 <= k <= min_n)})
    }
    rates_a = [table_a[t][1] / table_a[t][0] for t in common]
    rates_b = [table_b[t][1] / table_b[t][0] for t in common]
    differences = [b - a for a, b in zip(rates_a, rates_b)]
    delta = metrics["pass@1"][1] - metrics["pass@1"][0]
    low, high = bootstrap_mean_ci(differences)
    p_value, test = _paired_test(common, table_a, table_b, differences)
    changes = [
        ProblemChange(task_id=t, rate_a=ra, rate_b=rb, n_a=table_a[t][0], n_b=table_b[t][0])
        for t, ra, rb in zip(common, rates_a, rates_b)
        if ra != rb
    ]
    return Comparison(
        a=label_a,
        b=label_b,
        problems=len(common),
        only_a=sorted(table_a.keys() - table_b.keys(), key=task_order),
        only_b=sorted(table_b.keys() - table_a.keys(), key=task_order),
        metrics=metrics,
        delta=delta,
        delta_ci=(min(low, delta), max(high, delta)),
        p_value=p_value,
        test=test,
        alpha=alpha,
        significant=p_value < alpha,
        regressed=sorted((c for c in changes if c.rate_b < c.rate_a), key=lambda c: (c.rate_b - c.rate_a, *task_order(c.task_id))),
        improved=sorted((c for c in changes if c.rate_b > c.rate_a), key=lambda c: (c.rate_a - c.rate_b, *task_order(c.task_id))),
    )


def _scored(results: Iterable[SampleResult]) -> dict[str, tuple[int, int]]:
    """task_id -> (n, c) over the samples with a verdict, for problems that have one."""
    table: dict[str, tuple[int, int]] = {}
    for r in results:
        if r.status != "infra_error":
            n, c = table.get(r.task_id, (0, 0))
            table[r.task_id] = (n + 1, c + int(r.passed))
    return table


def _paired_test(
    common: Sequence[str], table_a: dict[str, tuple[int, int]], table_b: dict[str, tuple[int, int]], differences: Sequence[float]
) -> tuple[float, str]:
    if all(table_a[t][0] == table_b[t][0] == 1 for t in common):
        only_a = sum(table_a[t][1] > table_b[t][1] for t in common)
        only_b = sum(table_b[t][1] > table_a[t][1] for t in common)
        return mcnemar_exact(only_a, only_b), f"exact McNemar test ({only_a + only_b} discordant problems)"
    p_value, exact = sign_flip_test(differences)
    how = "exact" if exact else "20,000 random sign patterns"
    return p_value, f"paired sign-flip permutation test on per-problem pass rates ({how})"


def verdict(comparison: Comparison) -> str:
    """One phrase: significant regression or improvement, or no significant difference."""
    if not comparison.significant:
        return f"no significant difference (p >= {comparison.alpha:g})"
    return f"significant {'regression' if comparison.delta < 0 else 'improvement'} (p < {comparison.alpha:g})"


def format_comparison(c: Comparison) -> str:
    """The text ``evalkit compare`` prints: the runs, each metric, the headline delta with its
    interval, p-value and verdict, then one line per problem that changed, regressions first."""
    lines = [
        f"A (baseline): {c.a}",
        f"B:            {c.b}",
        f"{c.problems} problems scored in both" + "".join(
            f"; {len(ids)} scored only in {side} (left out)" for side, ids in (("A", c.only_a), ("B", c.only_b)) if ids
        ),
    ]
    for name, (value_a, value_b) in c.metrics.items():
        lines.append(f"{name}: A {value_a:.4f} -> B {value_b:.4f} ({value_b - value_a:+.4f})")
    lines.append(
        f"delta pass@1 = {c.delta:+.4f} (95% CI {c.delta_ci[0]:+.4f} to {c.delta_ci[1]:+.4f}), "
        f"p = {c.p_value:.4g}, {c.test}: {verdict(c)}"
    )
    for title, changes, mark in (("regressed", c.regressed, "-"), ("improved", c.improved, "+")):
        lines.append(f"{title} ({len(changes)}):" if changes else f"{title}: none")
        lines.extend(f"  {mark} {ch.task_id}: {_rate(ch.rate_a, ch.n_a)} -> {_rate(ch.rate_b, ch.n_b)}" for ch in changes)
    return "\n".join(lines)


def _rate(rate: float, n: int) -> str:
    if n == 1:
        return "passed" if rate == 1.0 else "failed"
    return f"{round(rate * n)}/{n} passed"
