"""Determinism: the same samples give the same verdicts whatever the pool size, batch size or
sandbox driver (`evalkit recheck`), and samples that are honestly nondeterministic are caught."""

from __future__ import annotations

import json
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import evalkit
from evalkit import SampleResult
from evalkit._recheck import compare
from evalkit._report import render_report

from ..conftest import bwrap_missing_reason
from ._report_pages import text_of
from .hostile import CASES, CORRECT, FOLLOWER, TASK_ID, WRONG
from .test_report import summary_of
from .test_run import write_config, write_samples

REFERENCE = 10
# hostile-ish completions whose verdicts do not depend on the host (no $fields): early exits,
# timeouts, a fork bomb, a memory bomb, an output flood, a program that kills its own group
HOSTILE = ["sys_exit_zero", "os_exit_zero", "exit_inside_the_tests", "atexit_fake_success", "alarm_handler_exits",
           "os_exit_from_del", "kill_own_group", "sleep_forever", "fork_bomb", "memory_bomb", "output_flood"]
TIMEOUT_S = 5  # the hostile corpus's timeout on a microVM under TCG emulation
# passes or fails on a coin flip drawn once per execution (module level, before the tests run)
COIN = CORRECT.replace("    return ", "    return [] if _ODD else ") + "\n\nimport os\n_ODD = os.urandom(1)[0] % 2 == 1\n"
COINS = 20  # every coin landing the same way in two executions: a chance of 2**-20
NO_RECHECK = {"recheck_failures": False}  # a re-checked coin passes 3 times in 4; and it would be listed as flaky too


