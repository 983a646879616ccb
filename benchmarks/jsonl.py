"""Problems from a user's JSONL file in HumanEval's format (task_id, prompt, entry_point, test,
optional canonical_solution), checked the way HumanEval checks."""

from __future__ import annotations

from evalkit._benchmarks import Benchmark
from evalkit._errors import ConfigError
from evalkit._types import Problem

from ._loading import read_json_records
from .humaneval import humaneval_program, problem_from_record


class JsonlBenchmark(Benchmark):
    supports_strict = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path
        self._problems: list[Problem] | None = None

    def problems(self) -> list[Problem]:
        if self._problems is None:
            problems = [problem_from_record(r, self.path) for r in read_json_records(self.path)]
            seen: set[str] = set()
            for p in problems:
                if p.task_id in seen:
                    raise ConfigError(f"{self.path}: task_id {p.task_id!r} appears twice")
                seen.add(p.task_id)
            self._problems = problems
        return self._problems

    def program(self, problem: Problem, completion: str, *, strict: bool | None = None) -> str:
        return humaneval_program(problem, completion, strict=self.strict if strict is None else strict)
