"""Comparing two runs: the flips each way, the paired test, the text of `evalkit compare`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import evalkit
from evalkit import Comparison, ProblemChange, SampleResult, UserInputError, compare_results, compare_runs, format_comparison
from evalkit._stats import mcnemar_exact

from ..conftest import bwrap_missing_reason
from ._runs import BROKEN_IN_A, BROKEN_IN_B, PROBLEMS, write_config

EVALKIT = [sys.executable, "-m", "evalkit"]


def outcomes(make_result, table: dict[str, str]) -> list[SampleResult]:
    """Results from ``{"T/0": "PPF", ...}``: one sample per letter, P passed, F failed, I infra_error."""
    status = {"P": "passed", "F": "failed", "I": "infra_error", "T": "timeout"}
    return [make_result(task, i, status[letter]) for task, letters in table.items() for i, letter in enumerate(letters)]


def test_pass_fail_runs_use_mcnemar_and_find_the_flips(make_result) -> None:
    a = outcomes(make_result, {"T/1": "P", "T/2": "P", "T/3": "F", "T/4": "P", "T/5": "F", "T/10": "P"})
    b = outcomes(make_result, {"T/1": "F", "T/2": "P", "T/3": "P", "T/4": "T", "T/5": "F", "T/10": "F"})
    c = compare_results(a, b, label_a="A", label_b="B")
    assert c.problems == 6 and c.only_a == [] and c.only_b == []
    assert [ch.task_id for ch in c.regressed] == ["T/1", "T/4", "T/10"]  # equal drops: in task order
    assert c.improved == [ProblemChange(task_id="T/3", rate_a=0.0, rate_b=1.0, n_a=1, n_b=1)]
    assert c.metrics == {"pass@1": (pytest.approx(4 / 6), pytest.approx(2 / 6))}
    assert c.delta == pytest.approx(-2 / 6)
    assert c.delta_ci[0] <= c.delta <= c.delta_ci[1]
    assert c.test.startswith("exact McNemar") and "4 discordant" in c.test
    assert c.p_value == mcnemar_exact(3, 1) == 0.625
    assert not c.significant and not c.significant_regression


def test_a_large_consistent_drop_is_a_significant_regression(make_result) -> None:
    a = outcomes(make_result, {f"T/{i}": "P" for i in range(40)})
    b = outcomes(make_result, {f"T/{i}": "F" if i < 12 else "P" for i in range(40)})
    c = compare_results(a, b, label_a="A", label_b="B")
    assert c.p_value == mcnemar_exact(12, 0) < 0.001
    assert c.significant and c.significant_regression
    assert c.delta_ci[1] < 0
    assert len(c.regressed) == 12 and c.improved == []
    reverse = compare_results(b, a, label_a="B", label_b="A")
    assert reverse.significant and not reverse.significant_regression and reverse.delta > 0


def test_infra_errors_are_left_out_and_unshared_problems_listed(make_result) -> None:
    a = outcomes(make_result, {"T/1": "P", "T/2": "I", "T/3": "IP", "T/4": "F"})
    b = outcomes(make_result, {"T/1": "P", "T/2": "F", "T/3": "F", "T/5": "P"})
    c = compare_results(a, b, label_a="A", label_b="B")
    # T/2 has no scored sample in A: not compared; T/3 has one (the infra_error is left out)
    assert c.problems == 2 and c.only_a == ["T/4"] and c.only_b == ["T/2", "T/5"]
    assert [ch.task_id for ch in c.regressed] == ["T/3"] and c.regressed[0].n_a == 1


def test_several_samples_per_problem_use_the_sign_flip_test_and_pass_at_k(make_result) -> None:
    a = outcomes(make_result, {"T/1": "PPPP", "T/2": "PPFF", "T/3": "FFFF", "T/4": "PFFF"})
    b = outcomes(make_result, {"T/1": "PPPF", "T/2": "PPFF", "T/3": "PFFF", "T/4": "FFFF"})
    c = compare_results(a, b, label_a="A", label_b="B", ks=[1, 2, 10])
    assert list(c.metrics) == ["pass@1", "pass@2"]  # pass@10 needs 10 samples of every problem
    assert c.metrics["pass@2"][0] == pytest.approx((1 + 5 / 6 + 0 + 0.5) / 4)
    assert c.test.startswith("paired sign-flip permutation test") and "exact" in c.test
    # differences -0.25, +0.25, -0.25 (T/2 is unchanged): 8 sign patterns, all at least as extreme
    assert c.p_value == 1.0
    assert [(ch.task_id, ch.rate_a, ch.rate_b) for ch in c.regressed] == [("T/1", 1.0, 0.75), ("T/4", 0.25, 0.0)]
    assert [ch.task_id for ch in c.improved] == ["T/3"]


def test_runs_with_no_problem_in_common_cannot_be_compared(make_result) -> None:
    a = outcomes(make_result, {"T/1": "P"})
    b = outcomes(make_result, {"T/2": "P", "T/1": "I"})
    with pytest.raises(UserInputError, match="no problem was scored in both A and B"):
        compare_results(a, b, label_a="A", label_b="B")


def test_a_comparison_survives_json(make_result) -> None:
    a = outcomes(make_result, {"T/1": "PF", "T/2": "FF"})
    b = outcomes(make_result, {"T/1": "PP", "T/2": "FF", "T/3": "PP"})
    c = compare_results(a, b, label_a="A", label_b="B")
    assert Comparison.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_format_comparison_names_the_verdict_and_each_flip(make_result) -> None:
    a = outcomes(make_result, {f"T/{i}": "P" for i in range(30)} | {"T/30": "F"})
    b = outcomes(make_result, {f"T/{i}": "F" if i < 8 else "P" for i in range(30)} | {"T/30": "P"})
    text = format_comparison(compare_results(a, b, label_a="nightly-1 (runs/a)", label_b="nightly-2 (runs/b)"))
    lines = text.splitlines()
    assert lines[0] == "A (baseline): nightly-1 (runs/a)" and lines[1] == "B:            nightly-2 (runs/b)"
    assert "31 problems scored in both" in text
    assert "pass@1: A 0.9677 -> B 0.7419 (-0.2258)" in text
    headline = next(line for line in lines if line.startswith("delta pass@1"))
    assert "95% CI" in headline and "p = 0.03906" in headline and "significant regression (p < 0.05)" in headline
    assert "regressed (8):" in lines and "improved (1):" in lines
    assert "  - T/0: passed -> failed" in lines and "  + T/30: failed -> passed" in lines
    assert sum(line.startswith("  - ") for line in lines) == 8


# Two real runs (bubblewrap sandboxes, a local Ray) whose flips are known: see _runs.py.


@pytest.fixture(scope="module")
def known_runs(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[tuple[Path, Path]]:
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("known-runs")
    a = evalkit.run(write_config(folder, "base", BROKEN_IN_A), progress=False)
    b = evalkit.run(write_config(folder, "next", BROKEN_IN_B), progress=False)
    assert a.exit_code == b.exit_code == 0, (a.summary["counts"], b.summary["counts"])
    yield a.run_dir, b.run_dir


@pytest.mark.ray
@pytest.mark.sandbox
def test_comparing_two_known_runs_finds_exactly_the_known_flips(known_runs: tuple[Path, Path]) -> None:
    run_a, run_b = known_runs
    c = compare_runs(run_a, run_b)
    assert c.problems == PROBLEMS
    assert {ch.task_id for ch in c.regressed} == BROKEN_IN_B
    assert {ch.task_id for ch in c.improved} == BROKEN_IN_A
    assert c.metrics["pass@1"] == (pytest.approx(7 / 8), pytest.approx(5 / 8))
    assert c.p_value == mcnemar_exact(3, 1) and not c.significant
    assert c.a == f"base ({run_a})" and c.b == f"next ({run_b})"


@pytest.mark.ray
@pytest.mark.sandbox
def test_evalkit_compare_prints_the_comparison(known_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run_a, run_b = known_runs
    proc = subprocess.run([*EVALKIT, "compare", str(run_a), str(run_b), "--alpha", "0.7"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == format_comparison(compare_runs(run_a, run_b, alpha=0.7)) + "\n"
    assert "significant regression (p < 0.7)" in proc.stdout
    for task in BROKEN_IN_B:
        assert f"  - {task}: passed -> failed" in proc.stdout
    assert "  + HumanEval/7: failed -> passed" in proc.stdout


@pytest.mark.ray
@pytest.mark.sandbox
def test_evalkit_compare_writes_the_comparison_page(known_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run_a, run_b = known_runs
    page = tmp_path / "comparison.html"
    proc = subprocess.run([*EVALKIT, "compare", str(run_a), str(run_b), "--html", str(page)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text(encoding="utf-8")
    for task in (*BROKEN_IN_B, *BROKEN_IN_A):
        assert task in html


def test_evalkit_compare_of_a_folder_that_is_not_a_run_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([*EVALKIT, "compare", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not an evalkit run folder" in proc.stderr and "Traceback" not in proc.stderr
