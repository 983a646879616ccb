"""End-to-end runs through the Python API: real bubblewrap sandboxes, a real local Ray."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit import load_config

from ._mixed import LOOP, mixed_completions

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes", "ray_session")]

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, **sections: object) -> Path:
    config = {"name": "t", "benchmark": {"name": "humaneval"}, "model": {"provider": "reference"}, "output_dir": str(tmp_path / "runs")}
    config.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_samples(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    return path


@pytest.mark.slow
def test_reference_config_scores_all_164_problems(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "humaneval.yaml").model_copy(update={"output_dir": str(tmp_path)})
    outcome = evalkit.run(config, progress=False)
    assert outcome.exit_code == 0
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    assert outcome.summary["counts"]["passed"] == 164
    run = outcome.run_dir
    for name in ("config.yaml", "run.json", "samples.jsonl", "samples.parquet", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    frame = pd.read_parquet(run / "samples.parquet")
    assert len(frame) == 164 and frame["passed"].all()
    assert set(frame["driver"]) == {"bwrap"}
    assert json.loads((run / "summary.json").read_text())["metrics"]["pass@1"] == 1.0
    assert "pass@1 = 1.0000" in (run / "report.html").read_text()


def test_mixed_samples_get_the_expected_verdicts(tmp_path: Path) -> None:
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(["HumanEval/0", "HumanEval/2", "HumanEval/53"], None)
    rows, expected = [], []
    for p in problems:
        for label, completion, passes in mixed_completions(p):
            rows.append((p.task_id, completion))
            expected.append((p.task_id, label, passes))
    rows.append((problems[0].task_id, LOOP))
    expected.append((problems[0].task_id, "loop", False))
    samples = write_samples(tmp_path, rows)
    config = write_config(
        tmp_path,
        benchmark={"name": "humaneval", "ids": [p.task_id for p in problems]},
        model={"provider": "samples", "path": str(samples)},
        sandbox={"timeout_s": 2},
    )
    outcome = evalkit.run(config, progress=False)
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    assert len(frame) == len(rows)
    counters: dict[str, int] = {}
    for task_id, label, passes in expected:
        idx = counters.get(task_id, 0)
        counters[task_id] = idx + 1
        row = frame[(frame.task_id == task_id) & (frame.sample_idx == idx)].iloc[0]
        assert bool(row.passed) == passes, (task_id, label, row.status, row.error)
        assert bool(row.output_truncated) == (label == "correct_and_loud"), label
        if label == "loop":
            assert row.status == "timeout"
        elif not passes:
            assert row.status == "failed", (label, row.status)
        if "exit" in label:
            assert "before its tests finished" in row.error
    assert outcome.summary["counts"]["infra_error"] == 0


def test_generated_code_cannot_touch_the_host(tmp_path: Path) -> None:
    marker = tmp_path / f"escape-{uuid.uuid4().hex}"
    tmp_marker = Path("/tmp") / f"evalkit-escape-{uuid.uuid4().hex}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    connections: list[object] = []

    def accept() -> None:
        for _ in range(40):
            try:
                connections.append(server.accept())
            except OSError:
                continue

    listener = threading.Thread(target=accept, daemon=True)
    listener.start()
    hostile = (
        "    import socket, os\n"
        f"    for target in ({str(marker)!r}, {str(tmp_marker)!r}):\n"
        "        try:\n"
        "            open(target, 'w').write('escaped')\n"
        "        except OSError:\n"
        "            pass\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    except OSError:\n"
        "        pass\n"
        "    return None\n"
    )
    samples = write_samples(tmp_path, [("HumanEval/0", hostile)])
    config = write_config(tmp_path, benchmark={"name": "humaneval", "ids": ["HumanEval/0"]}, model={"provider": "samples", "path": str(samples)})
    outcome = evalkit.run(config, progress=False)
    listener.join()
    server.close()
    assert outcome.summary["counts"]["failed"] == 1
    assert not marker.exists() and not tmp_marker.exists()
    assert connections == []


def test_an_unusable_sandbox_is_an_infrastructure_failure(tmp_path: Path) -> None:
    # An executable that exists but cannot run the agent: the sandbox never says hello.
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 1}, sandbox={"python": "/bin/false"})
    with pytest.raises(evalkit.InfraError, match="sandbox"):
        evalkit.run(config, progress=False)
    assert list((tmp_path / "runs").iterdir()) == [], "a run that never started leaves no run folder"


def test_report_rerenders_from_the_journal_without_running(tmp_path: Path) -> None:
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 2}, sampling={"n": 3, "k": [1, 3, 5]})
    outcome = evalkit.run(config, progress=False)
    assert set(outcome.summary["metrics"]) == {"pass@1", "pass@3"}
    assert "pass@5" in outcome.summary["skipped_k"]
    (outcome.run_dir / "report.html").unlink()
    (outcome.run_dir / "samples.parquet").unlink()
    again = evalkit.report(outcome.run_dir)
    assert again.summary["metrics"] == outcome.summary["metrics"]
    assert (outcome.run_dir / "report.html").is_file() and (outcome.run_dir / "samples.parquet").is_file()


def test_resume_runs_what_is_missing_from_the_runs_own_plan(tmp_path: Path) -> None:
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(None, 4)
    samples = write_samples(tmp_path, [(p.task_id, p.canonical_solution or "") for p in problems])
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 4}, model={"provider": "samples", "path": str(samples)})
    first = evalkit.run(config, progress=False)
    journal = first.run_dir / "samples.jsonl"
    kept = journal.read_text().splitlines()[:2]
    # As if the run had been interrupted after two samples, and the samples file then deleted:
    journal.write_text("".join(line + "\n" for line in kept))
    evalkit.RunStore.open(first.run_dir).write_meta(state="interrupted")
    samples.unlink()
    partial = evalkit.report(first.run_dir)
    assert partial.summary["run"]["complete"] is False and partial.summary["num_samples"] == 2
    resumed = evalkit.resume(first.run_dir, progress=False)
    lines = journal.read_text().splitlines()
    assert lines[:2] == kept and len(lines) == 4, "only the two missing samples ran"
    assert resumed.summary["run"]["complete"] is True
    assert resumed.summary["counts"]["passed"] == 4 and resumed.exit_code == 0
    # A finished run is only re-reported, never re-run.
    again = evalkit.resume(first.run_dir, progress=False)
    assert journal.read_text().splitlines() == lines and again.summary["metrics"] == resumed.summary["metrics"]


def test_run_with_resume_starts_afresh_when_the_samples_changed(tmp_path: Path) -> None:
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(None, 2)
    samples = write_samples(tmp_path, [(p.task_id, p.canonical_solution or "") for p in problems])
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 2}, model={"provider": "samples", "path": str(samples)})
    first = evalkit.run(config, progress=False)
    evalkit.RunStore.open(first.run_dir).write_meta(state="interrupted")
    # Same config, same samples: the unfinished run is continued (it has nothing left to run).
    same = evalkit.run(config, progress=False, resume=True)
    assert same.run_dir == first.run_dir
    evalkit.RunStore.open(first.run_dir).write_meta(state="interrupted")
    # Another model's completions at the same path must never be scored as the old run.
    write_samples(tmp_path, [(p.task_id, "    return None\n") for p in problems])
    fresh = evalkit.run(config, progress=False, resume=True)
    assert fresh.run_dir != first.run_dir
    assert fresh.summary["metrics"]["pass@1"] == 0.0


def test_resume_retries_the_infra_errors_of_a_finished_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 2})
    first = evalkit.run(config, progress=False)
    journal = first.run_dir / "samples.jsonl"
    lines = journal.read_text().splitlines()
    # As if the second sample had hit infrastructure failures beyond the retry budget:
    broken = json.loads(lines[1]) | {"status": "infra_error", "passed": False, "error": "sandbox failed"}
    journal.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    assert evalkit.report(first.run_dir).exit_code == 3
    again = evalkit.resume(first.run_dir, progress=False)
    assert again.exit_code == 0 and again.summary["counts"]["passed"] == 2
    assert len(journal.read_text().splitlines()) == 3, "only the infra_error sample ran again"
