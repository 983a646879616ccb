"""pass@k against brute force, and `score()`'s summary figures."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations, permutations

import pytest

from evalkit import STATUSES, pass_at_k, score
from evalkit._scoring import mean_pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that hold a correct one."""
    correct = [i < c for i in range(n)]
    subsets = list(combinations(range(n), k))
    hits = sum(any(correct[i] for i in subset) for subset in subsets)
    return hits / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = pass_at_k(n, c, k)
            want = brute_force_pass_at_k(n, c, k)
            assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (n, c, k, got, want)


@pytest.mark.parametrize(("n", "c", "k"), [(200, 1, 100), (200, 13, 10), (1000, 3, 1), (1000, 999, 1000), (100, 0, 50)])
def test_pass_at_k_large_n_matches_exact_formula(n: int, c: int, k: int) -> None:
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert math.isclose(pass_at_k(n, c, k), float(exact), rel_tol=1e-9, abs_tol=1e-12)


def test_pass_at_k_simple_values() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)
    assert math.isclose(pass_at_k(4, 1, 2), 0.5)


def test_the_mean_over_problems_does_not_depend_on_their_order(make_result) -> None:
    pairs = [(10, 1), (10, 2), (10, 3), (7, 3), (3, 1)]
    orders = list(permutations(pairs))
    # a plain left-to-right sum gives two different floats over these orders
    assert len({sum(pass_at_k(n, c, 1) for n, c in order) / len(order) for order in orders}) > 1
    assert len({mean_pass_at_k(order, 1) for order in orders}) == 1
    results = [make_result(f"T/{i}", j, "passed" if j < c else "failed") for i, (n, c) in enumerate(pairs) for j in range(n)]
    assert score(results, [1])["metrics"]["pass@1"] == score(results[::-1], [1])["metrics"]["pass@1"] == mean_pass_at_k(pairs, 1)


def test_the_mean_of_no_problem_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        mean_pass_at_k([], 1)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(3, 1, 4), (1, 0, 2), (3, 4, 1), (2, 3, 2), (3, 1, 0), (3, 1, -1), (3, -1, 1), (0, 0, 1)],
)
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match=rf"n={n}, c={c}, k={k}"):
        pass_at_k(n, c, k)


def test_infra_errors_are_left_out_of_n_and_c_and_counted_apart(make_result) -> None:
    results = [
        make_result("T/0", 0, "passed"),
        make_result("T/0", 1, "failed"),
        make_result("T/0", 2, "infra_error", error="sandbox vanished"),
        make_result("T/0", 3, "infra_error", error="sandbox vanished"),
    ]
    summary = score(results, [1, 2])
    assert summary["problems"] == {"T/0": {"n": 2, "c": 1, "infra_error": 2}}
    assert summary["counts"]["infra_error"] == 2
    assert summary["num_samples"] == 4
    # with the infra errors counted as failures pass@1 would be 0.25
    assert math.isclose(summary["metrics"]["pass@1"], 0.5)
    assert math.isclose(summary["metrics"]["pass@2"], 1.0)
    assert summary["skipped_k"] == {}


def test_timeout_and_oom_count_as_scored_failures(make_result) -> None:
    results = [make_result("T/0", 0, "passed"), make_result("T/0", 1, "timeout"), make_result("T/0", 2, "oom")]
    summary = score(results, [1])
    assert summary["problems"]["T/0"] == {"n": 3, "c": 1, "infra_error": 0}
    assert math.isclose(summary["metrics"]["pass@1"], 1 / 3)


def test_k_larger_than_some_problems_n_is_skipped_with_reason(make_result) -> None:
    results = [make_result("T/0", i, "passed") for i in range(3)] + [make_result("T/1", 0, "failed")]
    summary = score(results, [2, 1])
    assert list(summary["metrics"]) == ["pass@1"]
    assert math.isclose(summary["metrics"]["pass@1"], 0.5)
    assert list(summary["skipped_k"]) == ["pass@2"]
    reason = summary["skipped_k"]["pass@2"]
    assert "n >= 2" in reason and "smallest n is 1" in reason


def test_pass_at_k_is_the_mean_over_problems(make_result) -> None:
    results = [
        # T/0: n=2, c=2 -> pass@1 = 1, pass@2 = 1
        make_result("T/0", 0, "passed"),
        make_result("T/0", 1, "passed"),
        # T/1: n=2, c=0 -> 0, 0
        make_result("T/1", 0, "failed"),
        make_result("T/1", 1, "timeout"),
        # T/2: n=4, c=1 -> pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2
        make_result("T/2", 0, "failed"),
        make_result("T/2", 1, "passed"),
        make_result("T/2", 2, "failed"),
        make_result("T/2", 3, "oom"),
    ]
    summary = score(results, [1, 2])
    assert math.isclose(summary["metrics"]["pass@1"], (1 + 0 + 0.25) / 3)
    assert math.isclose(summary["metrics"]["pass@2"], (1 + 0 + 0.5) / 3)
    assert summary["num_problems"] == 3
    assert summary["num_scored_problems"] == 3


def test_counts_list_every_status_in_order_with_zeros(make_result) -> None:
    results = [make_result("T/0", 0, "passed"), make_result("T/0", 1, "passed"), make_result("T/1", 0, "timeout")]
    counts = score(results, [1])["counts"]
    assert list(counts) == list(STATUSES)
    assert counts == {"passed": 2, "failed": 0, "timeout": 1, "oom": 0, "infra_error": 0}


def test_problem_with_only_infra_errors_is_unscored(make_result) -> None:
    results = [
        make_result("T/0", 0, "passed"),
        make_result("T/0", 1, "passed"),
        make_result("T/1", 0, "infra_error"),
        make_result("T/1", 1, "infra_error"),
    ]
    summary = score(results, [1, 2])
    assert summary["unscored_problems"] == ["T/1"]
    assert summary["num_problems"] == 2
    assert summary["num_scored_problems"] == 1
    assert summary["problems"]["T/1"] == {"n": 0, "c": 0, "infra_error": 2}
    # the unscored problem neither drags the mean down nor makes pass@2 impossible
    assert summary["metrics"] == {"pass@1": 1.0, "pass@2": 1.0}
    assert summary["skipped_k"] == {}


def test_nothing_scored_skips_every_k(make_result) -> None:
    summary = score([make_result("T/0", 0, "infra_error")], [1, 10])
    assert summary["metrics"] == {}
    assert set(summary["skipped_k"]) == {"pass@1", "pass@10"}
    assert all("no problem has a scored sample" in why for why in summary["skipped_k"].values())
    assert summary["counts"]["infra_error"] == 1


def test_empty_results() -> None:
    summary = score([], [1])
    assert summary["metrics"] == {}
    assert summary["num_samples"] == 0
    assert summary["num_problems"] == 0
    assert summary["counts"] == dict.fromkeys(STATUSES, 0)
