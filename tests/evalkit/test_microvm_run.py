"""End-to-end runs on the microvm driver (QEMU; TCG emulation on our machines): the same
verdicts as bubblewrap, and hostile programs that leave the host and the next sample alone."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

import evalkit

from ._mixed import LOOP, mixed_completions
from .test_run import write_config, write_samples

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.microvm,
              pytest.mark.usefixtures("sandboxes", "ray_session", "microvm")]


def test_ten_reference_problems_pass_in_microvms(tmp_path: Path) -> None:
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 10}, sandbox={"driver": "microvm", "template": "base"})
    outcome = evalkit.run(config, progress=False)
    assert outcome.exit_code == 0
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    assert len(frame) == 10 and frame["passed"].all()
    assert set(frame["driver"]) == {"microvm"}
    # the accelerator QEMU used, and why, is recorded with every result
    assert frame["isolation"].str.startswith("microVM (QEMU").all()
    assert frame["isolation"].str.contains("KVM|TCG").all()


def _verdicts(tmp_path: Path, driver: str, rows: list[tuple[str, str]], ids: list[str]) -> pd.DataFrame:
    folder = tmp_path / driver
    folder.mkdir()
    samples = write_samples(folder, rows)
    config = write_config(folder, benchmark={"name": "humaneval", "ids": ids},
                          model={"provider": "samples", "path": str(samples)},
                          sandbox={"driver": driver, "timeout_s": 3})
    outcome = evalkit.run(config, progress=False)
    assert outcome.summary["counts"]["infra_error"] == 0
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    return frame.sort_values(["task_id", "sample_idx"]).reset_index(drop=True)


def test_mixed_samples_get_the_same_verdicts_as_bwrap(tmp_path: Path) -> None:
    ids = ["HumanEval/0", "HumanEval/53"]
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(ids, None)
    rows = [(p.task_id, completion) for p in problems for _, completion, _ in mixed_completions(p)]
    rows.append((ids[0], LOOP))
    rows.append((ids[1], problems[1].canonical_solution or ""))  # after a timeout: a fresh VM
    on_bwrap = _verdicts(tmp_path, "bwrap", rows, ids)
    on_microvm = _verdicts(tmp_path, "microvm", rows, ids)
    columns = ["task_id", "sample_idx", "status", "passed", "output_truncated"]
    pd.testing.assert_frame_equal(on_bwrap[columns], on_microvm[columns])
    assert on_microvm["passed"].sum() == 2 * 2 + 1


def test_hostile_programs_leave_the_host_and_the_next_sample_alone(tmp_path: Path) -> None:
    marker = tmp_path / f"escape-{uuid.uuid4().hex}"
    hostile = {
        "fork_bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        "memory_bomb": "    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20))\n",
        "write_everywhere": (
            "    import os\n"
            f"    for target in ({str(marker)!r}, '/etc/passwd', '/usr/bin/python3', '/opt/vmpool/_agent.py', '/root/x', '/var/tmp/x', '/tmp/x'):\n"
            "        try:\n"
            "            open(target, 'a').write('owned')\n"
            "        except OSError:\n"
            "            pass\n"
            "    return None\n"),
    }
    problem = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(["HumanEval/2"], None)[0]
    rows = []
    for body in hostile.values():
        rows += [(problem.task_id, body), (problem.task_id, problem.canonical_solution or "")]
    samples = write_samples(tmp_path, rows)
    config = write_config(tmp_path, benchmark={"name": "humaneval", "ids": [problem.task_id]},
                          model={"provider": "samples", "path": str(samples)},
                          sandbox={"driver": "microvm", "timeout_s": 5, "memory_mb": 2048},
                          scheduler={"workers": 1, "batch_size": 8})
    outcome = evalkit.run(config, progress=False)
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet").sort_values("sample_idx")
    assert list(frame["passed"]) == [False, True] * len(hostile), list(frame["status"])
    assert outcome.summary["counts"]["infra_error"] == 0
    assert not marker.exists()


def test_calibration_times_the_references_in_the_runs_own_microvms(tmp_path: Path) -> None:
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 4},
                          sandbox={"driver": "microvm", "template": "base", "time_limit": "calibrated"})
    outcome = evalkit.run(config, progress=False)
    assert outcome.exit_code == 0 and outcome.summary["metrics"] == {"pass@1": 1.0}
    calibration = evalkit.load_run(outcome.run_dir).summary["run"]["time_limits"]
    assert (calibration["mode"], calibration["driver"], calibration["calibrated_problems"]) == ("calibrated", "microvm", 4)
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    # HumanEval's references take well under a quarter second, even emulated: the floor
    assert set(frame["cpu_limit_s"]) == {1.0} and set(frame["wall_limit_s"]) == {5.0}
