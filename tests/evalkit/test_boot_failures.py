"""Sandboxes that fail to start inside a run: every sample ends infra_error (never failed), the
run exits 3, and its last lines say why.

A sandbox that cannot start on the machine running ``evalkit run`` stops the run before it
begins (`evalkit._runner.check_sandbox`). Inside a run it happens where the workers are: on a
cluster's node whose template cache is damaged. So these tests start a Ray cluster of their
own, whose workers see a copy of the template cache with one file truncated, and point
``scheduler.address`` at it; ``evalkit run`` itself sees the sound cache, so its start-up
check passes. The copy is made of hard links, except the damaged file, which is a new file:
the shared cache is never written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpool._templates import BuiltTemplate, cached

from .test_run import write_config

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes")]

# token authentication off: a throwaway cluster on this host, joined by one driver
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
CLUSTER = """
import logging, sys
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, object_store_memory=256 * 2**20)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@contextlib.contextmanager
def ray_cluster(env: dict[str, str]) -> Iterator[str]:
    """A separate local Ray cluster whose workers run with ``env`` added; yields its address."""
    process = subprocess.Popen([sys.executable, "-c", CLUSTER], env={**os.environ, **RAY_ENV, **env},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        address = process.stdout.readline().strip()
        assert address, "the test cluster did not start"
        yield address
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def damaged_cache(template: BuiltTemplate, damaged: Path) -> Iterator[Path]:
    """A template cache holding ``template`` (hard links) with ``damaged`` (a file of it)
    replaced by its first 4 KiB. Not under pytest's tmp_path: the sandbox's uid must be able
    to reach it, and pytest's folders are private."""
    cache = Path(tempfile.mkdtemp(prefix="evalkit-damaged-cache-"))
    try:
        cache.chmod(0o755)
        copy = cache / "templates" / template.dir.name
        copy.parent.mkdir(mode=0o755)
        subprocess.run(["cp", "-al", str(template.dir), str(copy)], check=True)
        target = copy / damaged.relative_to(template.dir)
        head = damaged.read_bytes()[:4096]
        target.unlink()  # the link only: the shared cache keeps its file
        target.write_bytes(head)
        shutil.copymode(damaged, target)
        assert damaged.stat().st_size > 4096
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def evalkit_run(tmp_path: Path, address: str, sandbox: dict[str, object]) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, benchmark={"name": "humaneval", "limit": 3}, sandbox=sandbox,
                          scheduler={"address": address, "workers": 2, "batch_size": 2, "max_retries": 1})
    return subprocess.run([sys.executable, "-m", "evalkit", "run", "-q", str(config)], cwd=tmp_path,
                          env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=300)


def check_every_sample_is_infra_error(tmp_path: Path, proc: subprocess.CompletedProcess[str], cause: str) -> None:
    """Exit 3; the last lines name the causes, each "sandbox failed to start: <cause>...", with
    counts that add up to the 3 samples; summary.json and the report say the same."""
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("3 sample(s) infra_error:"))
    first = lines[start].removeprefix("3 sample(s) infra_error:").strip()  # the cause, if there is only one
    named = ([first] if first else []) + [line.strip() for line in lines[start + 1:-1]]
    counts = [int(line.split(" x ", 1)[0]) for line in named]
    assert sum(counts) == 3 and all(line.split(" x ", 1)[1].startswith(f"sandbox failed to start: {cause}") for line in named), lines
    assert "; most: " in lines[-1] and " x sandbox failed to start: " in lines[-1] and lines[-1].endswith(")"), lines[-1]
    [run] = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"] == {"passed": 0, "failed": 0, "timeout": 0, "oom": 0, "infra_error": 3}
    infrastructure = summary["infrastructure"]
    assert sum(c["count"] for c in infrastructure["infra_error_causes"]) == 3
    assert all(c["cause"].startswith("sandbox failed to start: ") for c in infrastructure["infra_error_causes"])
    assert infrastructure["sandbox_start_failures"] >= 3 * 2  # each sample tried max_retries + 1 starts
    assert infrastructure["sandboxes_started"] == 0 and infrastructure["worker_failures"] == 0
    assert "sandbox failed to start" in (run / "report.html").read_text()


def test_bwrap_sandboxes_whose_python_is_broken_fail_every_sample_as_infra_error(tmp_path: Path) -> None:
    template = cached("base")
    if template is None:
        pytest.skip("needs the 'base' template built (vmpool template build base)")
    python = (template.tree / "usr/bin/python3").resolve()
    with damaged_cache(template, python) as cache, ray_cluster({"VMPOOL_CACHE_DIR": str(cache)}) as address:
        proc = evalkit_run(tmp_path, address, {"driver": "bwrap", "template": "base", "timeout_s": 5})
    check_every_sample_is_infra_error(tmp_path, proc, "SandboxError: ")


@pytest.mark.microvm
@pytest.mark.usefixtures("microvm")
def test_microvms_that_cannot_boot_fail_every_sample_as_infra_error(tmp_path: Path) -> None:
    template = cached("base")
    assert template is not None  # the microvm fixture skips otherwise
    with damaged_cache(template, template.kernel) as cache, ray_cluster({"VMPOOL_CACHE_DIR": str(cache)}) as address:
        proc = evalkit_run(tmp_path, address, {"driver": "microvm", "timeout_s": 5})
    check_every_sample_is_infra_error(tmp_path, proc, "SandboxError: ")
    assert "invalid kernel header" in proc.stdout  # QEMU's own words
