"""Fixtures shared by evalkit's unit tests: the HumanEval benchmark (loaded once) and a
factory of `SampleResult`s."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evalkit import Benchmark, BenchmarkConfig, SampleResult, get_benchmark

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the Arrow copy `datasets` caches of every problems file a test writes out of
    ~/.cache/huggingface (read when `datasets` is imported, so only if it is not yet)."""
    if "datasets" in sys.modules:
        yield
        return
    saved = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-datasets-cache"))
    yield
    if saved is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = saved


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def humaneval() -> Benchmark:
    """HumanEval with its problems already read (reading them through `datasets` costs ~1 s)."""
    benchmark = get_benchmark(BenchmarkConfig(name="humaneval"))
    benchmark.problems()
    return benchmark


MakeResult = Callable[..., SampleResult]


@pytest.fixture
def make_result() -> MakeResult:
    """``make_result(task_id, sample_idx, status, **fields)``: a result with plausible defaults."""

    def make(task_id: str, sample_idx: int = 0, status: str = "passed", **fields: Any) -> SampleResult:
        values: dict[str, Any] = {
            "task_id": task_id,
            "sample_idx": sample_idx,
            "completion": f"    return {sample_idx}\n",
            "status": status,
            "passed": status == "passed",
            "duration_s": 0.25,
            "driver": "bwrap",
            "isolation": "namespaces",
        }
        if status not in ("passed", "infra_error"):
            values["error"] = f"{status} on purpose"
            values["exit_code"] = 1
        values.update(fields)
        return SampleResult(**values)

    return make
