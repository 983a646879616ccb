"""Strict mode's check of results (`evalkit._strict`), as the program defines it, and programs
assembled in strict mode run for real in a sandbox."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import evalkit
from evalkit import Benchmark, BenchmarkConfig, ConfigError, Problem, get_benchmark, load_config
from evalkit._strict import STRICT_NAME, strict_prologue
from evalkit.benchmarks.humaneval import humaneval_program
from vmpool import Limits, LocalSandbox

from .test_benchmarks import record, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def strict_maker() -> Callable[[Callable[..., Any], str], Callable[..., Any]]:
    """The wrapper maker exactly as a strict program defines it (our own code, run here)."""
    namespace: dict[str, Any] = {}
    exec(compile(strict_prologue(), "<prologue>", "exec"), namespace)
    maker: Callable[[Callable[..., Any], str], Callable[..., Any]] = namespace[STRICT_NAME]
    return maker


def returning(value: object) -> Callable[[], object]:
    return strict_maker()(lambda: value, "f")


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class EqualInt(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class ClaimsToBeInt(AlwaysEqual):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return int


class EqualToEveryType(type):
    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(int)


class PosesAsInt(metaclass=EqualToEveryType):
    pass


def cyclic() -> list[object]:
    items: list[object] = [1, "a"]
    items.append(items)
    return items


@pytest.mark.parametrize("value", [
    None, True, 0, -(2**100), 1.5, float("nan"), 2j, "s", b"b", [], (), {}, set(), frozenset(),
    [1, (2.0, "x"), {"k": [None, b"v"]}, {3, 4}, frozenset({(5, 6)})], {(1, 2): {"a": {1j}}}, cyclic(),
], ids=repr)
def test_plain_values_pass_unchanged(value: object) -> None:
    assert returning(value)() is value


@pytest.mark.parametrize(("value", "where", "kind"), [
    (AlwaysEqual(), "result", "AlwaysEqual"),
    (EqualInt(3), "result", "EqualInt"),
    ([1, 2, EqualInt(3)], "result[2]", "EqualInt"),
    ({"a": (1, AlwaysEqual())}, "result['a'][1]", "AlwaysEqual"),
    ({AlwaysEqual(): 1}, "a key of result", "AlwaysEqual"),
    ({1, AlwaysEqual()}, "an element of result", "AlwaysEqual"),
    (ClaimsToBeInt(), "result", "ClaimsToBeInt"),  # isinstance(x, int) is True for it
    (PosesAsInt(), "result", "PosesAsInt"),  # its type == int and hashes like int
    (type("Listy", (list,), {})([1]), "result", "Listy"),
    (range(3), "result", "range"),
    ((x for x in [1]), "result", "generator"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_anything_else_fails_naming_its_type_and_place(value: object, where: str, kind: str) -> None:
    with pytest.raises(BaseException, match=r"strict mode: f returned a \S+ at ") as caught:
        returning(value)()
    assert type(caught.value).__name__ == "StrictModeError"
    assert not isinstance(caught.value, Exception), "a test's `except Exception` must not swallow it"
    assert f"returned a {kind} at {where}, not a plain built-in value" in str(caught.value)


def test_rebinding_builtins_after_the_prologue_changes_nothing() -> None:
    # the program's own builtins (a copy here, so that this process's stay intact), rebound the
    # way a completion could after the check was defined
    own_builtins = dict(vars(builtins))
    namespace: dict[str, Any] = {"__builtins__": own_builtins}
    exec(compile(strict_prologue(), "<prologue>", "exec"), namespace)
    maker = namespace[STRICT_NAME]
    own_builtins.update(type=lambda *args: int, isinstance=lambda *args: True, repr=lambda *args: "1",
                        id=lambda *args: 0, enumerate=lambda *args: iter(()))
    wrapped = maker(lambda: [1, [2, AlwaysEqual()]], "f")
    with pytest.raises(BaseException, match=r"returned a AlwaysEqual at result\[1\]\[1\]"):
        wrapped()
    assert maker(lambda: [[1], [2]], "f")() == [[1], [2]]


def test_the_wrapper_passes_arguments_and_exceptions_through() -> None:
    wrapped = strict_maker()(lambda a, b=0, *, c: [a, b, c], "f")
    assert wrapped(1, c=3) == [1, 0, 3]
    with pytest.raises(ZeroDivisionError):
        strict_maker()(lambda: 1 / 0, "f")()


def test_strict_config_reaches_the_benchmark(tmp_path: Path) -> None:
    assert get_benchmark(BenchmarkConfig(name="humaneval")).strict is False
    assert get_benchmark(BenchmarkConfig(name="humaneval", strict=True)).strict is True
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0)])
    assert get_benchmark(BenchmarkConfig(path=str(path), strict=True)).strict is True


class Plain(Benchmark):
    """A benchmark whose programs have no strict mode."""

    name = "plain"

    def problems(self) -> list[Problem]:
        return []

    def program(self, problem: Problem, completion: str) -> str:
        return completion


def test_a_benchmark_without_strict_mode_refuses_it() -> None:
    from evalkit import _benchmarks

    _benchmarks._BUILTIN["plain-test"] = f"{__name__}:Plain"  # as a plug-in would be found
    try:
        with pytest.raises(ConfigError, match="benchmark 'plain' has no strict mode"):
            get_benchmark(BenchmarkConfig(name="plain-test", strict=True))
        assert get_benchmark(BenchmarkConfig(name="plain-test")).strict is False
    finally:
        del _benchmarks._BUILTIN["plain-test"]


# Programs, run in a real sandbox -----------------------------------------------------------


ALWAYS_EQUAL = "\n\nclass _AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
# (completion of HumanEval/100, make_a_pile, which returns a list; status without, with strict mode)
STRICT_CASES = {
    "correct": ("    return [n + 2*i for i in range(n)]\n", "ok", "ok"),
    "wrong": ("    return [n + i for i in range(n)]\n", "error", "error"),
    "always_equal": ("    return _AlwaysEqual()\n" + ALWAYS_EQUAL, "ok", "error"),
    "list_of_always_equal": ("    return [_AlwaysEqual()] * n\n" + ALWAYS_EQUAL, "ok", "error"),
    "rebinds_type": ("    import builtins\n    builtins.type = lambda *a: list\n    return _AlwaysEqual()\n" + ALWAYS_EQUAL, "ok", "error"),
}


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_strict_programs_in_a_sandbox(humaneval: Benchmark, tmp_path: Path) -> None:
    (problem,) = humaneval.select(["HumanEval/100"], None)
    start = problem.prompt.index("def make_a_pile(")
    whole = "from __future__ import annotations\n" + problem.prompt[start:] + (problem.canonical_solution or "")
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0, prompt='"""Toy."""\nfrom __future__ import annotations\n\ndef add0(a: int, b: int) -> int:\n    """Add."""\n')])
    toys = get_benchmark(BenchmarkConfig(path=str(path), strict=True))
    (toy,) = toys.problems()
    failures = []
    with LocalSandbox.create(driver="bwrap") as sandbox:
        for name, (completion, lax, strict) in STRICT_CASES.items():
            for mode, expected in ((False, lax), (True, strict)):
                result = sandbox.run_program(humaneval_program(problem, completion, strict=mode), Limits(wall_time_s=10))
                message = result.error or ""
                if result.status != expected or (mode and name not in ("correct", "wrong") and "StrictModeError: strict mode: make_a_pile returned a _AlwaysEqual at result" not in message):
                    failures.append((name, mode, result.status, message))
        # the check goes after a module docstring and future imports, which must stay first
        program = humaneval_program(problem, whole, strict=True)
        assert program.startswith("from __future__ import annotations\ndef evalkit_strict_mode(")
        assert toys.program(toy, "").startswith('"""Toy."""\nfrom __future__ import annotations\ndef evalkit_strict_mode(')
        for name, program in [("future_whole_function", program), ("future_in_prompt", toys.program(toy, "    return a + b\n"))]:
            result = sandbox.run_program(program, Limits(wall_time_s=10))
            if result.status != "ok":
                failures.append((name, True, result.status, result.error or ""))
    assert failures == []
    assert humaneval_program(toy, "    return a + b\n") == toy.prompt + "    return a + b\n\n" + toy.test + "\ncheck(add0)\n"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_all_164_reference_solutions_pass_in_strict_mode(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "humaneval.yaml")
    config = config.model_copy(update={"output_dir": str(tmp_path), "benchmark": config.benchmark.model_copy(update={"strict": True})})
    outcome = evalkit.run(config, progress=False)
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    assert outcome.exit_code == 0
    assert len(frame) == 164 and frame["passed"].all(), frame[~frame["passed"]][["task_id", "error"]].to_string()
    assert "strict: true" in (outcome.run_dir / "config.yaml").read_text()
