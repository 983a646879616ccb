"""The HTML report, rendered from a summary and the results."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from evalkit import SampleResult, score
from evalkit._report import render_report


def run_info(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": "unit-run",
        "benchmark": "humaneval",
        "model": "samples",
        "driver": "bwrap",
        "isolation": "namespaces",
        "started": "2026-11-27T10:15:00+00:00",
        "finished": "2026-11-27T10:16:40+00:00",
        "state": "finished",
        "planned_samples": 0,
        "complete": True,
        "duration_s": 100.0,
        "evalkit_version": "0.1.0",
        "host": "testhost",
        "python": "3.11.7",
        "run_format_version": 1,
    }
    info.update(overrides)
    return info


def render(results: list[SampleResult], ks: tuple[int, ...] = (1,)) -> str:
    summary = score(results, ks)
    summary["run"] = run_info()
    return render_report(summary, results)


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


@pytest.fixture
def mixed(make_result) -> list[SampleResult]:
    return [
        make_result("HumanEval/0", 0, "passed"),
        make_result("HumanEval/0", 1, "passed"),
        make_result("HumanEval/1", 0, "failed", completion="    return [x for x in y if x < 3 and y > 2]\n",
                    error="AssertionError: check failed", stderr="Traceback (most recent call last): boom"),
        make_result("HumanEval/1", 1, "passed"),
        make_result("HumanEval/2", 0, "timeout", error="timed out after 10 s", stdout="still looping"),
        make_result("HumanEval/2", 1, "oom", error="exceeded 512 MB"),
    ]  # fmt: skip


def test_metrics_are_shown(mixed: list[SampleResult]) -> None:
    page = render(mixed, (1, 2))
    # pass@1 = (1 + 0.5 + 0) / 3; pass@2 = (1 + 1 + 0) / 3
    assert "pass@1 = 0.5000" in text_of(page)
    assert "pass@2 = 0.6667" in text_of(page)


def test_skipped_k_is_explained(mixed: list[SampleResult]) -> None:
    text = text_of(render(mixed, (1, 5)))
    assert "pass@5 not reported" in text
    assert "smallest n is 2" in text


def test_run_metadata_is_shown(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    assert "<title>evalkit · unit-run</title>" in page
    text = text_of(page)
    for fragment in ("humaneval", "samples", "bwrap", "namespaces", "3 problems", "6 samples", "100.0 s", "0.1.0"):
        assert fragment in text, fragment


def test_counts_per_status_are_shown(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    header = re.search(r"<h2>Verdicts</h2>\s*<table>(.*?)</table>", page, re.S)
    assert header, page
    table = text_of(header.group(1))
    assert table == "passed failed timeout oom infra_error 3 1 1 1 0"


def test_every_problem_has_a_row(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    problems = re.search(r"<h2>Problems</h2>\s*<table>(.*?)</table>", page, re.S)
    assert problems
    text = text_of(problems.group(1))
    assert "HumanEval/0 2 2 1.00" in text
    assert "HumanEval/1 2 1 0.50" in text
    assert "HumanEval/2 2 0 0.00" in text


def test_failures_are_detailed(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    failures = page.split("<h2>Samples that did not pass</h2>", 1)[1]
    text = text_of(failures)
    assert failures.count("<details>") == 3
    assert "HumanEval/1 #0" in text and "AssertionError: check failed" in text
    assert "Traceback (most recent call last): boom" in text
    assert "return [x for x in y if x < 3 and y > 2]" in text
    assert "HumanEval/2 #0" in text and "timed out after 10 s" in text and "still looping" in text
    assert "HumanEval/2 #1" in text and "exceeded 512 MB" in text
    assert "HumanEval/0 #" not in text  # passed samples are not listed
    assert "Every sample passed" not in text


def test_all_passed_says_so(make_result) -> None:
    text = text_of(render([make_result("HumanEval/0", 0), make_result("HumanEval/1", 0)]))
    assert "Every sample passed" in text
    assert "pass@1 = 1.0000" in text


def test_markup_in_results_is_escaped(make_result) -> None:
    evil = "</pre><script>alert('pwned')</script><b onmouseover=x>"
    results = [
        make_result("HumanEval/0", 0, "failed", completion="    return '" + evil + "'\n", error=evil, stdout=evil, stderr=evil),
        make_result("HumanEval/<i>1</i>", 0, "failed"),
    ]
    page = render(results)
    assert "<script>" not in page
    assert "<b onmouseover" not in page
    assert "<i>1</i>" not in page
    assert "&lt;script&gt;alert(" in page
    assert "HumanEval/&lt;i&gt;1&lt;/i&gt;" in page
    assert evil in text_of(page)


def test_infra_error_warning_only_with_infra_errors(make_result) -> None:
    clean = render([make_result("HumanEval/0", 0), make_result("HumanEval/0", 1, "failed")])
    assert "infrastructure failed" not in clean
    assert 'class="infra"' not in clean

    results = [make_result("HumanEval/0", 0), make_result("HumanEval/1", 0, "infra_error", error="sandbox vanished")]
    page = render(results)
    text = text_of(page)
    assert 'class="infra"' in page
    assert "1 sample(s) could not be evaluated because the infrastructure failed" in text
    # listed among the samples that did not pass, first, with the reason
    failures = text_of(page.split("<h2>Samples that did not pass</h2>", 1)[1])
    assert failures.startswith("HumanEval/1 #0 · infra_error")
    assert "sandbox vanished" in failures


def test_nothing_scored(make_result) -> None:
    text = text_of(render([make_result("HumanEval/0", 0, "infra_error")]))
    assert "no pass@k could be computed" in text
    assert "no problem has a scored sample" in text
    assert "HumanEval/0 0 0 – 1" in text


def test_long_failure_lists_are_cut(make_result) -> None:
    results = [make_result(f"HumanEval/{i}", 0, "failed") for i in range(164)] + [
        make_result(f"HumanEval/{i}", 1, "failed") for i in range(164)
    ]
    page = render(results)
    assert page.count("<details>") == 300
    assert "28 more are in samples.parquet" in text_of(page)


def test_an_incomplete_run_says_so_above_its_figures(make_result: Any) -> None:
    results = [make_result("HumanEval/0", 0, status="passed")]
    summary = score(results, [1])
    summary["run"] = run_info(state="interrupted", complete=False, planned_samples=5)
    html = render_report(summary, results)
    assert "Incomplete run (interrupted): 1 of\n5 planned samples" in html
    assert html.index("Incomplete run") < html.index("pass@1 = ")
