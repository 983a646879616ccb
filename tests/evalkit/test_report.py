"""The HTML report: rendered from a summary, results and problems (pure), and re-rendered from a
real run folder byte for byte."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import evalkit
from evalkit import Problem, SampleResult, _report, score
from evalkit._compare import Comparison, ProblemChange
from evalkit._report import FAILING_SHOWN, render_comparison, render_report

from ._report_pages import Links, Rows, assert_self_contained, mixed_run_config, text_of


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


def summary_of(results: list[SampleResult], ks: tuple[int, ...] = (1,), **extra: Any) -> dict[str, Any]:
    summary = score(results, ks)
    summary["run"] = run_info()
    summary.update(extra)
    return summary


def render(results: list[SampleResult], ks: tuple[int, ...] = (1,), problems: list[Problem] | None = None, **extra: Any) -> str:
    return render_report(summary_of(results, ks, **extra), results, problems or [])


def problem(task_id: str, prompt: str = "def f(x):\n    \"\"\"Return x.\"\"\"\n", test: str = "def check(candidate):\n    assert candidate(1) == 1\n") -> Problem:
    return Problem(task_id=task_id, prompt=prompt, entry_point="f", test=test)


@pytest.fixture
def mixed(make_result) -> list[SampleResult]:
    return [
        make_result("HumanEval/0", 0, "passed"),
        make_result("HumanEval/0", 1, "passed"),
        make_result("HumanEval/1", 0, "failed", completion="    return [x for x in y if x < 3 and y > 2]\n",
                    error="AssertionError: check failed", stderr="Traceback (most recent call last): boom"),
        make_result("HumanEval/1", 1, "passed"),
        make_result("HumanEval/2", 0, "timeout", error="timed out after 10 s", stdout="still looping", duration_s=10.0),
        make_result("HumanEval/2", 1, "oom", error="exceeded 512 MB", duration_s=0.5),
    ]  # fmt: skip


# -- header and figures -------------------------------------------------------------------------


def test_metrics_are_shown(mixed: list[SampleResult]) -> None:
    text = text_of(render(mixed, (1, 2)))
    # pass@1 = (1 + 0.5 + 0) / 3; pass@2 = (1 + 1 + 0) / 3
    assert "pass@1 = 0.5000" in text
    assert "pass@2 = 0.6667" in text
    assert "CI" not in text


def test_confidence_intervals_are_shown_when_the_summary_has_them(mixed: list[SampleResult]) -> None:
    text = text_of(render(mixed, (1, 2), metrics_ci={"pass@1": [0.1667, 0.8333]}))
    assert "pass@1 = 0.5000 95% CI 0.1667 – 0.8333" in text
    assert "pass@2 = 0.6667 pass" not in text and "pass@2 = 0.6667 95%" not in text  # no interval given for it


def test_skipped_k_is_explained(mixed: list[SampleResult]) -> None:
    text = text_of(render(mixed, (1, 5)))
    assert "pass@5 not reported" in text
    assert "smallest n is 2" in text


def test_run_metadata_is_shown(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    assert "<title>evalkit · unit-run</title>" in page
    text = text_of(page)
    for fragment in (
        "humaneval: 3 problems (3 scored)", "model samples", "sandbox bwrap (namespaces)", "6 samples",
        "started 2026-11-27 10:15:00 UTC", "finished 2026-11-27 10:16:40 UTC", "100.0 s wall",
        "11.5 s in sandboxes", "evalkit 0.1.0 · Python 3.11.7 · on testhost",
    ):  # fmt: skip
        assert fragment in text, fragment


def test_model_parameters_are_shown_when_given(mixed: list[SampleResult]) -> None:
    summary = summary_of(mixed)
    summary["run"]["model_params"] = {"name": "gpt-x", "temperature": 0.8, "max_tokens": 512}
    text = text_of(render_report(summary, mixed))
    assert "model samples: name gpt-x · temperature 0.8 · max_tokens 512" in text


def test_long_durations_read_as_minutes_and_hours(make_result) -> None:
    results = [make_result("HumanEval/0", 0, duration_s=30.0)]
    summary = summary_of(results)
    summary["run"]["duration_s"] = 3 * 3600 + 25 * 60 + 9
    text = text_of(render_report(summary, results))
    assert "3 h 25 min wall · 30.0 s in sandboxes" in text
    summary["run"]["duration_s"] = 754.4
    assert "12 min 34 s wall" in text_of(render_report(summary, results))


def test_counts_per_status_keep_infra_errors_apart(make_result) -> None:
    results = [
        make_result("HumanEval/0", 0), make_result("HumanEval/0", 1, "failed"), make_result("HumanEval/1", 0, "timeout"),
        make_result("HumanEval/1", 1, "infra_error", error="sandbox vanished"),
    ]  # fmt: skip
    page = render(results)
    verdicts = re.search(r'<table class="verdicts">(.*?)</table>', page, re.S)
    assert verdicts, page
    # shares are of the samples with a verdict: the infra error is in neither the counts nor the shares
    assert text_of(verdicts.group(1)) == "model verdict samples share passed 1 33.3% failed 1 33.3% timeout 1 33.3% oom 0 0.0%"
    box = re.search(r'<div class="infra-box infra">(.*?)</div>', page, re.S)
    assert box, page
    assert text_of(box.group(1)).startswith("infra_error 1 1 sample(s) could not be evaluated because the infrastructure failed")
    assert "not model failures" in text_of(box.group(1))


def test_no_infra_errors_says_so_quietly(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    assert "infrastructure failed" not in page
    assert '<div class="infra-box">' in page
    assert "infra_error 0: every sample got a verdict" in text_of(page)


def test_an_incomplete_run_says_so_above_its_figures(make_result: Any) -> None:
    results = [make_result("HumanEval/0", 0, status="passed")]
    summary = score(results, [1])
    summary["run"] = run_info(state="interrupted", complete=False, planned_samples=5)
    page = render_report(summary, results)
    assert "Incomplete run (interrupted): 1 of\n5 planned samples" in page
    assert page.index("Incomplete run") < page.index("pass@1 = ")
    assert "1 of 5 planned" in text_of(page)


def test_nothing_scored(make_result) -> None:
    page = render([make_result("HumanEval/0", 0, "infra_error", error="vm died")])
    text = text_of(page)
    assert "no pass@k could be computed" in text
    assert "no problem has a scored sample" in text
    row = Rows(page).rows["HumanEval/0"]
    assert row["main"] == "HumanEval/0 0 0 – 1 – vm died"
    assert row["data-flags"] == "infra_error unscored"
    assert 'class="chart-durations"' not in page  # no sample has a duration worth drawing


def test_the_model_api_section_appears_only_for_model_runs(mixed: list[SampleResult]) -> None:
    assert "Model API" not in render(mixed)
    generation = {"completions": 6, "from_api": 4, "from_cache": 2, "truncated": 1, "input_tokens": 600, "output_tokens": 300,
                  "failed_samples": 0, "api": {"requests": 4, "retries": 2}}  # fmt: skip
    text = text_of(render(mixed, generation=generation))
    assert "Model API 6 completions: 4 from the API, 2 from the completion cache · 1 cut off by max_tokens · tokens in 600, out 300 · retries 2." in text


# -- the problem table ----------------------------------------------------------------------------


def test_every_problem_has_a_row_in_task_order(make_result) -> None:
    results = [make_result(f"HumanEval/{i}", 0, "passed" if i % 2 else "failed") for i in (10, 2, 1)]
    problems = [problem(f"HumanEval/{i}") for i in (1, 2, 10, 11)]  # HumanEval/11 has no result yet
    rows = Rows(render(results, problems=problems)).rows
    assert list(rows) == ["HumanEval/1", "HumanEval/2", "HumanEval/10", "HumanEval/11"]
    assert [rows[t]["id"] for t in rows] == ["p0", "p1", "p2", "p3"]
    assert rows["HumanEval/11"]["main"] == "HumanEval/11 0 0 – –"  # no rate, no duration
    assert "no sample has a result yet" in rows["HumanEval/11"]["detail"]


def test_rows_carry_their_figures(mixed: list[SampleResult]) -> None:
    rows = Rows(render(mixed)).rows
    assert rows["HumanEval/0"]["main"] == "HumanEval/0 2 2 1.00 0.25 s"
    assert rows["HumanEval/1"]["main"] == "HumanEval/1 2 1 0.50 1 0.25 s AssertionError: check failed"
    assert rows["HumanEval/2"]["main"] == "HumanEval/2 2 0 0.00 1 1 10.00 s timed out after 10 s"
    two = rows["HumanEval/2"]
    assert (two["data-n"], two["data-c"], two["data-rate"], two["data-timeout"], two["data-oom"], two["data-dur"]) == (
        "2", "0", "0.000000", "1", "1", "10.000000",
    )  # fmt: skip
    assert two["data-flags"] == "timeout oom failing none-passed"
    assert rows["HumanEval/0"]["data-flags"] == "passed all-passed"
    assert "timed out after 10 s" in two["data-search"] and two["data-search"].startswith("humaneval/2 ")


def test_a_row_opens_on_why_its_first_failing_sample_failed(make_result) -> None:
    results = [
        make_result("HumanEval/1", 0, "passed", completion="    return 'good'\n"),
        make_result("HumanEval/1", 1, "failed", completion="    return [x for x in y if x < 3]\n", error="AssertionError: check failed",
                    stderr="Traceback (most recent call last):\n  File \"t.py\", line 9\nAssertionError: check failed\n",
                    stdout="debug print", exit_code=1, attempts=2),
    ]  # fmt: skip
    detail = Rows(render(results)).rows["HumanEval/1"]["detail"]
    samples = re.findall(r"<details class=\"sample\"( open)?>(.*?)</details>", detail, re.S)
    assert [bool(is_open) for is_open, _ in samples] == [True, False]  # failing first and open, the passing one closed
    failing = text_of(samples[0][1])
    assert failing.startswith("#1 failed · 0.250 s · exit 1 · 2 attempts · AssertionError: check failed error AssertionError: check failed stderr Traceback")
    for fragment in ('File "t.py", line 9', "stdout debug print", "completion return [x for x in y if x < 3]", "2 attempt(s)", "driver bwrap (namespaces)"):
        assert fragment in failing, fragment
    assert text_of(samples[1][1]).startswith("#0 passed · 0.250 s completion return 'good'")


def test_prompt_test_and_raw_reply_are_shown(make_result) -> None:
    results = [
        make_result("HumanEval/0", 0, "failed", prompt="<chat>Complete f</chat>", response="Sure!\n```python\n    return 2\n```",
                    completion="    return 2\n", error="AssertionError"),
    ]  # fmt: skip
    problems = [problem("HumanEval/0", prompt="def f(x):\n    '''Return x.'''\n", test="def check(candidate):\n    assert candidate(1) == 1\n")]
    detail = Rows(render(results, problems=problems)).rows["HumanEval/0"]["detail"]
    text = text_of(detail)
    assert "entry point f" in text
    assert "model reply (raw, before code extraction) Sure! ```python return 2 ```" in text
    assert "prompt def f(x): '''Return x.'''" in text
    assert "test def check(candidate): assert candidate(1) == 1" in text
    assert "prompt sent to the model <chat>Complete f</chat>" in text


def test_without_problems_the_rows_show_samples_only(mixed: list[SampleResult]) -> None:
    detail = Rows(render(mixed)).rows["HumanEval/1"]["detail"]
    assert "<h4>prompt</h4>" not in detail and "<h4>test</h4>" not in detail
    assert "entry point" not in detail


def test_each_row_shows_a_bounded_choice_of_samples(make_result, monkeypatch: pytest.MonkeyPatch) -> None:
    """13 failing samples with three kinds of failure (with a cap of 5): the three kinds come
    first, then repeats up to the cap; one passing sample; the rest counted and pointed to
    samples.parquet."""
    monkeypatch.setattr(_report, "FAILING_SHOWN", 5)
    errors = ["AssertionError", "ValueError: boom", "AssertionError", "AssertionError", "AssertionError", "AssertionError",
              "AssertionError", "AssertionError", "AssertionError", "AssertionError", "AssertionError", "AssertionError"]  # fmt: skip
    results = [make_result("HumanEval/0", i, "failed", error=e) for i, e in enumerate(errors)]
    results.insert(5, make_result("HumanEval/0", 11, "timeout", error="timed out after 10 s"))
    results[-1] = make_result("HumanEval/0", 12, "failed", error="AssertionError")
    results += [make_result("HumanEval/0", i, "passed") for i in (13, 14)]
    detail = Rows(render(results)).rows["HumanEval/0"]["detail"]
    shown = re.findall(r"<summary>#(\d+) <span class=\"status (\w+)\">", detail)
    # distinct failures first (#0 AssertionError, #1 ValueError, #11 timeout), then #2 and #3; then one passing sample
    assert shown == [("0", "failed"), ("1", "failed"), ("2", "failed"), ("3", "failed"), ("11", "timeout"), ("13", "passed")]
    assert "5 of the 13 samples that did not pass are shown; samples.parquet has all" in text_of(detail)


def test_long_texts_are_cut_where_they_matter_least(make_result) -> None:
    stderr = "noise line\n" * 2000 + "Traceback (most recent call last):\nValueError: the real reason\n"
    results = [make_result("HumanEval/0", 0, "failed", stderr=stderr, stdout="o" * 9000, completion="c" * 7000)]
    detail = text_of(Rows(render(results)).rows["HumanEval/0"]["detail"])
    assert "ValueError: the real reason" in detail  # stderr keeps its end
    assert f"stderr … the first {len(stderr) - 3000} characters are left out here; samples.parquet has them all" in detail
    assert "… 8000 more characters in samples.parquet" in detail  # stdout keeps 1000 of 9000
    assert "… 3000 more characters in samples.parquet" in detail  # completion keeps 4000 of 7000


def test_markup_in_results_is_escaped(make_result) -> None:
    evil = "</pre><script>alert('pwned')</script><b onmouseover=x>"
    results = [
        make_result("HumanEval/0", 0, "failed", completion="    return '" + evil + "'\n", error=evil, stdout=evil, stderr=evil, response=evil),
        make_result("HumanEval/<i>1</i>", 0, "failed", error="x"),
        make_result('HumanEval/"2', 0, "failed", error="y"),
    ]
    page = render(results, problems=[problem("HumanEval/0", prompt=evil, test=evil)])
    assert "<script>alert" not in page
    assert "<b onmouseover" not in page
    assert "<i>1</i>" not in page
    assert "&lt;script&gt;alert(" in page
    assert "HumanEval/&lt;i&gt;1&lt;/i&gt;" in page
    assert 'data-task="HumanEval/&#34;2"' in page  # attribute values escape quotes too
    assert evil in text_of(page)
    assert set(Rows(page).rows) == {"HumanEval/0", "HumanEval/<i>1</i>", 'HumanEval/"2'}


def test_long_runs_make_a_bounded_page(make_result) -> None:
    """n=200 on 164 problems, every sample failing loudly: the page stays a few MB, as each row
    shows FAILING_SHOWN samples and cuts their texts (a real 10-sample run's report is ~0.9 MB)."""
    trace = "Traceback (most recent call last):\n" + '  File "x.py", line 3, in f\n' * 300 + "AssertionError\n"
    results = [
        make_result(f"HumanEval/{t}", i, "failed", error=f"AssertionError {i % 7}", stderr=trace, stdout="x" * 5000, completion="    pass\n" * 300)
        for t in range(164)
        for i in range(200)
    ]  # fmt: skip
    page = render(results)
    assert len(Rows(page).rows) == 164
    assert page.count('<details class="sample"') == 164 * FAILING_SHOWN
    assert len(page.encode()) < 4 * 2**20, len(page)
    assert f"{FAILING_SHOWN} of the 200 samples that did not pass are shown" in page


# -- charts -----------------------------------------------------------------------------------------


def test_charts_show_statuses_durations_and_pass_rates(mixed: list[SampleResult]) -> None:
    page = render(mixed)
    for name, title in (("statuses", "Samples per status"), ("durations", "Distribution of sample durations by status"),
                        ("pass-rates", "Pass rate of each problem")):  # fmt: skip
        chart = re.search(rf'<svg class="chart-{name}" role="img"[^>]*>\s*<title>{title}</title>', page)
        assert chart, name
    # each bar of the pass-rate chart opens its problem's row
    bars = re.search(r'<svg class="chart-pass-rates".*?</svg>', page, re.S)
    assert bars and re.findall(r'<a href="(#p\d)">', bars.group(0)) == ["#p0", "#p1", "#p2"]
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids repeat across the page"


# -- purity and self-containment -----------------------------------------------------------------


def test_rendering_is_pure(mixed: list[SampleResult]) -> None:
    summary = summary_of(mixed)
    problems = [problem("HumanEval/0"), problem("HumanEval/1")]
    assert render_report(summary, mixed, problems) == render_report(summary, list(reversed(mixed)), problems)


def test_rendering_gives_the_same_bytes_in_another_process(tmp_path: Path, mixed: list[SampleResult]) -> None:
    """No set order, hash seed, time or random id reaches the page: two fresh interpreters with
    different hash seeds write the same bytes."""
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"summary": summary_of(mixed), "results": [r.model_dump() for r in mixed]}))
    script = (
        "import json, sys\n"
        "from evalkit import SampleResult\n"
        "from evalkit._report import render_report\n"
        "data = json.load(open(sys.argv[1]))\n"
        "sys.stdout.buffer.write(render_report(data['summary'], [SampleResult(**r) for r in data['results']]).encode())\n"
    )
    pages = [
        subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    ]
    assert pages[0] == pages[1]
    assert pages[0].decode() == render_report(summary_of(mixed), mixed)


