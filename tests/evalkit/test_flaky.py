"""The re-check of failed, timeout and oom samples, and flaky samples, in real sandboxes.

Nothing a program leaves behind survives into the next program of a sandbox (files in /tmp
are removed, SysV IPC is refused), so these programs "flake" on something that does differ
between a run and its re-run: vmpool numbers each program's private scratch folder
(``/tmp/run-N``), and the re-run of a sample is the next program of its sandbox.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

import evalkit
from evalkit import ExecRequest, Sample, SandboxConfig
from evalkit._cli import flaky_lines
from evalkit._executor import SampleExecutor

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes")]

RUN_NUMBER = "int(__import__('os').getcwd().rpartition('-')[2])"


def request(idx: int, program: str) -> ExecRequest:
    return ExecRequest(sample=Sample(task_id="t", sample_idx=idx, completion=""), program=program)


def test_a_timeout_that_does_not_repeat_is_flaky_and_a_failure_that_does_is_not() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=1.5), "bwrap", max_retries=2)
    try:
        probe = executor.run_one(request(0, "import os\nprint(os.getcwd())\n"))
        assert probe.status == "passed" and probe.attempts == 1 and probe.first_status is None
        first = int(probe.stdout.strip().rpartition("-")[2]) + 1  # the next program's number
        # loops (a timeout) when it is that program, passes when it is the one after
        flaky = executor.run_one(request(1, f"if {RUN_NUMBER} == {first}:\n    while True:\n        pass\n"))
        assert (flaky.status, flaky.passed, flaky.flaky, flaky.first_status, flaky.attempts) == ("passed", True, True, "timeout", 2)
        assert flaky.first_error is not None and "time limit" in flaky.first_error and flaky.error is None
        assert (flaky.cpu_limit_s, flaky.wall_limit_s) == (1.5, 1.5)
        always = executor.run_one(request(2, "raise ValueError('always')\n"))
        assert (always.status, always.flaky, always.first_status, always.attempts) == ("failed", False, "failed", 2)
        assert "always" in (always.error or "") and "always" in (always.first_error or "")
        passed = executor.run_one(request(3, "x = 1\n"))
        assert (passed.attempts, passed.first_status) == (1, None), "a pass is never re-run"
    finally:
        executor.close()


def test_with_the_recheck_off_a_failure_runs_once() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5, recheck_failures=False), "bwrap", max_retries=2)
    try:
        once = executor.run_one(request(0, "raise ValueError('once')\n"))
        assert (once.status, once.flaky, once.first_status, once.attempts) == ("failed", False, None, 1)
    finally:
        executor.close()


# --- a whole run ----------------------------------------------------------------------------

ODD_FAILS = "    if {run} % 2:\n        raise AssertionError('an odd run')\n".format(run=RUN_NUMBER)
WRONG = "    return None\n"


def _config(tmp_path: Path, name: str, **sandbox: Any) -> Path:
    problem = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(["HumanEval/0"], None)[0]
    # Three samples that fail in an odd-numbered program and pass in an even one, run one after
    # the other in one sandbox (one worker, one batch): whatever number the first gets, at
    # least two of them fail first and pass when re-run. Then one that always fails.
    completions = [ODD_FAILS + (problem.canonical_solution or "")] * 3 + [WRONG]
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"task_id": problem.task_id, "completion": c}) + "\n" for c in completions))
    config = {
        "name": name,
        "benchmark": {"name": "humaneval", "ids": [problem.task_id]},
        "model": {"provider": "samples", "path": f"{name}.jsonl"},
        "sampling": {"k": [1]},
        "sandbox": {"driver": "bwrap", "timeout_s": 5, **sandbox},
        "scheduler": {"workers": 1, "batch_size": 8},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_flaky_samples_are_counted_and_listed_everywhere(tmp_path: Path) -> None:
    outcome = evalkit.run(_config(tmp_path, "flaky"), progress=False)
    run = evalkit.load_run(outcome.run_dir)
    frame = run.samples.sort_values("sample_idx")
    parity, wrong = frame[frame.sample_idx < 3], frame[frame.sample_idx == 3].iloc[0]
    assert list(parity.status) == ["passed"] * 3, list(parity.error)
    flaky = parity[parity.flaky]
    assert len(flaky) >= 2 and set(flaky.first_status) == {"failed"} and set(flaky.attempts) == {2}
    assert flaky.first_error.str.contains("an odd run").all() and flaky.error.isna().all()
    assert (wrong.status, bool(wrong.flaky), wrong.first_status, wrong.attempts) == ("failed", False, "failed", 2), "a deterministic failure stays failed"
    assert frame[~frame.flaky & (frame.sample_idx < 3)].first_status.isna().all(), "passed at once: never re-run"

    summary = outcome.summary
    total = len(flaky)
    assert summary["flaky"]["total"] == total and summary["flaky"]["by_change"] == {"failed->passed": total}
    assert [s["sample_idx"] for s in summary["flaky"]["samples"]] == sorted(flaky.sample_idx)
    assert summary["counts"]["passed"] == 3 and summary["run"]["recheck_failures"] is True
    lines = flaky_lines(summary["flaky"])
    assert lines[0].startswith(f"flaky: {total} sample(s) got another verdict when re-run (failed->passed {total})")
    assert f"  HumanEval/0 #{flaky.sample_idx.iloc[0]}: failed -> passed" in lines

    assert f"flaky {total} (failed-&gt;passed {total})" in run._repr_html_()
    html = (outcome.run_dir / "report.html").read_text()
    assert 'class="flaky-box"' in html and '<option value="flaky">' in html
    assert 'data-flags="passed failed failing flaky"' in html, "the problem row is found by the flaky filter"
    assert html.count("flaky</span>: first failed") == total, "every flaky sample is shown in its problem's row"
    suite = ET.fromstring((outcome.run_dir / "junit.xml").read_text()).find("testsuite")
    assert suite is not None
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["flaky"] == str(total)
    out = suite.find("testcase/system-out")
    assert out is not None and f"sample {flaky.sample_idx.iloc[0]} was failed, then passed when re-run" in (out.text or "")


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_with_the_recheck_off_every_sample_runs_once(tmp_path: Path) -> None:
    outcome = evalkit.run(_config(tmp_path, "once", recheck_failures=False), progress=False)
    frame = evalkit.load_run(outcome.run_dir).samples
    assert set(frame.attempts) == {1} and not frame.flaky.any() and frame.first_status.isna().all()
    assert 1 <= (frame.status == "failed").sum() - 1 <= 2, "odd-numbered programs fail for good"
    assert outcome.summary["flaky"] == {"total": 0, "by_change": {}, "samples": []}
    assert outcome.summary["run"]["recheck_failures"] is False
    assert 'class="flaky-box"' not in (outcome.run_dir / "report.html").read_text()
