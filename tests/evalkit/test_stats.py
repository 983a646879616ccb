"""Bootstrap intervals of pass@k over problems and the paired tests behind comparisons."""

from __future__ import annotations

import math
import random
import time

import pytest

from evalkit import pass_at_k, pass_at_k_ci
from evalkit._stats import bootstrap_mean_ci, mcnemar_exact, metrics_ci, sign_flip_test


def problems(count: int, n: int, solved_share: float, seed: int = 1) -> dict[str, tuple[int, int]]:
    """``count`` problems with ``n`` samples each; c drawn around ``solved_share``."""
    rng = random.Random(seed)
    table = {}
    for i in range(count):
        rate = min(1.0, max(0.0, rng.gauss(solved_share, 0.3)))
        table[f"T/{i}"] = (n, sum(rng.random() < rate for _ in range(n)))
    return table


def point(table: dict[str, tuple[int, int]], k: int) -> float:
    return math.fsum(pass_at_k(n, c, k) for n, c in table.values()) / len(table)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (10, 1), (10, 5), (10, 10)])
@pytest.mark.parametrize("count", [3, 20, 164])
def test_the_interval_contains_the_point_estimate(n: int, k: int, count: int) -> None:
    table = problems(count, n, 0.6)
    low, high = pass_at_k_ci(table, k)
    assert 0.0 <= low <= point(table, k) <= high <= 1.0
    assert (low < high) == (len({pass_at_k(n, c, k) for n, c in table.values()}) > 1)


def test_the_interval_shrinks_with_more_problems() -> None:
    widths = []
    for count in (10, 40, 160, 640):
        low, high = pass_at_k_ci(problems(count, 1, 0.6), 1)
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 4  # ~ 1/sqrt(count): a quarter of the width at 64x the problems


def test_a_95_percent_interval_is_about_four_standard_errors_wide() -> None:
    table = {f"T/{i}": (1, int(i % 5 != 0)) for i in range(400)}  # pass@1 = 0.8 exactly
    low, high = pass_at_k_ci(table, 1)
    se = math.sqrt(0.8 * 0.2 / 400)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert (low + high) / 2 == pytest.approx(0.8, abs=0.01)


def test_the_interval_is_deterministic_and_depends_on_the_seed() -> None:
    table = problems(50, 10, 0.5)  # n = 10: the resampled means are not all on a grid of 1/50
    assert pass_at_k_ci(table, 1) == pass_at_k_ci(table, 1)
    assert pass_at_k_ci(table, 1, seed=1) != pass_at_k_ci(table, 1, seed=2)


def test_a_wider_level_gives_a_wider_interval() -> None:
    table = problems(60, 1, 0.5)
    low90, high90 = pass_at_k_ci(table, 1, level=0.90)
    low99, high99 = pass_at_k_ci(table, 1, level=0.99)
    assert low99 < low90 and high90 < high99


def test_all_solved_or_all_failed_gives_a_point() -> None:
    assert pass_at_k_ci({f"T/{i}": (1, 1) for i in range(164)}, 1) == (1.0, 1.0)
    assert pass_at_k_ci({f"T/{i}": (5, 0) for i in range(7)}, 3) == (0.0, 0.0)


def test_164_problems_by_2000_resamples_take_milliseconds() -> None:
    table = problems(164, 10, 0.6)
    pass_at_k_ci(table, 1)
    started = time.perf_counter()
    pass_at_k_ci(table, 1)
    assert time.perf_counter() - started < 0.5  # vectorised; a Python loop takes seconds


def test_many_problems_are_resampled_in_chunks() -> None:
    values = [float(i % 2) for i in range(20000)]  # 2000 x 20000 cells would be 320 MB at once
    low, high = bootstrap_mean_ci(values, iterations=300)
    assert low < 0.5 < high and high - low < 0.03


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        pass_at_k_ci({}, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k_ci({"T/0": (2, 1)}, 5)
    with pytest.raises(ValueError, match="level"):
        pass_at_k_ci({"T/0": (2, 1)}, 1, level=95)


def test_metrics_ci_leaves_out_problems_without_a_scored_sample() -> None:
    table = {"T/0": {"n": 1, "c": 1}, "T/1": {"n": 1, "c": 0}, "T/2": {"n": 0, "c": 0}}
    intervals = metrics_ci(table, ["pass@1"])
    assert list(intervals) == ["pass@1"]
    assert intervals["pass@1"] == list(pass_at_k_ci({"T/0": (1, 1), "T/1": (1, 0)}, 1))


# Exact McNemar p-values, two-sided: 2 * P(Binomial(b + c, 1/2) <= min(b, c)), at most 1.
@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),
        (5, 0, 0.0625),  # 2 / 32
        (0, 6, 0.03125),  # 2 / 64
        (10, 2, 0.0386),  # 2 * 79 / 4096 = 0.03857
        (3, 3, 1.0),
        (12, 3, 0.0352),  # 2 * 576 / 32768 = 0.03516
        (59, 41, 0.0886),  # the textbook's 100 discordant pairs: 0.0886 (normal approximation 0.072)
    ],
)
def test_mcnemar_exact_on_known_tables(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, abs=5e-5)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_mcnemar_counts_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


@pytest.mark.parametrize(("b", "c"), [(5, 0), (10, 2), (4, 4), (7, 2), (1, 0)])
def test_the_sign_flip_test_on_pass_fail_outcomes_is_mcnemar(b: int, c: int) -> None:
    differences = [-1.0] * b + [1.0] * c + [0.0] * 30  # ties (both passed or both failed) do not matter
    p_value, exact = sign_flip_test(differences)
    assert exact and p_value == pytest.approx(mcnemar_exact(b, c), abs=1e-12)


def test_the_sign_flip_test_on_pass_rates() -> None:
    assert sign_flip_test([0.0, 0.0]) == (1.0, True)
    # all five differences positive: only the all-positive and all-negative patterns are as extreme
    assert sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5]) == (pytest.approx(2 / 32), True)
    # balanced differences: nothing to see
    assert sign_flip_test([0.3, -0.3, 0.2, -0.2])[0] == 1.0


def test_the_sign_flip_test_draws_patterns_for_many_problems() -> None:
    shifted = [0.2 + 0.1 * (i % 3) for i in range(40)] + [-0.1] * 10
    p_value, exact = sign_flip_test(shifted)
    assert not exact and 0 < p_value < 0.001
    noise = [(-1) ** i * (0.1 + 0.01 * i) for i in range(60)]
    p_noise, _ = sign_flip_test(noise)
    assert p_noise > 0.5
    assert sign_flip_test(noise) == sign_flip_test(noise), "seeded"
