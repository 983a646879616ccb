"""The benchmark registry, HumanEval's problems and programs (from continuations and from whole
functions extracted from chat replies), and JSONL problem files."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit import Benchmark, BenchmarkConfig, ConfigError, Problem, benchmark_names, get_benchmark, load_config
from evalkit._extract import extract_code
from evalkit._pycode import parse_module
from evalkit.benchmarks.humaneval import _ends_with, prompt_preamble
from vmpool import LocalSandbox


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


# Programs from whole-function completions (chat replies) -----------------------------------


def definition_start(problem: Problem) -> int:
    """Offset of the entry point's ``def`` line in the prompt (HumanEval's are undecorated)."""
    return [m.start() for m in re.finditer(rf"^def {problem.entry_point}\(", problem.prompt, re.MULTILINE)][-1]


def test_a_whole_function_follows_the_prompts_preamble_not_its_stub(humaneval: Benchmark) -> None:
    (problem,) = humaneval.select(["HumanEval/10"], None)  # make_palindrome, after is_palindrome
    whole = problem.prompt[definition_start(problem) :] + (problem.canonical_solution or "")
    program = humaneval.program(problem, whole)
    preamble = problem.prompt[: definition_start(problem)]
    assert "def is_palindrome" in preamble and "def make_palindrome" not in preamble
    assert program == preamble + whole + "\n" + problem.test + "\ncheck(make_palindrome)\n"
    assert prompt_preamble(problem.prompt, problem.entry_point) == preamble


def test_a_continuation_or_other_code_follows_the_whole_prompt(humaneval: Benchmark) -> None:
    (problem,) = humaneval.select(["HumanEval/10"], None)
    for completion in ["    return string\n", "", "print('hi')\n", "def other():\n    pass\n", "def make_palindrome(:\n"]:
        assert humaneval.program(problem, completion).startswith(problem.prompt + completion), repr(completion)


def test_prompt_preamble_of_other_prompts() -> None:
    decorated = "import functools\n\n@functools.cache\n@other\ndef f(n):\n    \"\"\"Doc.\"\"\"\n"
    assert prompt_preamble(decorated, "f") == "import functools\n\n"
    no_body = "import math\nBASE = 3\n@functools.cache\ndef f(n):\n"
    assert prompt_preamble(no_body, "f") == "import math\nBASE = 3\n"
    assert prompt_preamble("import math\n\nclass Solution:\n    def f(self): ...\n", "f") == "import math\n\nclass Solution:\n    def f(self): ...\n"
    assert prompt_preamble("Write a function f that adds (two numbers.", "f") == ""
    two = 'def f(x):\n    """First."""\n\ndef g(x):\n    return f(x)\n\ndef f(x):\n    """Again."""\n'
    assert prompt_preamble(two, "f") == 'def f(x):\n    """First."""\n\ndef g(x):\n    return f(x)\n\n'


def test_future_imports_of_a_whole_function_go_first(humaneval: Benchmark, tmp_path: Path) -> None:
    (problem,) = humaneval.select(["HumanEval/0"], None)  # its prompt imports typing.List
    whole = "from __future__ import annotations\n" + problem.prompt[definition_start(problem) :] + (problem.canonical_solution or "")
    program = humaneval.program(problem, whole)
    assert program.startswith("from __future__ import annotations\nfrom typing import List\n\n\ndef has_close_elements(")
    assert program.count("from __future__") == 1
    assert run_program(program, tmp_path).returncode == 0


def test_jsonl_programs_take_whole_functions_too(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0, prompt="import operator\n\ndef add0(a, b):\n    \"\"\"Add.\"\"\"\n")])
    benchmark = get_benchmark(BenchmarkConfig(path=str(path)))
    (problem,) = benchmark.problems()
    program = benchmark.program(problem, "def add0(a, b):\n    return operator.add(a, b)\n")
    assert program.startswith("import operator\n\ndef add0(a, b):\n    return operator.add(a, b)\n")
    assert run_program(program, tmp_path).returncode == 0


def restated(problem: Problem) -> str:
    """The prompt restated with the canonical solution: imports, helpers and the function."""
    return problem.prompt.strip("\n") + "\n" + (problem.canonical_solution or "")


def draft(problem: Problem) -> str:
    """The entry point, unfinished: a wrong solution that parses."""
    return problem.prompt[definition_start(problem) :] + '    raise NotImplementedError("draft")\n'


def replies(problem: Problem) -> dict[str, str]:
    """Chat-style replies built from the canonical solution, as models write them: each must pass."""
    solution = problem.canonical_solution or ""
    full = restated(problem)
    function = problem.prompt[definition_start(problem) :] + solution  # just the function
    ep = problem.entry_point
    return {
        "prose_and_block": f"Sure! Here is the implementation:\n\n```python\n{full}```\n\nIt handles the edge cases too.",
        "think_function_demo": (
            f"<think>\nLet me try a first idea.\n```python\n{draft(problem)}```\nThat is not finished.\n</think>\n\n"
            f"Usage:\n```python\nprint({ep}())\n```\n\nThe solution:\n```python\nfrom __future__ import annotations\n\n{function}\n\n"
            f"print({ep}())\nassert {ep} is not None\n\nif __name__ == \"__main__\":\n    print({ep}(input()))\n```\n"
        ),
        "unfenced": f"Here is the code:\n{full}\nThis is the whole solution; it's short.\n",
        "body_only": f"Replace the stub's body with:\n```python\n{solution}```",
        "think_then_body": f"The opening tag was stripped.\n```python\n{draft(problem)}```\n</think>\nThe body:\n```python\n{solution}```",
        "tilde_crlf": f"~~~py\n{full}~~~\nDone.\n".replace("\n", "\r\n"),
        "draft_then_fix": f"```python\n{draft(problem)}```\nOops, fixed:\n```python\n{full}```",
        "truncated": f"```python\n{full}",
    }


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_every_problem_passes_from_chat_replies_in_a_sandbox(humaneval: Benchmark) -> None:
    failures: list[tuple[str, str, str, str | None]] = []
    with LocalSandbox.create(driver="bwrap") as sandbox:
        for problem in humaneval.problems():
            for style, reply in replies(problem).items():
                result = sandbox.run_program(humaneval.program(problem, extract_code(reply, problem.entry_point)))
                if result.status != "ok":
                    failures.append((problem.task_id, style, result.status, result.error))
            # control: with the draft last, the draft is what runs, and the tests find it wrong
            fix_then_draft = f"```python\n{restated(problem)}```\nShorter:\n```python\n{draft(problem)}```"
            result = sandbox.run_program(humaneval.program(problem, extract_code(fix_then_draft, problem.entry_point)))
            if result.status != "error" or "NotImplementedError: draft" not in (result.error or ""):
                failures.append((problem.task_id, "fix_then_draft", result.status, result.error))
    assert failures == []


# Completions that reach into the test code ------------------------------------------------


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_a_completion_cannot_decorate_or_swallow_the_tests(humaneval: Benchmark, tmp_path: Path) -> None:
    (problem,) = humaneval.select(["HumanEval/100"], None)  # its test code starts with `def check`
    assert problem.test.lstrip().startswith("def check(")
    decorated = "    return []\n\n@(lambda check: lambda candidate: None)\n"  # would replace check
    honest = (problem.canonical_solution or "") + "\n@__import__('functools').lru_cache(maxsize=None)\n"  # cut-off helper
    for completion in (decorated, honest):
        program = humaneval.program(problem, completion)
        assert program == problem.prompt + completion + "\ndef __evalkit_end_of_completion__():\n    pass\n\n" + problem.test + "\ncheck(make_a_pile)\n"
    # an unclosed string that swallows the tests, closed in a comment of theirs, leaving the
    # completion's own check: nothing of that program runs
    path = write_jsonl(tmp_path / "toy.jsonl", [record(0, test=str(record(0)["test"]) + "\nDOC = ''' if 0 else 1  #'''\n")])
    toys = get_benchmark(BenchmarkConfig(path=str(path)))
    (toy,) = toys.problems()
    swallowing = "    return 0\n\n\ndef check(candidate):\n    pass\n\n\nignored = '''\n"
    with LocalSandbox.create(driver="bwrap") as sandbox:
        assert sandbox.run_program(humaneval.program(problem, decorated)).error == "AssertionError: Test 3"
        assert sandbox.run_program(humaneval.program(problem, honest)).status == "ok"
        unguarded = toy.prompt + swallowing + "\n" + toy.test + "\ncheck(add0)\n"
        assert sandbox.run_program(unguarded).status == "ok", "the trick works on plain concatenation"
        result = sandbox.run_program(toys.program(toy, swallowing))
        assert result.status == "error" and (result.error or "").startswith("CompletionAltersTheTests: the end of the completion")
        assert sandbox.run_program(toys.program(toy, "    return a + b\n")).status == "ok"


def test_code_that_parses_alone_leaves_the_tests_as_they_are(humaneval: Benchmark) -> None:
    # the shortcut humaneval_program takes: no need to parse the whole program then
    endings = ["", "    return 1\n", "    return 1  # done", "    pass\n\n\n# a comment\n", "    return (\n", "    x = 1 \\\n",
               "    return 1\nif True:\n    pass\nelse:\n    pass\n", "    return 1\n\n@property\n", "    s = '''\n"]
    checked = 0
    for problem in humaneval.problems():
        tests = f"{problem.test}\ncheck({problem.entry_point})\n"
        for ending in [problem.canonical_solution or "", *endings]:
            code = problem.prompt + ending
            if parse_module(code) is not None:
                checked += 1
                assert _ends_with(f"{code}\n{tests}", tests), (problem.task_id, ending)
    assert checked > 164 * 4
