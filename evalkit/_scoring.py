"""Scoring: pass@k with the unbiased estimator of Chen et al. (2021), and counts per status.

Pure functions of the results, so a report can be re-rendered without re-running anything.
``infra_error`` samples are left out of n and c (they say nothing about the model) and counted
on their own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ._types import STATUSES, SampleResult, task_order


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, of which c
    are correct, is correct: ``1 - C(n-c, k) / C(n, k)``, computed as a stable product.

    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(problems: Collection[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems given as ``(n, c)`` pairs, each with ``k <= n``.

    The sum is exactly rounded (``math.fsum``), so the mean does not depend on the order of
    the problems: the figure of ``summary.json`` and one recomputed from ``samples.parquet``,
    whose rows are in another order than the journal's, are the same float. Raises ValueError
    for no problems or for a pair `pass_at_k` rejects.
    """
    if not problems:
        raise ValueError("pass@k needs at least one problem with a scored sample")
    return math.fsum(pass_at_k(n, c, k) for n, c in problems) / len(problems)


def per_problem(results: Iterable[SampleResult]) -> dict[str, dict[str, int]]:
    """For each task_id: ``n`` scored samples, ``c`` passed, ``infra_error`` left out."""
    table: dict[str, dict[str, int]] = {}
    for r in results:
        row = table.setdefault(r.task_id, {"n": 0, "c": 0, "infra_error": 0})
        if r.status == "infra_error":
            row["infra_error"] += 1
        else:
            row["n"] += 1
            row["c"] += int(r.passed)
    return table


def score(results: Sequence[SampleResult], ks: Sequence[int]) -> dict[str, Any]:
    """The ``metrics``, ``counts`` and per-problem figures of ``summary.json``.

    pass@k is the mean over problems with at least one scored sample, reported for each k that
    is <= n for every such problem; the other ks are listed under ``skipped_k`` with the reason.
    """
    problems = per_problem(results)
    scored = {task: row for task, row in problems.items() if row["n"] > 0}
    min_n = min((row["n"] for row in scored.values()), default=0)
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for k in sorted(set(ks)):
        if not scored:
            skipped[f"pass@{k}"] = "no problem has a scored sample"
        elif k > min_n:
            skipped[f"pass@{k}"] = f"needs n >= {k} samples for every problem; the smallest n is {min_n}"
        else:
            metrics[f"pass@{k}"] = mean_pass_at_k([(r["n"], r["c"]) for r in scored.values()], k)
    counts = Counter(r.status for r in results)
    return {
        "metrics": metrics,
        "skipped_k": skipped,
        "counts": {status: counts.get(status, 0) for status in STATUSES},
        "flaky": flaky_counts(results),
        "num_samples": len(results),
        "num_problems": len(problems),
        "num_scored_problems": len(scored),
        "unscored_problems": sorted(set(problems) - set(scored)),
        "problems": problems,
    }


def flaky_counts(results: Iterable[SampleResult]) -> dict[str, Any]:
    """``summary.json``'s ``flaky``: samples whose re-check gave another verdict than their
    first run (`evalkit._executor`), in all, by change (``"timeout->passed"``), and each one."""
    flaky = sorted((r for r in results if r.flaky), key=lambda r: (*task_order(r.task_id), r.sample_idx))
    changes = Counter(f"{r.first_status}->{r.status}" for r in flaky)
    return {
        "total": len(flaky),
        "by_change": dict(sorted(changes.items())),
        "samples": [{"task_id": r.task_id, "sample_idx": r.sample_idx, "first_status": r.first_status, "status": r.status} for r in flaky],
    }
