"""`vmpool bench` runs for real and prints its lines; its figures are not checked (they are
for humans, and depend on the host)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vmpool import get_driver
from vmpool._cli import cli
from vmpool._vm_accel import accelerator


def _bench(*args: str) -> list[str]:
    result = CliRunner().invoke(cli, ["bench", "--repeat", "1", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.splitlines()


def _has(lines: list[str], *starts: str) -> None:
    for start in starts:
        assert any(line.lstrip().startswith(start) for line in lines), (start, lines)


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_bench_bwrap() -> None:
    lines = _bench("--driver", "bwrap")
    assert lines[0].startswith("machine: ") and " CPUs (" in lines[0] and "accelerator: " in lines[0]
    assert lines[1].startswith("settings: 1 repetition(s), 20 programs, concurrent starts: 4, 8")
    assert lines[2].startswith("bwrap: namespaces")
    _has(lines, "start to ready (create):", "first program after the start:",
         "print(1) on a warm sandbox:", "host memory, whole process tree:", "4 concurrent starts:",
         "8 concurrent starts:")
    assert not any("cold boot" in line or "microvm" in line for line in lines)


@pytest.mark.microvm
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes")
def test_bench_microvm_and_ratios() -> None:
    reason = get_driver("microvm").available()
    if reason is not None:
        pytest.skip("needs the microvm driver: %s" % reason)
    lines = _bench("--driver", "all", "--programs", "3", "--concurrency", "2")
    if not accelerator().hardware:  # the accelerator VMs really use here
        assert "TCG emulation" in lines[0]
    microvm = lines.index(next(line for line in lines if line.startswith("microvm: microVM (QEMU")))
    _has(lines[microvm:], "cold boot to ready (no snapshot):", "start to ready (create):",
         "print(1) on a warm sandbox:", "host memory, QEMU process:", "host memory, whole process tree:",
         "2 concurrent starts:", "microvm / bwrap (medians, this run):", "start to ready:",
         "host memory (PSS, whole tree):", "2 concurrent starts, all ready:")


@pytest.mark.parametrize("args", [["--driver", "nosuch"], ["--repeat", "0"], ["--concurrency", "4,-1"]])
def test_bench_bad_arguments(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr.startswith("vmpool bench: error: ") and len(result.stderr.splitlines()) == 1
