"""Statistics over problems: bootstrap intervals of pass@k and the paired tests that compare two runs.

Pure functions of per-problem figures (numpy and the standard library only), seeded so that
the same results always give the same intervals and p-values.

The unit of resampling is the **problem**, never the sample: samples of one problem are not
independent (they share its difficulty), and the question a benchmark answers is how a model
does on problems like these. Two runs of the same problems are compared **paired**, problem by
problem, which removes the (large) spread of difficulty between problems from the test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ._scoring import pass_at_k

DEFAULT_LEVEL = 0.95
DEFAULT_ITERATIONS = 2000
_EXACT_SIGN_FLIP_MAX = 16  # up to 2**16 sign patterns are enumerated; beyond, they are drawn
_SIGN_FLIP_DRAWS = 20000
_CELLS_PER_CHUNK = 4_000_000  # resampled values held at once (32 MB of float64)
_TIE = 1e-9

Floats = npt.NDArray[np.float64]


def bootstrap_mean_ci(
    values: Sequence[float] | Floats, *, level: float = DEFAULT_LEVEL, iterations: int = DEFAULT_ITERATIONS, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: resample them with replacement
    ``iterations`` times and take the central ``level`` of the resampled means.

    The interval always contains the mean itself (a percentile interval of a mean does, except
    for rounding when every resample has the same mean). Raises ValueError for no values or a
    ``level`` outside (0, 1).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    rng = np.random.default_rng(seed)
    size = data.size
    chunk = max(1, _CELLS_PER_CHUNK // size)
    means = np.empty(iterations, dtype=np.float64)
    for start in range(0, iterations, chunk):
        stop = min(iterations, start + chunk)
        means[start:stop] = data[rng.integers(0, size, size=(stop - start, size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    point = math.fsum(data.tolist()) / size
    return min(float(low), point), max(float(high), point)


def pass_at_k_ci(
    per_problem: Mapping[str, tuple[int, int]],
    k: int,
    *,
    level: float = DEFAULT_LEVEL,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of pass@k over problems.

    ``per_problem`` maps each task_id to ``(n, c)``: scored samples and passed ones. Each
    resample draws as many problems as there are, with replacement, and averages their unbiased
    pass@k (`evalkit.pass_at_k`); the interval is the central ``level`` of those averages
    (percentile bootstrap). It says how much pass@k would move on another draw of problems like
    these; it does not cover the sampling noise within a problem, which the estimator already
    averages out. Deterministic for a given ``seed``; 164 problems × 2,000 resamples take a few
    milliseconds.

    Raises ValueError for no problems, or a problem with ``k > n`` (or ``c`` outside ``0..n``).
    """
    if not per_problem:
        raise ValueError("pass@k needs at least one problem with a scored sample")
    values = [pass_at_k(n, c, k) for n, c in per_problem.values()]
    return bootstrap_mean_ci(values, level=level, iterations=iterations, seed=seed)


def metrics_ci(problems: Mapping[str, Mapping[str, int]], metrics: Sequence[str], *, level: float = DEFAULT_LEVEL) -> dict[str, list[float]]:
    """``{"pass@1": [low, high], ...}`` for ``metrics`` (names ``pass@k``) from summary.json's
    per-problem ``{"n", "c"}`` table; problems without a scored sample are left out, as in pass@k."""
    scored = {task: (row["n"], row["c"]) for task, row in problems.items() if row["n"] > 0}
    intervals: dict[str, list[float]] = {}
    for name in metrics:
        low, high = pass_at_k_ci(scored, int(name.removeprefix("pass@")), level=level)
        intervals[name] = [low, high]
    return intervals


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided p-value of the exact McNemar test for paired pass/fail outcomes.

    ``b`` problems passed in run A only, ``c`` in run B only (the discordant pairs; problems
    both runs passed or both failed say nothing about which run is better). Under "no
    difference" each discordant problem is equally likely to fall either way, so ``b`` follows
    Binomial(b + c, 1/2); the p-value is twice the smaller tail, at most 1. Exact, so valid for
    the handful of flips a nightly run usually has, where the chi-squared approximation is not.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / (1 << m))


def sign_flip_test(differences: Sequence[float] | Floats, *, draws: int = _SIGN_FLIP_DRAWS, seed: int = 0) -> tuple[float, bool]:
    """Two-sided paired permutation (sign-flip) test that the mean of ``differences`` is 0.

    ``differences`` are per-problem pass rates of run B minus run A. Under "no difference"
    which run scored higher on a problem is a coin flip, so every pattern of signs is equally
    likely; the p-value is the share of sign patterns whose mean is at least as far from 0 as
    the observed one. It makes no assumption about the distribution of the differences (pass
    rates are bounded, lumpy and often 0 or 1, far from normal), and with pass/fail outcomes
    (n = 1) it is exactly `mcnemar_exact`.

    With at most 16 non-zero differences all 2**m patterns are enumerated (exact); otherwise
    ``draws`` random patterns are used, with the ``(1 + hits) / (1 + draws)`` estimate, which
    is never 0. Returns ``(p_value, exact)``.
    """
    data = np.asarray(differences, dtype=np.float64)
    nonzero = data[np.abs(data) > _TIE]
    m = nonzero.size
    if m == 0:
        return 1.0, True
    observed = abs(math.fsum(nonzero.tolist()))
    tolerance = _TIE * max(1.0, observed)
    if m <= _EXACT_SIGN_FLIP_MAX:
        patterns = np.arange(2**m, dtype=np.int64)[:, None] >> np.arange(m, dtype=np.int64)
        signs = 1.0 - 2.0 * (patterns & 1)
        sums = np.abs(signs @ nonzero)
        return float(np.mean(sums >= observed - tolerance)), True
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, _CELLS_PER_CHUNK // m)
    for start in range(0, draws, chunk):
        rows = min(draws, start + chunk) - start
        signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, m))
        hits += int(np.count_nonzero(np.abs(signs @ nonzero) >= observed - tolerance))
    return (1 + hits) / (1 + draws), False
