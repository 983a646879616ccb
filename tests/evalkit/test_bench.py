"""`evalkit bench --drivers` and `--safety`: the same HumanEval samples timed with each sandbox
driver, or with each setting of the checks that guard verdicts.
Figures are not checked (they depend on the host), only that each line is printed and that
the samples got the verdicts they must."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmpool import get_driver

EVALKIT = [sys.executable, "-m", "evalkit"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVALKIT, "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("drivers", ["nosuch", "bwrap,bwrap", ",", "bwrap,auto"])
def test_bench_drivers_rejects_bad_lists(drivers: str, tmp_path: Path) -> None:
    proc = bench("--drivers", drivers, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Invalid value for '--drivers'" in proc.stderr and "known: bwrap, microvm" in proc.stderr


def test_bench_drivers_refuses_a_driver_that_cannot_run_here(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()  # a PATH without QEMU
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    proc = subprocess.run([*EVALKIT, "bench", "--drivers", "microvm"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("evalkit bench: sandbox driver 'microvm' cannot run here: QEMU")


def _check_output(stdout: str, drivers: list[str]) -> None:
    lines = stdout.splitlines()
    assert lines[0].startswith("machine: ")
    assert "samples: 164 (HumanEval canonical solutions, n=1 per problem)" in stdout
    for driver in drivers:
        assert any(line.startswith(f"sandbox {driver}: ") for line in lines), stdout
        whole = next(line for line in lines if line.startswith(f"evalkit on {driver} (whole command):"))
        assert whole.endswith("pass@1=1.0000"), whole
    assert stdout.count(" workers starting and running samples:") == len(drivers)


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.ray
@pytest.mark.usefixtures("sandboxes")
def test_bench_drivers_bwrap(tmp_path: Path) -> None:
    proc = bench("--drivers", "bwrap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_output(proc.stdout, ["bwrap"])
    assert "ratio" not in proc.stdout


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.ray
@pytest.mark.microvm
@pytest.mark.usefixtures("sandboxes")
def test_bench_drivers_bwrap_microvm(tmp_path: Path) -> None:
    reason = get_driver("microvm").available()
    if reason is not None:
        pytest.skip("needs the microvm driver: %s" % reason)
    proc = bench("--drivers", "bwrap,microvm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_output(proc.stdout, ["bwrap", "microvm"])
    assert proc.stdout.splitlines()[-1].startswith("ratio microvm/bwrap in samples/s: ")


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.ray
@pytest.mark.usefixtures("sandboxes")
def test_bench_safety_times_each_setting_of_the_verdict_checks_on_the_same_samples(tmp_path: Path) -> None:
    proc = bench("--safety", "--n", "2", "--drivers", "bwrap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    assert lines[1] == "samples: 328 (HumanEval, per problem 1 canonical solutions and 1 that fail), the same for each setting"
    labels = ["no canaries, no re-check:", "canaries (every 50 samples):", "canaries + re-check of failures (default):", "default + calibrated time limits:"]
    assert [line.split(":")[0] + ":" for line in lines[2:]] == labels, proc.stdout
    assert all(line.endswith("pass@1=0.5000") for line in lines[2:]), proc.stdout  # every failure stays a failure
    assert "(1.00x)" in lines[2]
