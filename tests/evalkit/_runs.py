"""Two small runs whose differences are known, from samples files of HumanEval reference solutions.

Run A (the baseline) solves HumanEval/0-7 except HumanEval/7; run B breaks HumanEval/0, 1 and 2
and fixes HumanEval/7. So B regressed on exactly three problems and improved on exactly one.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

import evalkit

PROBLEMS = 8
BROKEN_IN_A = {"HumanEval/7"}
BROKEN_IN_B = {"HumanEval/0", "HumanEval/1", "HumanEval/2"}
BROKEN = "    return None\n"  # runs, and fails the tests


def reference_problems(count: int = PROBLEMS) -> list[evalkit.Problem]:
    return evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(None, count)


def write_samples(path: Path, broken: Collection[str], count: int = PROBLEMS, n: int = 1) -> Path:
    """A samples file: n copies of each problem's reference solution, or of `BROKEN` for ``broken``."""
    lines = []
    for problem in reference_problems(count):
        completion = BROKEN if problem.task_id in broken else problem.canonical_solution
        lines.extend(json.dumps({"task_id": problem.task_id, "completion": completion}) + "\n" for _ in range(n))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_config(folder: Path, name: str, broken: Collection[str], *, count: int = PROBLEMS, **extra: Any) -> Path:
    """``folder/NAME.yaml`` evaluating ``folder/NAME.jsonl`` (written too); runs go to ``folder/runs``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = write_samples(folder / f"{name}.jsonl", broken, count)
    config: dict[str, Any] = {
        "name": name,
        "benchmark": {"name": "humaneval", "limit": count},
        "model": {"provider": "samples", "path": samples.name},
        "output_dir": str(folder / "runs"),
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
