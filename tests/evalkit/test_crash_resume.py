"""kill -9 of `evalkit run` at random moments, then resume: exactly the verdicts of a run that
was never interrupted, nothing lost and nothing counted twice (issue 7, crash safety)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit import BenchmarkConfig

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.usefixtures("sandboxes")]

EVALKIT = [sys.executable, "-m", "evalkit"]
KILL_POINTS = 6
SEED = 20261127


def samples_file(path: Path) -> Path:
    """24 problems, 2 samples each: correct, wrong, crashing and slow ones (a run lasts seconds)."""
    problems = evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).problems()[:24]
    rows = []
    for i, problem in enumerate(problems):
        solution = problem.canonical_solution or ""
        rows.append({"task_id": problem.task_id, "completion": "    import time\n    time.sleep(0.15)\n" + solution})
        wrong = ["    return None\n", "    raise ValueError('boom')\n", "    import time\n    time.sleep(0.1)\n    return 42\n"][i % 3]
        rows.append({"task_id": problem.task_id, "completion": wrong})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def verdicts(run_dir: Path) -> dict[tuple[str, int], tuple[str, bool]]:
    frame = pd.read_parquet(run_dir / "samples.parquet")
    keys = list(zip(frame.task_id, frame.sample_idx))
    assert len(keys) == len(set(keys)), "a sample appears twice in samples.parquet"
    return {(t, int(i)): (str(s), bool(p)) for t, i, s, p in zip(frame.task_id, frame.sample_idx, frame.status, frame.passed)}


def run_folders(output: Path) -> list[Path]:
    """Run folders with a plan (a run killed while its folder was being made leaves one without)."""
    return sorted(p.parent for p in output.glob("*/plan.jsonl"))


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_verdicts(tmp_path: Path) -> None:
    samples = samples_file(tmp_path / "samples.jsonl")
    config = {
        "name": "crash",
        "benchmark": {"name": "humaneval", "limit": 24},
        "model": {"provider": "samples", "path": str(samples)},
        "sandbox": {"timeout_s": 5},
        "scheduler": {"workers": 2, "batch_size": 2},
        "output_dir": "runs",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    started = time.monotonic()
    clean = subprocess.run([*EVALKIT, "run", "c.yaml", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lifetime = time.monotonic() - started
    assert clean.returncode == 0, clean.stderr
    expected = verdicts(run_folders(tmp_path / "runs")[0])
    assert len(expected) == 48 and {s for s, _ in expected.values()} >= {"passed", "failed"}

    rng = random.Random(SEED)
    for point in range(KILL_POINTS):
        output = tmp_path / f"killed-{point}"
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**config, "output_dir": str(output)}))
        delay = rng.uniform(0.2, lifetime)  # anywhere in the life of a run: Ray starting, samples running, the end
        proc = subprocess.Popen([*EVALKIT, "run", "c.yaml", "-q"], cwd=tmp_path, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # what a user does next: `run --resume` continues the killed run (or starts one if it never got a folder)
        resumed = subprocess.run([*EVALKIT, "run", "c.yaml", "--resume", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, (point, round(delay, 2), resumed.stderr)
        folders = run_folders(output)
        # resumed, not started over beside it, unless the kill came after the run had finished
        assert len(folders) == 1 or (len(folders) == 2 and (folders[0] / "summary.json").exists()), (point, round(delay, 2), folders)
        for folder in folders:
            assert verdicts(folder) == expected, (point, round(delay, 2), folder)