def hostile_rows() -> list[tuple[str, str]]:
    """Each hostile case, then `FOLLOWER`, which fails unless its sandbox is as clean as a fresh one."""
    by_name = {case.name: case for case in CASES}
    rows = []
    for name in HOSTILE:
        completion = by_name[name].completion
        assert not string.Template(completion).get_identifiers(), name
        rows += [(TASK_ID, completion), (TASK_ID, FOLLOWER)]
    return rows


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """A run of HumanEval/0-9's reference solutions and the hostile cases, with 2 workers."""
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("mixed")
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).problems()[:REFERENCE]
    rows = [(p.task_id, p.canonical_solution or "") for p in problems] + hostile_rows()
    config = write_config(folder, benchmark={"name": "humaneval", "ids": [p.task_id for p in problems] + [TASK_ID]},
                          model={"provider": "samples", "path": str(write_samples(folder, rows))},
                          sandbox={"timeout_s": TIMEOUT_S}, scheduler={"workers": 2})
    outcome = evalkit.run(config, progress=False)
    assert outcome.exit_code == 0 and outcome.summary["counts"]["infra_error"] == 0
    statuses = pd.read_parquet(outcome.run_dir / "samples.parquet")["status"]
    assert set(statuses) == {"passed", "failed", "timeout", "oom"}
    return outcome.run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def assert_identical(outcome: evalkit.RecheckOutcome, run_dir: Path, recheck: str) -> None:
    det = outcome.determinism
    planned = REFERENCE + 2 * len(HOSTILE)
    assert (outcome.exit_code, det["identical_all"], det["differing"], det["excluded"]) == (0, True, [], [])
    assert det["compared"] == det["identical"] == det["samples"] == planned
    assert json.loads((run_dir / "determinism.json").read_text()) == det
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["determinism"] == det
    page = text_of((run_dir / "report.html").read_text())
    assert f"Verdicts checked: identical across 2 executions (2 workers bwrap, batch 8 / {recheck}); {planned} samples compared." in page


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_one_worker_one_sample_per_batch_gives_the_verdicts_of_two_workers(mixed_run: Path, tmp_path: Path) -> None:
    run_dir = copy_of(mixed_run, tmp_path)
    journal = (run_dir / "samples.jsonl").read_bytes()
    outcome = evalkit.recheck(run_dir, workers=1, batch_size=1, progress=False)
    assert_identical(outcome, run_dir, "1 worker bwrap, batch 1")
    assert outcome.determinism["executions"][1]["isolation"].startswith("namespaces")
    assert (run_dir / "samples.jsonl").read_bytes() == journal  # compared, never counted


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.microvm
@pytest.mark.usefixtures("microvm")
def test_microvms_give_the_verdicts_of_bubblewrap(mixed_run: Path, tmp_path: Path) -> None:
    run_dir = copy_of(mixed_run, tmp_path)
    outcome = evalkit.recheck(run_dir, driver="microvm", workers=1, progress=False)
    assert_identical(outcome, run_dir, "1 worker microvm, batch 8")
    assert outcome.determinism["executions"][1]["isolation"].startswith("microVM")


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_nondeterministic_samples_are_reported_with_links_to_their_rows(tmp_path: Path) -> None:
    rows = [(TASK_ID, CORRECT), (TASK_ID, WRONG)] + [(TASK_ID, COIN)] * COINS
    config = write_config(tmp_path, benchmark={"name": "humaneval", "ids": [TASK_ID]},
                          model={"provider": "samples", "path": str(write_samples(tmp_path, rows))}, scheduler={"workers": 2},
                          sandbox=NO_RECHECK)
    run_dir = evalkit.run(config, progress=False).run_dir
    done = subprocess.run([sys.executable, "-m", "evalkit", "recheck", str(run_dir), "--workers", "1", "--batch-size", "1", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    det = json.loads((run_dir / "determinism.json").read_text())
    differing = {d["sample_idx"] for d in det["differing"]}
    assert differing and differing <= set(range(2, 2 + COINS))  # only coins; the right and the wrong sample agree
    assert det["compared"] == 2 + COINS and det["identical"] == det["compared"] - len(differing)
    for d in det["differing"]:
        assert {d["run"], d["recheck"]} == {"passed", "failed"}
        assert f"{TASK_ID} #{d['sample_idx']}: {d['run']} in the run, {d['recheck']} when run again" in done.stdout
    assert f"verdicts DIFFER: {len(differing)} of {2 + COINS} compared samples" in done.stdout
    page = (run_dir / "report.html").read_text()
    assert f"Verdicts checked: {len(differing)} of {2 + COINS} samples got a different verdict across 2 executions" in text_of(page)
    listed = page[page.index('<ul class="differing">'):]
    assert len(re.findall(r'<li><a href="#p0">HumanEval/100</a> #\d+:', listed[:listed.index("</ul>")])) == len(differing)
    assert json.loads((run_dir / "summary.json").read_text())["determinism"]["identical_all"] is False
    # re-rendering keeps what the check found
    assert subprocess.run([sys.executable, "-m", "evalkit", "report", str(run_dir)], capture_output=True, timeout=120).returncode == 0
    assert (run_dir / "report.html").read_text() == page


def test_recheck_of_a_folder_that_is_not_a_run_or_with_an_unknown_driver_is_an_input_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "evalkit", "recheck", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"evalkit: error: {tmp_path} is not an evalkit run folder (no run.json)\n"
    done = subprocess.run([sys.executable, "-m", "evalkit", "recheck", str(tmp_path), "--driver", "firecracker"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'firecracker' is not a sandbox driver (known: auto, bwrap, microvm)" in done.stderr


RUN = {"role": "run", "driver": "bwrap", "isolation": "namespaces", "workers": 2, "batch_size": 8}
AGAIN = {"role": "recheck", "driver": "microvm", "isolation": "microVM", "workers": 1, "batch_size": 1, "duration_s": 1.0}


def test_compare_leaves_out_samples_without_a_verdict_on_either_side(make_result: Any) -> None:
    run = [make_result("t/0", 0), make_result("t/0", 1, "failed"), make_result("t/0", 2, "infra_error", error="agent died"),
           make_result("t/0", 3, "timeout"), make_result("t/1", 0)]
    again = [make_result("t/0", 0), make_result("t/0", 1, "timeout", error="Traceback...\nTimeout: 5 s"),
             make_result("t/0", 3, "infra_error", error="VM broke")]
    samples = [evalkit.Sample(task_id=r.task_id, sample_idx=r.sample_idx, completion=r.completion) for r in run]
    samples.append(evalkit.Sample(task_id="t/1", sample_idx=1, completion="x"))  # never run
    det = compare(samples, {r.key: r for r in run}, {r.key: r for r in again}, RUN, AGAIN)
    assert det["executions"] == [RUN, AGAIN] and det["samples"] == 6
    assert (det["compared"], det["identical"], det["identical_all"]) == (2, 1, False)
    assert det["differing"] == [{"task_id": "t/0", "sample_idx": 1, "run": "failed", "recheck": "timeout",
                                 "run_error": "failed on purpose", "recheck_error": "Timeout: 5 s"}]
    assert det["excluded"] == [
        {"task_id": "t/0", "sample_idx": 2, "reason": "infra_error in the run: agent died"},
        {"task_id": "t/0", "sample_idx": 3, "reason": "infra_error in the recheck: VM broke"},
        {"task_id": "t/1", "sample_idx": 0, "reason": "infra_error in the recheck: not run"},
        {"task_id": "t/1", "sample_idx": 1, "reason": "no verdict in the run"},
    ]


def determinism(differing: list[dict[str, Any]], excluded: int = 0) -> dict[str, Any]:
    return {"format_version": 1, "checked": "2026-11-28T00:00:00+00:00", "executions": [RUN, AGAIN], "samples": 3 + excluded,
            "compared": 3, "identical": 3 - len(differing), "identical_all": not differing, "differing": differing,
            "excluded": [{"task_id": "t/0", "sample_idx": 9, "reason": "no verdict in the run"}] * excluded}


def test_the_report_says_when_verdicts_were_checked_and_identical(make_result: Any) -> None:
    results: list[SampleResult] = [make_result("t/0", 0), make_result("t/0", 1, "failed"), make_result("t/1", 0)]
    assert "Verdicts checked" not in text_of(render_report(summary_of(results, determinism=None), results))
    page = text_of(render_report(summary_of(results, determinism=determinism([], excluded=1)), results))
    assert ("Verdicts checked: identical across 2 executions (2 workers bwrap, batch 8 / 1 worker microvm, batch 1); "
            "3 samples compared, 1 left out (an infra_error or no verdict on one side; determinism.json lists them).") in page


def test_the_report_lists_differing_samples_with_links_to_their_rows(make_result: Any) -> None:
    results: list[SampleResult] = [make_result("t/0", 0), make_result("t/0", 1, "failed"), make_result("t/1", 0)]
    differing = [{"task_id": "t/1", "sample_idx": 0, "run": "passed", "recheck": "timeout", "run_error": None, "recheck_error": "slow"}]
    page = render_report(summary_of(results, determinism=determinism(differing)), results)
    assert ("Verdicts checked: 1 of 3 samples got a different verdict across 2 executions "
            "(2 workers bwrap, batch 8 / 1 worker microvm, batch 1): t/1 #0: passed in the run, timeout when run again") in text_of(page)
    assert '<a href="#p1">t/1</a> #0' in page and 'id="p1" data-task="t/1"' in page


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes")
def test_run_check_determinism_rechecks_with_one_worker_and_fails_on_a_difference(tmp_path: Path) -> None:
    rows = [(TASK_ID, CORRECT)] + [(TASK_ID, COIN)] * COINS
    config = write_config(tmp_path, benchmark={"name": "humaneval", "ids": [TASK_ID]},
                          model={"provider": "samples", "path": str(write_samples(tmp_path, rows))}, scheduler={"workers": 2},
                          sandbox=NO_RECHECK)
    done = subprocess.run([sys.executable, "-m", "evalkit", "run", str(config), "--check-determinism", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # no gate, a complete run: 0 but for the difference
    (run_dir,) = (tmp_path / "runs").iterdir()
    det = json.loads((run_dir / "summary.json").read_text())["determinism"]
    assert [(e["workers"], e["batch_size"]) for e in det["executions"]] == [(2, 8), (1, 1)]
    assert "verdicts DIFFER" in done.stdout
    assert done.stdout.splitlines()[-1].endswith(f"no gates; verdicts differ when run again: {len(det['differing'])} sample(s) -> exit 1")
