"""Does generation overlap execution? (not a test; run it by hand):

    .venv/bin/python -m tests.evalkit.bench_generation [LATENCY_S] [CONCURRENCY] [N]

A model server on 127.0.0.1 answers every HumanEval prompt after LATENCY_S (default 0.25 s),
with CONCURRENCY requests in flight (default 4) and N samples per problem (default 1). It runs,
side by side in one process and one Ray instance: the model-API run (generation and execution
overlapping), and the same completions from a samples file (execution alone). Without overlap
the API run would take about generation + execution.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

import evalkit

from .model_server import Fault, ModelServer, humaneval_replies


def main(latency_s: float, concurrency: int, n: int) -> None:
    import ray

    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).problems()
    os.environ["BENCH_KEY"] = "bench"
    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp, ModelServer(api_key="bench", reply=humaneval_replies(problems), fault=lambda *_: Fault(delay_s=latency_s)) as server:
        base = {"name": "bench", "benchmark": {"name": "humaneval"}, "sampling": {"n": n, "k": [1]}, "output_dir": f"{tmp}/runs"}
        model = {"provider": "openai", "name": "m", "base_url": server.url + "/v1", "api_key_env": "BENCH_KEY", "concurrency": concurrency,
                 "max_n_per_request": 1, "temperature": 0.8, "cache": False}
        api_config = Path(tmp, "api.yaml")
        api_config.write_text(yaml.safe_dump({**base, "model": model}))
        started = time.monotonic()
        outcome = evalkit.run(api_config, progress=False)
        api_s = time.monotonic() - started
        arrivals = [r.arrived for r in server.requests]
        generation_s = max(arrivals) + latency_s - min(arrivals)
        samples = Path(tmp, "samples.jsonl")
        lines = (outcome.run_dir / "completions.jsonl").read_text().splitlines()
        samples.write_text("".join(json.dumps({"task_id": g["task_id"], "completion": g["completion"]}) + "\n" for g in map(json.loads, lines)))
        file_config = Path(tmp, "file.yaml")
        file_config.write_text(yaml.safe_dump({**base, "model": {"provider": "samples", "path": str(samples)}}))
        started = time.monotonic()
        evalkit.run(file_config, progress=False)
        execution_s = time.monotonic() - started
    ray.shutdown()
    total = len(lines)
    print(f"{total} samples, API latency {latency_s:.2f} s, concurrency {concurrency}, {os.cpu_count()} CPUs")
    print(f"generation alone (first request to last reply): {generation_s:6.1f} s")
    print(f"execution alone (samples file):                 {execution_s:6.1f} s")
    print(f"model-API run (overlapping):                    {api_s:6.1f} s")
    print(f"sum of the two:                                 {generation_s + execution_s:6.1f} s; the API run takes {api_s / (generation_s + execution_s):.2f} of it")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 0.25, int(args[1]) if len(args) > 1 else 4, int(args[2]) if len(args) > 2 else 1)