def test_the_page_is_self_contained_and_only_its_own_script_may_run(make_result, mixed: list[SampleResult]) -> None:
    results = mixed + [make_result("HumanEval/3", 0, "failed", error="see https://example.com/x.js", stdout='<img src="https://example.com/a.png">')]
    links = assert_self_contained(render(results))
    assert len(links.scripts) == 1
    digest = base64.b64encode(hashlib.sha256(links.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in links.csp[0]


# -- comparison --------------------------------------------------------------------------------------


def comparison(**overrides: Any) -> Comparison:
    values: dict[str, Any] = {
        "a": "baseline (runs/base-20261126-020000)",
        "b": "unit-run (runs/unit-run-20261127-101500)",
        "problems": 3,
        "only_a": ["HumanEval/7"],
        "only_b": [],
        "metrics": {"pass@1": (0.8333, 0.5)},
        "delta": -0.3333,
        "delta_ci": (-0.6667, -0.1667),
        "p_value": 0.0312,
        "test": "paired permutation test",
        "alpha": 0.05,
        "significant": True,
        "regressed": [ProblemChange(task_id="HumanEval/2", rate_a=1.0, rate_b=0.0, n_a=2, n_b=2)],
        "improved": [],
    }
    values.update(overrides)
    return Comparison(**values)


def test_the_comparison_section_gives_the_verdict_and_links_the_flips(mixed: list[SampleResult]) -> None:
    page = render_report(summary_of(mixed), mixed, comparison=comparison())
    section = re.search(r'<section id="comparison">(.*?)</section>', page, re.S)
    assert section
    text = text_of(section.group(1))
    assert text.startswith(
        "Compared with the baseline Significant regression pass@1 0.8333 → 0.5000, Δ −0.3333 (95% CI −0.6667 to −0.1667), "
        "p = 0.031 (paired permutation test, α = 0.05), over the 3 problems both runs scored."
    )
    assert "A (baseline): baseline (runs/base-20261126-020000) B: unit-run (runs/unit-run-20261127-101500)" in text
    assert "Regressed: 1 problem(s) pass less often in B task rate A n A rate B n B change HumanEval/2 1.00 2 0.00 2 −1.00" in text
    assert "Improved: 0 problem(s) pass more often in B No problem improved." in text
    assert "1 problem(s) only A scored (HumanEval/7)" in text
    # the flip links to its row in this report
    link = re.search(r'<a href="#(p\d+)">HumanEval/2</a>', section.group(1))
    assert link and Rows(page).rows["HumanEval/2"]["id"] == link.group(1)


@pytest.mark.parametrize(
    ("significant", "delta", "verdict"),
    [(True, 0.25, "Significant improvement"), (False, -0.05, "No significant difference"), (False, 0.0, "No significant difference")],
)
def test_the_comparison_verdict(mixed: list[SampleResult], significant: bool, delta: float, verdict: str) -> None:
    page = render_report(summary_of(mixed), mixed, comparison=comparison(significant=significant, delta=delta, p_value=0.0004))
    assert f'verdict-{ {"Significant improvement": "improvement"}.get(verdict, "none") }">{verdict}</p>' in page
    assert "p < 0.001" in text_of(page)


def test_no_comparison_no_section(mixed: list[SampleResult]) -> None:
    assert 'id="comparison"' not in render(mixed)


def test_the_comparison_page_stands_alone() -> None:
    change = ProblemChange(task_id="HumanEval/5", rate_a=0.25, rate_b=0.75, n_a=4, n_b=4)
    page = render_comparison(comparison(improved=[change], metrics={"pass@1": (0.8333, 0.5), "pass@2": (0.9, 0.7)}))
    assert page == render_comparison(comparison(improved=[change], metrics={"pass@1": (0.8333, 0.5), "pass@2": (0.9, 0.7)}))
    text = text_of(page)
    assert "<title>evalkit · compare baseline (runs/base-20261126-020000) → unit-run (runs/unit-run-20261127-101500)</title>" in page
    assert "Significant regression" in text
    assert "metric A B B − A pass@1 0.8333 0.5000 −0.3333 pass@2 0.9000 0.7000 −0.2000" in text
    assert "HumanEval/5 0.25 4 0.75 4 +0.50" in text
    assert "<script" not in page and "<a " not in page  # no rows to link to, no script to run
    csp = Links(page).csp
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'; script-src 'none'; base-uri 'none'; form-action 'none'"]


# -- a real run --------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_a_real_run_rerenders_byte_for_byte(tmp_path: Path) -> None:
    outcome = evalkit.run(mixed_run_config(tmp_path), progress=False)
    counts = outcome.summary["counts"]
    assert counts["passed"] and counts["failed"] and counts["timeout"] == 1, counts
    report = outcome.run_dir / "report.html"
    first = report.read_bytes()
    evalkit.report(outcome.run_dir)
    second = report.read_bytes()
    evalkit.report(outcome.run_dir)
    assert report.read_bytes() == second == first
    page = first.decode()
    rows = Rows(page).rows
    assert list(rows) == ["HumanEval/0", "HumanEval/2", "HumanEval/53"]
    # what the run stored is what the rows show: the problems' prompts and tests, the loop's timeout
    stored = {p.task_id: p for p in evalkit.RunStore.open(outcome.run_dir).problems() or []}
    assert html.escape(stored["HumanEval/53"].test, quote=False) in rows["HumanEval/53"]["detail"]
    assert "timeout" in rows["HumanEval/0"]["data-flags"].split()
    assert_self_contained(page)
