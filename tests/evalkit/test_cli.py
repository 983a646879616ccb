"""The `evalkit` command as users and CI jobs run it: exit codes, one-line errors, Ctrl-C, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

EVALKIT = [sys.executable, "-m", "evalkit"]


def evalkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVALKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unknown_config_key_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsampling:\n  n: 1\n  kk: [1]\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "c.yaml, line 5", "sampling.kk", "expected one of")


def test_wrong_type_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsandbox: {timeout_s: soon}\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "line 3", "sandbox.timeout_s", "number")


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    assert_one_line_error(evalkit("run", "nope.yaml", cwd=tmp_path), "nope.yaml", "does not exist")


def test_missing_samples_file_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval}\nmodel: {provider: samples, path: s.jsonl}\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "line 2", "model.path", "s.jsonl")


def test_malformed_samples_line_exits_2_naming_the_line(tmp_path: Path) -> None:
    write(tmp_path / "s.jsonl", '{"task_id": "HumanEval/0", "completion": "    pass\\n"}\n{"task_id": "HumanEval/1", "completion": \n')
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval, limit: 2}\nmodel: {provider: samples, path: s.jsonl}\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "s.jsonl, line 2", "not valid JSON")


def test_unknown_task_id_exits_2_naming_it(tmp_path: Path) -> None:
    write(tmp_path / "s.jsonl", '{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "HumanEval/999", "completion": ""}\n')
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval, limit: 1}\nmodel: {provider: samples, path: s.jsonl}\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "s.jsonl, line 2", "HumanEval/999")


def test_report_of_a_folder_that_is_not_a_run_exits_2(tmp_path: Path) -> None:
    assert_one_line_error(evalkit("report", str(tmp_path), cwd=tmp_path), "not an evalkit run folder")


def test_unknown_sandbox_driver_exits_2_naming_the_line(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsandbox:\n  driver: docker\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "c.yaml, line 4", "unknown sandbox driver 'docker'", "bwrap")


def test_unknown_problem_id_exits_2_naming_the_line(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "benchmark:\n  name: humaneval\n  ids: [HumanEval/0, HumanEval/999]\nmodel: {provider: reference}\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "c.yaml, line 3", "HumanEval/999")


def test_output_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "taken", "")
    write(tmp_path / "c.yaml", "benchmark: {name: humaneval, limit: 1}\nmodel: {provider: reference}\noutput_dir: taken\n")
    assert_one_line_error(evalkit("run", "c.yaml", cwd=tmp_path), "output_dir", "taken")


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes")
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_keeps_finished_results_and_resume_finishes_it(tmp_path: Path, stop: signal.Signals) -> None:
    slow = "    import time\n    time.sleep(0.4)\n    return None\n"
    rows = [{"task_id": f"HumanEval/{i}", "completion": slow} for i in range(12)]
    write(tmp_path / "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "interrupt",
        "benchmark": {"name": "humaneval", "limit": 12},
        "model": {"provider": "samples", "path": "s.jsonl"},
        "scheduler": {"workers": 1, "batch_size": 1, "max_in_flight": 1},
        "output_dir": "runs",
    }
    write(tmp_path / "c.yaml", yaml.safe_dump(config))
    proc = subprocess.Popen([*EVALKIT, "run", "c.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list((tmp_path / "runs").glob("interrupt-*/samples.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            journal = found[0]
            break
        time.sleep(0.1)
    assert journal is not None, "the run never journaled three samples"
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "evalkit resume" in err and "Traceback" not in err
    kept = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(kept) >= 3
    assert json.loads((journal.parent / "run.json").read_text())["state"] == "interrupted"
    partial = evalkit("report", "--json", str(journal.parent), cwd=tmp_path)
    assert partial.returncode == 3, partial.stderr  # report exits as the run would now: it did not finish
    shown = json.loads(partial.stdout)
    assert shown["complete"] is False and shown["state"] == "interrupted" and shown["planned_samples"] == 12
    assert shown["exit_code"] == 3

    resumed = evalkit("run", "c.yaml", "--resume", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert str(journal.parent) in resumed.stdout
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    keys = [(r["task_id"], r["sample_idx"]) for r in lines]
    assert len(keys) == len(set(keys)) == 12, "finished samples were run again or some are missing"
    assert lines[: len(kept)] == kept
    summary = json.loads((journal.parent / "summary.json").read_text())
    assert summary["counts"]["failed"] == 12 and summary["run"]["state"] == "finished"
