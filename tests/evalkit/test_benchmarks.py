"""The benchmark registry, HumanEval's problems and programs, and JSONL problem files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit import Benchmark, BenchmarkConfig, ConfigError, benchmark_names, get_benchmark, load_config


def run_program(program: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a (trusted: canonical solutions only) program in a fresh interpreter."""
    path = tmp_path / "program.py"
    path.write_text(program, encoding="utf-8")
    return subprocess.run([sys.executable, "-I", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def record(i: int, **fields: object) -> dict[str, object]:
    values: dict[str, object] = {
        "task_id": f"Toy/{i}",
        "prompt": f"def add{i}(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
        "entry_point": f"add{i}",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "canonical_solution": "    return a + b\n",
    }
    values.update(fields)
    return values


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_humaneval_is_registered() -> None:
    assert "humaneval" in benchmark_names()


def test_humaneval_has_164_complete_problems_in_order(humaneval: Benchmark) -> None:
    problems = humaneval.problems()
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    for p in problems:
        assert p.prompt.strip() and p.test.strip() and p.entry_point.strip(), p.task_id
        assert p.canonical_solution and p.canonical_solution.strip(), p.task_id
        assert f"def {p.entry_point}" in p.prompt, p.task_id
        assert "def check(" in p.test, p.task_id
        assert p.language == "python"


def test_select_by_ids_keeps_the_benchmark_order(humaneval: Benchmark) -> None:
    picked = humaneval.select(["HumanEval/10", "HumanEval/2", "HumanEval/163"], None)
    assert [p.task_id for p in picked] == ["HumanEval/2", "HumanEval/10", "HumanEval/163"]


def test_select_with_limit(humaneval: Benchmark) -> None:
    assert [p.task_id for p in humaneval.select(None, 3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert [p.task_id for p in humaneval.select(["HumanEval/7", "HumanEval/5", "HumanEval/9"], 2)] == ["HumanEval/5", "HumanEval/7"]
    assert len(humaneval.select(None, 1000)) == 164
    assert len(humaneval.select(None, None)) == 164


def test_select_an_unknown_id_names_it(humaneval: Benchmark) -> None:
    with pytest.raises(ConfigError, match=r"'HumanEval/164'"):
        humaneval.select(["HumanEval/3", "HumanEval/164"], None)


def test_program_is_prompt_completion_test_and_check_call(humaneval: Benchmark) -> None:
    problem = humaneval.problems()[5]
    completion = "    return []\n"
    expected = problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})\n"
    assert humaneval.program(problem, completion) == expected


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/53", "HumanEval/163"])
def test_canonical_solution_programs_pass(humaneval: Benchmark, tmp_path: Path, task_id: str) -> None:
    (problem,) = humaneval.select([task_id], None)
    assert problem.canonical_solution is not None
    proc = run_program(humaneval.program(problem, problem.canonical_solution), tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_wrong_completion_fails_with_an_assertion(humaneval: Benchmark, tmp_path: Path) -> None:
    (problem,) = humaneval.select(["HumanEval/0"], None)  # has_close_elements
    proc = run_program(humaneval.program(problem, "    return False\n"), tmp_path)
    assert proc.returncode != 0
    assert "AssertionError" in proc.stderr


def test_jsonl_problems_file_loads(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0), record(1, canonical_solution=None, difficulty="easy"), record(2)])
    benchmark = get_benchmark(BenchmarkConfig(path=str(path)))
    problems = benchmark.problems()
    assert [p.task_id for p in problems] == ["Toy/0", "Toy/1", "Toy/2"]
    assert problems[0].entry_point == "add0"
    assert problems[0].canonical_solution == "    return a + b\n"
    assert problems[1].canonical_solution is None
    assert problems[1].metadata.get("difficulty") == "easy"
    assert [p.task_id for p in benchmark.select(["Toy/2", "Toy/0"], 1)] == ["Toy/0"]


def test_jsonl_problems_file_named_in_a_config(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "toy.jsonl", [record(0), record(1)])
    config_path = tmp_path / "eval.yaml"
    config_path.write_text("benchmark:\n  path: toy.jsonl\nmodel:\n  provider: reference\n", encoding="utf-8")
    benchmark = get_benchmark(load_config(config_path).benchmark)
    assert [p.task_id for p in benchmark.problems()] == ["Toy/0", "Toy/1"]


def test_jsonl_programs_run_like_humaneval(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0)])
    benchmark = get_benchmark(BenchmarkConfig(path=str(path)))
    (problem,) = benchmark.problems()
    assert run_program(benchmark.program(problem, "    return a + b\n"), tmp_path).returncode == 0
    failing = run_program(benchmark.program(problem, "    return a - b\n"), tmp_path)
    assert failing.returncode != 0 and "AssertionError" in failing.stderr


def test_jsonl_duplicate_task_id_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", [record(0), record(1), record(0, prompt="def add0(a, b):\n")])
    with pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    message = str(info.value)
    assert str(path) in message and "'Toy/0'" in message and "twice" in message


@pytest.mark.parametrize("field", ["task_id", "prompt", "entry_point", "test"])
def test_jsonl_problem_missing_a_field_is_an_error(tmp_path: Path, field: str) -> None:
    broken = {k: v for k, v in record(1).items() if k != field}
    path = write_jsonl(tmp_path / "missing.jsonl", [record(0), broken, record(2)])
    with pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    message = str(info.value)
    assert str(path) in message and field in message
    if field != "task_id":
        assert "'Toy/1'" in message


def test_jsonl_file_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record(0)) + "\nthis is not JSON\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read problems from") as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("empty.jsonl.gz", gzip.compress(b""))])
def test_empty_jsonl_file_is_an_error_saying_why(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    message = str(info.value)
    assert str(path) in message
    assert "holds no records" in message


def test_missing_jsonl_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    assert str(path) in str(info.value)


def test_unknown_benchmark_lists_the_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(name="humaneval-plus-plus"))
    message = str(info.value)
    assert "'humaneval-plus-plus'" in message
    assert all(name in message for name in benchmark_names())
    assert "path" in message
