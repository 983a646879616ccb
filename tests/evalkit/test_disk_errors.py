"""A full disk or a read-only output folder gives a clear error before work is lost (issue 7).

The disks are real: a small tmpfs that fills mid-run, then is remounted bigger, and read-only
mounts. Each scenario runs the CLI inside ``unshare --mount`` (a private mount namespace), so
no mount outlives the test, however it ends; that needs root.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit import BenchmarkConfig, SampleResult

from .model_server import ModelServer, humaneval_replies

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.usefixtures("sandboxes"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to mount a small tmpfs in a private mount namespace"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]

PAGE = 4096
PROBLEMS = 16


def samples_file(path: Path) -> Path:
    """16 problems, a right and a wrong sample each, every completion carrying a 40 KB comment
    of random text (it does not compress), so that the journal grows fast and evenly."""
    rng = random.Random(20261128)
    rows = []
    for i, problem in enumerate(evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).problems()[:PROBLEMS]):
        for right in (True, False):
            body = (problem.canonical_solution or "") if right else ["    return None\n", "    raise ValueError('boom')\n"][i % 2]
            filler = base64.b64encode(rng.randbytes(30_000)).decode()
            rows.append({"task_id": problem.task_id, "completion": f"    # {filler}\n{body}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_config(folder: Path, output: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "disk",
        "benchmark": {"name": "humaneval", "limit": PROBLEMS},
        "model": {"provider": "samples", "path": str(samples_file(folder / "samples.jsonl"))},
        "scheduler": {"workers": 2, "batch_size": 1},
        "output_dir": str(output),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def verdicts(run_dir: Path) -> dict[tuple[str, int], str]:
    frame = pd.read_parquet(run_dir / "samples.parquet")
    return {(t, int(i)): str(s) for t, i, s in zip(frame.task_id, frame.sample_idx, frame.status)}


def pages(*files: Path) -> int:
    """Bytes a tmpfs charges for these files (whole pages)."""
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-uc", script],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def outcome(folder: Path, name: str) -> tuple[int, str]:
    """Exit code and stderr of the command the script saved as ``name``."""
    return int((folder / f"{name}.rc").read_text()), (folder / f"{name}.err").read_text()


def evalkit_cmd(name: str, *args: str) -> str:
    """A line of shell that runs ``evalkit ARGS`` and keeps its stdout, stderr and exit code."""
    quoted = " ".join(f"'{a}'" for a in args)
    return f"'{sys.executable}' -m evalkit {quoted} >{name}.out 2>{name}.err; echo $? >{name}.rc"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run on a disk with room: the verdicts to get back, and the sizes of its files."""
    folder = tmp_path_factory.mktemp("clean")
    config = write_config(folder, folder / "runs")
    done = subprocess.run([sys.executable, "-m", "evalkit", "run", str(config), "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (folder / "runs").iterdir()
    assert set(verdicts(run_dir).values()) == {"passed", "failed"}
    return run_dir


def fill_then_resume(out: Path, size: int, config: Path, run_glob: str) -> str:
    """A script for `in_namespace`: mount a tmpfs of ``size`` bytes on ``out``, run ``config``
    into it until the disk fills, keep a copy of what is there (``on-full-disk``), grow the disk,
    resume the run (its folder's name is known only inside the namespace) and keep a copy
    (``resumed``)."""
    return f"""
mount -t tmpfs -o size={size // 1024}k tmpfs '{out}'
{evalkit_cmd("full", "run", str(config), "-q")}
mkdir on-full-disk; cp -a '{out}'/. on-full-disk/
mount -o remount,size=64m '{out}'
{evalkit_cmd("resume", "resume", "RUN_DIR", "-q")}
mkdir resumed; cp -a '{out}'/. resumed/
""".replace("'RUN_DIR'", f"\"$(ls -d '{out}'/{run_glob})\"")


def test_a_disk_that_fills_mid_run_stops_it_with_the_journal_intact_and_resume_finishes_it(tmp_path: Path, clean_run: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(tmp_path, out)
    start = pages(*(clean_run / name for name in ("config.yaml", "problems.jsonl", "plan.jsonl", ".lock"))) + 2 * pages(clean_run / "run.json")
    size = start + pages(clean_run / "samples.jsonl") // 2  # room for about half the verdicts
    done = in_namespace(fill_then_resume(out, size, config, "disk-*"), tmp_path)
    assert done.returncode == 0, done.stderr

    code, err = outcome(tmp_path, "full")
    (run_dir,) = (tmp_path / "on-full-disk").iterdir()
    real_dir = out / run_dir.name
    assert code == 3, err
    assert "free" in err and "may write about" in err  # warned at the start: the disk is smaller than the run
    assert f"cannot append to {real_dir / 'samples.jsonl'}: No space left on device (ENOSPC)" in err
    assert f"evalkit resume {real_dir}" in err and "Traceback" not in err
    journal = (run_dir / "samples.jsonl").read_bytes()
    assert journal.endswith(b"\n")  # no half line: the failed write was cut off
    journaled = [SampleResult.model_validate_json(line) for line in journal.splitlines()]
    assert 0 < len(journaled) < 2 * PROBLEMS
    expected = verdicts(clean_run)
    assert all(expected[r.key] == r.status for r in journaled)
    assert json.loads((run_dir / "run.json").read_text())["state"] in ("failed", "running")
    assert not (run_dir / "summary.json").exists()

    code, err = outcome(tmp_path, "resume")
    assert code == 0, err
    resumed = tmp_path / "resumed" / run_dir.name
    assert verdicts(resumed) == expected
    assert len((resumed / "samples.jsonl").read_bytes().splitlines()) == 2 * PROBLEMS  # the journaled ones were not run again


def test_a_disk_that_fills_while_the_run_writes_its_final_files_loses_nothing(tmp_path: Path, clean_run: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(tmp_path, out)
    journal = pages(*(clean_run / name for name in ("config.yaml", "problems.jsonl", "plan.jsonl", ".lock", "samples.jsonl")))
    size = journal + 2 * pages(clean_run / "run.json") + 64 * 1024  # every verdict fits; samples.parquet (1.3 MB) does not
    assert pages(clean_run / "samples.parquet") > 256 * 1024
    script = f"""
mount -t tmpfs -o size={size // 1024}k tmpfs '{out}'
{evalkit_cmd("full", "run", str(config), "-q")}
mkdir on-full-disk; cp -a '{out}'/. on-full-disk/
mount -o remount,size=64m '{out}'
{evalkit_cmd("report", "report", "RUN_DIR")}
mkdir reported; cp -a '{out}'/. reported/
""".replace("'RUN_DIR'", f"\"$(ls -d '{out}'/disk-*)\"")
    done = in_namespace(script, tmp_path)
    assert done.returncode == 0, done.stderr

    code, err = outcome(tmp_path, "full")
    (run_dir,) = (tmp_path / "on-full-disk").iterdir()
    assert code == 3, err
    assert f"cannot write {out / run_dir.name / 'samples.parquet'}: " in err and "(ENOSPC)" in err
    assert f"all {2 * PROBLEMS} verdicts are in the journal" in err and f"evalkit resume {out / run_dir.name}" in err
    assert json.loads((run_dir / "run.json").read_text())["state"] == "finished"  # every verdict is in: only files are missing
    assert len((run_dir / "samples.jsonl").read_bytes().splitlines()) == 2 * PROBLEMS
    leftovers = sorted(p.name for p in run_dir.iterdir())
    assert "summary.json" not in leftovers and not [name for name in leftovers if name.endswith(".tmp")]

    code, err = outcome(tmp_path, "report")
    assert code == 0, err
    assert verdicts(tmp_path / "reported" / run_dir.name) == verdicts(clean_run)


def test_a_read_only_or_full_output_folder_is_refused_before_any_work(tmp_path: Path, clean_run: Path) -> None:
    ro, full, nested = tmp_path / "ro", tmp_path / "full", tmp_path / "ro" / "sub"
    ro.mkdir()
    full.mkdir()
    configs = {name: write_config(tmp_path / name, folder) for name, folder in (("c-ro", ro), ("c-full", full), ("c-nested", nested))}
    run_copy = tmp_path / "ro-run"
    shutil.copytree(clean_run, run_copy)
    script = f"""
mount -t tmpfs -o size=1m,ro tmpfs '{ro}'
mount -t tmpfs -o size=64k tmpfs '{full}'
dd if=/dev/zero of='{full}/filler' bs=4k 2>/dev/null
mount --bind '{run_copy}' '{run_copy}' && mount -o remount,bind,ro '{run_copy}'
{evalkit_cmd("ro", "run", str(configs["c-ro"]))}
{evalkit_cmd("nested", "run", str(configs["c-nested"]))}
{evalkit_cmd("full", "run", str(configs["c-full"]))}
{evalkit_cmd("resume", "resume", str(run_copy))}
{evalkit_cmd("report", "report", str(run_copy))}
{evalkit_cmd("recheck", "recheck", str(run_copy))}
"""
    done = in_namespace(script, tmp_path)
    assert done.returncode == 0, done.stderr
    for name, folder, reason in (("ro", ro, "Read-only file system (EROFS)"), ("nested", nested, "Read-only file system (EROFS)"),
                                 ("full", full, "No space left on device (ENOSPC)")):
        code, err = outcome(tmp_path, name)
        assert code == 2, (name, err)
        assert f"'output_dir' names {folder}, where run folders cannot be written ({reason})" in err, (name, err)
        assert "Traceback" not in err and "Ray" not in err
    for name in ("resume", "report", "recheck"):
        code, err = outcome(tmp_path, name)
        assert code == 2, (name, err)
        assert err == f"evalkit: error: cannot write into the run folder {run_copy} (Read-only file system (EROFS))\n", name
    assert not list(full.iterdir())  # nothing left behind on the real disk under the mounts either


KEY_ENV = "EVALKIT_TEST_DISK_KEY"


def api_config(folder: Path, server: ModelServer, output: Path) -> Path:
    """A chat-model run of 16 problems, 2 samples each, whose raw replies carry 40 KB of prose
    after the code (stored in completions.jsonl and in the journal, never run)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "disk-api",
        "benchmark": {"name": "humaneval", "limit": PROBLEMS},
        "model": {"provider": "openai", "name": "test-model", "base_url": server.url + "/v1", "api_key_env": KEY_ENV,
                  "backoff_s": 0.01, "timeout_s": 10, "temperature": 0.8, "cache_dir": str(folder / "cache")},
        "sampling": {"n": 2, "k": [1]},
        "scheduler": {"workers": 2, "batch_size": 1},
        "output_dir": str(output),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def padded_replies(problems: list[evalkit.Problem]) -> Any:
    answer = humaneval_replies(problems)
    rng = random.Random(5)

    def reply(kind: Any, prompt: str, index: int) -> str:
        return answer(kind, prompt, index) + "\n\nNotes: " + rng.randbytes(20_000).hex() + "\n"  # one 40 KB token

    return reply


def test_a_disk_that_fills_while_a_model_api_answers_stops_the_run_and_resume_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-disk-test")
    problems = evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).problems()[:PROBLEMS]
    with ModelServer(api_key="sk-disk-test", reply=padded_replies(problems)) as server:
        clean = subprocess.run([sys.executable, "-m", "evalkit", "run", str(api_config(tmp_path / "clean", server, tmp_path / "clean" / "runs")), "-q"],
                               capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0, clean.stderr
        (clean_run,) = (tmp_path / "clean" / "runs").iterdir()
        names = ("config.yaml", "problems.jsonl", "plan.jsonl", ".lock")
        grown = pages(clean_run / "completions.jsonl", clean_run / "samples.jsonl")
        # room for a quarter of what the two journals grow to: the replies, arriving faster than
        # samples run, fill it first, mostly (either journal may be the one that fails)
        size = pages(*(clean_run / name for name in names)) + 2 * pages(clean_run / "run.json") + grown // 4
        out = tmp_path / "out"
        out.mkdir()
        done = in_namespace(fill_then_resume(out, size, api_config(tmp_path / "full", server, out), "disk-api-*"), tmp_path)
    assert done.returncode == 0, done.stderr
    code, err = outcome(tmp_path, "full")
    (run_dir,) = (tmp_path / "on-full-disk").iterdir()
    assert code == 3, err
    failed = "completions.jsonl" if "append to " + str(out / run_dir.name / "completions.jsonl") in err else "samples.jsonl"
    assert f"cannot append to {out / run_dir.name / failed}: No space left on device (ENOSPC)" in err, err
    assert f"evalkit resume {out / run_dir.name}" in err and "Traceback" not in err
    for name, record in (("completions.jsonl", evalkit.Generation), ("samples.jsonl", SampleResult)):
        data = (run_dir / name).read_bytes()
        assert data.endswith(b"\n") or not data, name
        for line in data.splitlines():
            record.model_validate_json(line)
    code, err = outcome(tmp_path, "resume")
    assert code == 0, err
    assert verdicts(tmp_path / "resumed" / run_dir.name) == verdicts(clean_run)
