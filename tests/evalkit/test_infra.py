"""The infrastructure section of summary.json: causes grouped, counters kept across sessions,
and a run whose sandboxes no canary can vouch for ending with exit 3 and the cause named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import evalkit
from evalkit._cli import infra_error_lines, main
from evalkit._infra import InfraCounts, infra_cause, infrastructure_summary

from .conftest import MakeResult
from .test_run import write_config


def test_causes_group_samples_that_failed_alike(make_result: MakeResult) -> None:
    errors = [
        "sandbox failed 3 time(s); last: SandboxError: sandbox failed to start: SandboxError: sandbox bwrap-0123456789ab: the agent exited",
        "sandbox failed 2 time(s); last: SandboxError: sandbox failed to start: SandboxError: sandbox bwrap-ba9876543210: the agent exited",
        "worker failed 3 time(s); last: ActorDiedError: The actor 5f1c2d3e4a5b6c7d8e9f died (pid 4242)\nmore detail",
        "model API: HTTP 500",
    ]
    results = [make_result("t", i, "infra_error", error=error) for i, error in enumerate(errors)]
    results.append(make_result("t", 9, "failed"))
    section = infrastructure_summary({"sandbox_replacements": 2, "unknown_counter": 7}, results)
    assert section["infra_error_causes"] == [
        {"cause": "sandbox failed to start: SandboxError: sandbox bwrap-…: the agent exited", "count": 2},
        {"cause": "ActorDiedError: The actor … died (pid …)", "count": 1},
        {"cause": "model API: HTTP 500", "count": 1},
    ]
    assert section["sandbox_replacements"] == 2 and section["worker_failures"] == 0
    assert "unknown_counter" not in section
    assert len(infra_cause("x" * 1000)) == 160


def test_counts_add_up_and_start_again_when_taken() -> None:
    counts = InfraCounts(canary_checks=2)
    counts.add({"canary_checks": 3, "worker_failures": 1})
    taken = counts.take()
    assert (taken.canary_checks, taken.worker_failures) == (5, 1)
    assert counts == InfraCounts()


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_a_run_no_canary_can_vouch_for_exits_3_and_names_the_cause(tmp_path: Path) -> None:
    # a wall-time limit no program meets: without canaries every sample would be a "timeout"
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 3}, sandbox={"driver": "bwrap", "timeout_s": 0.001},
                          scheduler={"workers": 2, "batch_size": 2, "max_retries": 1, "canary_every": 10})
    result = CliRunner().invoke(main, ["run", "-q", str(config)])
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    # which canary runs out of time first can differ (a program can finish within 1 ms), so
    # the samples may be grouped under one cause or two
    summary = json.loads((next((tmp_path / "runs").iterdir()) / "summary.json").read_text())
    causes = summary["infrastructure"]["infra_error_causes"]
    assert sum(c["count"] for c in causes) == 3
    assert all(c["cause"].startswith("CanaryFailure: canaries misbehaved in two sandboxes in a row: the known-") and " timeout" in c["cause"] for c in causes)
    shown = infra_error_lines(summary)
    assert shown[0].startswith("3 sample(s) infra_error:") and lines[-1 - len(shown):-1] == shown
    assert f"; most: {causes[0]['count']} x CanaryFailure: " in lines[-1]
    assert any(line.startswith("infrastructure: ") and "worker(s) replaced" in line for line in lines)
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    infrastructure = summary["infrastructure"]
    assert summary["counts"]["infra_error"] == 3 and summary["counts"]["timeout"] == 0
    assert infrastructure["worker_replacements"] == infrastructure["worker_failures"] == 4  # 2 batches, 2 tries each
    assert infrastructure["canary_failures"] == 8 and infrastructure["batches_retried"] == 2
    assert "canaries misbehaved" in (run_dir / "report.html").read_text()
    # re-reporting recomputes the same section from run.json and the journal, running nothing
    again = evalkit.report(run_dir)
    assert again.summary["infrastructure"] == infrastructure and again.exit_code == 3
    assert infra_error_lines(again.summary) == shown
