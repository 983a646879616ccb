"""Code extraction from chat replies (`extract_code`), trimming to what the entry point needs
(`sanitize`), and stop sequences (`truncate_at_stops`), on replies shaped like real ones."""

from __future__ import annotations

import time

import pytest

from evalkit._extract import extract_code, truncate_at_stops
from evalkit._pycode import free_names, parse_module, sanitize

SOLUTION = '''def running_max(numbers: list[int]) -> list[int]:
    """Running maximum of a list."""
    result = []
    best = None
    for n in numbers:
        best = n if best is None else max(best, n)
        result.append(best)
    return result
'''


def test_prose_around_one_block() -> None:
    reply = f"Sure! Here is an implementation:\n\n```python\n{SOLUTION}```\n\nIt keeps the largest value seen so far.\n"
    assert extract_code(reply, "running_max") == SOLUTION


def test_usage_example_first_then_the_solution() -> None:
    reply = (
        "You can call it like this:\n\n```python\nprint(running_max([1, 3, 2]))  # [1, 3, 3]\n```\n\n"
        f"And here is the function:\n\n```python\n{SOLUTION}```\n"
    )
    assert extract_code(reply, "running_max") == SOLUTION


def test_a_wrong_draft_then_the_corrected_one() -> None:
    draft = "def running_max(numbers):\n    return sorted(numbers)\n"
    reply = (
        f"First attempt:\n```python\n{draft}```\nWait, that sorts instead of keeping a running maximum. "
        f"Corrected:\n```python\n{SOLUTION}```\nThen a test:\n```python\nassert running_max([2, 1]) == [2, 2]\n```\n"
    )
    assert extract_code(reply, "running_max") == SOLUTION


def test_the_last_defining_block_that_parses_wins_over_a_later_broken_one() -> None:
    broken = "def running_max(numbers):\n    return [max(numbers[:i + 1] for i in range(len(numbers))]\n"
    reply = f"```python\n{SOLUTION}```\nOr shorter:\n```python\n{broken}```\n"
    assert extract_code(reply, "running_max") == SOLUTION


def test_think_sections_and_the_code_in_them_are_dropped() -> None:
    reply = (
        "<think>\nMaybe sorting?\n```python\ndef running_max(numbers):\n    return sorted(numbers)\n```\n"
        "No: a running maximum.\n</think>\n\n"
        f"```python\n{SOLUTION}```\n<thinking>Done. ```python\ndef running_max(x): pass\n```</thinking>\n"
    )
    assert extract_code(reply, "running_max") == SOLUTION


def test_a_think_section_whose_opening_tag_the_server_stripped() -> None:
    body = "    return [max(numbers[: i + 1]) for i in range(len(numbers))]\n"
    reply = f"Hmm, sorting?\n```python\ndef running_max(numbers):\n    return sorted(numbers)\n```\n</think>\nThe body:\n```python\n{body}```"
    assert extract_code(reply, "running_max") == body


@pytest.mark.parametrize("reply", ["<think>\nLet me see. ```python\ndef running_max(n):\n    return n\n```\nSo", "  \n<THINK>I am still"])
def test_a_reply_cut_off_while_thinking_has_no_code(reply: str) -> None:
    assert extract_code(reply, "running_max") == ""


def test_no_fences_prose_before_and_after() -> None:
    reply = f"Here is the code:\n{SOLUTION}\nThis keeps the best value seen so far; it's linear.\n"
    assert extract_code(reply, "running_max") == SOLUTION


def test_no_fences_and_no_prose() -> None:
    assert extract_code("\n\n" + SOLUTION + "\n\n", "running_max") == SOLUTION


def test_no_fences_the_defining_run_wins_over_a_longer_one() -> None:
    # an expression-like prose line parses; the run holding the definition is preferred
    prose = "\n".join(["Note", "x = 1", "y = 2", "z = 3", "w = 4", "v = 5", "u = 6", "t = 7", "s = 8", "r = 9", "Now, the code:"])
    assert extract_code(f"{prose}\n{SOLUTION}\nThat's all.", "running_max") == SOLUTION


def test_tilde_fences() -> None:
    reply = f"~~~python\n{SOLUTION}~~~\n"
    assert extract_code(reply, "running_max") == SOLUTION


def test_a_longer_fence_holds_a_shorter_one() -> None:
    code = 'def running_max(numbers):\n    """Works with:\n    ```\n    running_max([1])\n    ```\n    """\n    return numbers\n'
    assert extract_code(f"````python\n{code}````\n", "running_max") == code


def test_blocks_of_other_languages_are_ignored() -> None:
    reply = (
        "Install nothing:\n```bash\npip install nothing\n```\nInput:\n```json\n{\"numbers\": [1, 2]}\n```\n"
        f"```Python\n{SOLUTION}```\n```text\n[1, 2]\n```\n"
    )
    assert extract_code(reply, "running_max") == SOLUTION


@pytest.mark.parametrize("tag", ["", "py", "python3", "PYTHON", "python title=solution.py", "python:solution.py"])
def test_python_tags(tag: str) -> None:
    assert extract_code(f"```{tag}\n{SOLUTION}```", "running_max") == SOLUTION


def test_only_other_language_blocks_means_the_text_outside_them() -> None:
    reply = f"Run it with:\n```bash\npython solution.py\n```\n{SOLUTION}"
    assert extract_code(reply, "running_max") == SOLUTION


def test_helpers_main_demo_and_prints_are_trimmed() -> None:
    reply = '''Here's a complete solution:

```python
import sys
from math import gcd
from typing import List

BASE = 10
GREETING = "unused"


def digit_sum(n: int) -> int:
    return sum(int(d) for d in str(abs(n)))


def _cache():
    return {}


MEMO = _cache()


def solve(numbers: List[int]) -> int:
    """Sum of digit sums, memoised."""
    total = 0
    for n in numbers:
        if n not in MEMO:
            MEMO[n] = digit_sum(n) % BASE
        total += MEMO[n]
    return total


print(solve([12, 34]))
assert solve([1]) == 1
answer = solve([5])


def main():
    data = sys.stdin.read().split()
    print(solve(list(map(int, data))))


if __name__ == "__main__":
    main()
```
'''
    assert extract_code(reply, "solve") == '''import sys
from math import gcd
from typing import List

BASE = 10

def digit_sum(n: int) -> int:
    return sum(int(d) for d in str(abs(n)))

def _cache():
    return {}

MEMO = _cache()

def solve(numbers: List[int]) -> int:
    """Sum of digit sums, memoised."""
    total = 0
    for n in numbers:
        if n not in MEMO:
            MEMO[n] = digit_sum(n) % BASE
        total += MEMO[n]
    return total
'''


def test_a_nested_helper_and_a_trailing_print_keep_the_function() -> None:
    # the shape of EvalPlus issue #92, where a sanitizer returned empty code
    code = (
        "def f(n):\n    def double(i):\n        return 2 * i\n\n    out = []\n    for i in range(n):\n"
        "        out.append(double(i))\n    return out\n\n# Try it\nprint(f(3))\n"
    )
    assert extract_code(f"```python\n{code}```", "f") == code.split("\n\n# Try it")[0] + "\n"


def test_a_helper_class_is_kept() -> None:
    reply = '''```python
from collections import deque


class Window:
    """Keeps the largest of the last k values."""

    def __init__(self, k):
        self.k = k
        self.items = deque()

    def push(self, i, value, values):
        while self.items and values[self.items[-1]] <= value:
            self.items.pop()
        self.items.append(i)
        if self.items[0] <= i - self.k:
            self.items.popleft()
        return values[self.items[0]]


def window_max(values, k):
    window = Window(k)
    return [window.push(i, v, values) for i, v in enumerate(values)]


w = Window(2)
print(window_max([1, 3, 2], 2))
```'''
    code = extract_code(reply, "window_max")
    assert "class Window:" in code and "def window_max(values, k):" in code
    assert "print(" not in code and "w = Window(2)" not in code
    namespace: dict[str, object] = {}
    exec(compile(code, "<extracted>", "exec"), namespace)
    assert namespace["window_max"]([1, 3, 2, 5, 4], 2) == [1, 3, 3, 5, 5]  # type: ignore[operator]


def test_a_method_of_a_solution_class_is_left_as_the_model_wrote_it() -> None:
    # no top-level entry point: nothing to trim, and the program will fail as it should
    code = "class Solution:\n    def running_max(self, numbers):\n        return numbers\n\nprint(Solution().running_max([1]))\n"
    assert extract_code(f"```python\n{code}```", "running_max") == code


def test_a_body_only_block_is_returned_as_is() -> None:
    body = "    result = []\n    for n in numbers:\n        result.append(max(result[-1:] + [n]))\n    return result\n"
    reply = f"Complete the function with:\n\n```python\n{body}```\n"
    assert extract_code(reply, "running_max") == body


@pytest.mark.parametrize("example_first", [False, True])
def test_a_body_only_block_wins_over_a_shorter_usage_example(example_first: bool) -> None:
    body = "    result = []\n    for n in numbers:\n        result.append(max(result[-1:] + [n]))\n    return result\n"
    blocks = [f"```python\n{body}```", "Example:\n```python\nrunning_max([1])\n```"]
    reply = "\n".join(reversed(blocks) if example_first else blocks)
    assert extract_code(reply, "running_max") == body


@pytest.mark.parametrize(("reply", "code"), [("", ""), ("   \n\n", ""), ("```python\n```", ""), ("I cannot help with that.", "I cannot help with that.\n")])
def test_a_reply_without_code(reply: str, code: str) -> None:
    assert extract_code(reply, "running_max") == code


def test_crlf_line_ends() -> None:
    reply = f"Here you go:\r\n\r\n```python\r\n{SOLUTION}```\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    assert "\r" in reply
    assert extract_code(reply, "running_max") == SOLUTION


def test_a_block_cut_off_by_max_tokens_runs_to_the_end() -> None:
    reply = f"Let me write it.\n\n```python\n{SOLUTION}\nprint(running_max([3, 1"
    assert extract_code(reply, "running_max") == SOLUTION + "\nprint(running_max([3, 1\n"


def test_an_indented_fence_in_a_list_item() -> None:
    indented = "".join("   " + line if line else line for line in SOLUTION.splitlines(keepends=True))
    reply = f"1. The function:\n   ```python\n{indented}   ```\n2. Done."
    assert extract_code(reply, "running_max") == SOLUTION


def test_a_lambda_or_a_class_counts_as_defining_the_entry_point() -> None:
    reply = "```python\nprint('hi')\n```\n```python\nimport math\nroot = lambda x: math.sqrt(x)\nprint(root(4))\n```"
    assert extract_code(reply, "root") == "import math\n\nroot = lambda x: math.sqrt(x)\n"


def test_a_table_filled_at_top_level_is_kept() -> None:
    code = "SQUARES = []\nfor i in range(10):\n    SQUARES.append(i * i)\n\ndef is_square(n):\n    return n in SQUARES\n\nfor n in (4, 5):\n    print(is_square(n))\n"
    expected = "SQUARES = []\n\nfor i in range(10):\n    SQUARES.append(i * i)\n\ndef is_square(n):\n    return n in SQUARES\n"
    assert extract_code(f"```python\n{code}```", "is_square") == expected


def test_recursion_limit_and_statements_on_one_line() -> None:
    code = "import sys; sys.setrecursionlimit(10000); print('start')\ndef depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\nprint(depth(5))\n"
    assert extract_code(f"```python\n{code}```", "depth") == (
        "import sys\n\nsys.setrecursionlimit(10000)\n\ndef depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
    )


def test_usage_that_touches_needed_state_is_dropped() -> None:
    code = (
        "MEMO = {0: 0, 1: 1}\n\ndef fib(n):\n    if n not in MEMO:\n        MEMO[n] = fib(n - 1) + fib(n - 2)\n    return MEMO[n]\n\n"
        "for i in range(5):\n    print(fib(i), MEMO.get(i))\n"
    )
    assert extract_code(f"```python\n{code}```", "fib") == code.split("\n\nfor i")[0] + "\n"


def test_a_main_block_is_dropped_even_when_it_sets_a_needed_name() -> None:
    code = (
        "import sys\n\nLIMIT = 100\n\ndef capped(xs):\n    return [min(x, LIMIT) for x in xs]\n\n"
        "if __name__ == \"__main__\":\n    LIMIT = int(sys.argv[1])\n"
    )
    assert extract_code(f"```python\n{code}```", "capped") == code.split("\n\nif __name__")[0] + "\n"


def test_method_calls_on_imported_modules_are_not_setup() -> None:
    code = "import numpy as np\n\ndef average(xs):\n    return float(np.mean(xs))\n\ndata = np.array([1, 2, 3])\nnp.random.seed(0)\nprint(average(data))\n"
    assert extract_code(f"```python\n{code}```", "average") == "import numpy as np\n\ndef average(xs):\n    return float(np.mean(xs))\n"


def test_a_global_that_shadows_a_local_name_is_not_needed() -> None:
    code = "result = None\n\ndef f(x):\n    result = [x]\n    return result\n\nresult = f(2)\nprint(result)\n"
    assert sanitize(code, "f") == "def f(x):\n    result = [x]\n    return result\n"


def test_free_names_of_functions() -> None:
    tree = parse_module(
        "@deco(ARG)\ndef f(a, b=DEFAULT, *args, c: Kind = 1, **kw) -> Out:\n    global COUNT\n    COUNT += 1\n"
        "    local = [v for v in a if v > LIMIT]\n    g = lambda y: y + OFFSET\n    try:\n        pass\n"
        "    except Error as e:\n        raise Wrapped(e)\n    return helper(local, g, b, c, args, kw)\n"
    )
    assert tree is not None
    names = free_names(tree.body[0])
    assert names == {"deco", "ARG", "DEFAULT", "Kind", "Out", "COUNT", "LIMIT", "OFFSET", "Error", "Wrapped", "helper"}


def test_sanitize_leaves_code_that_does_not_define_the_entry_point() -> None:
    for code in ["    return x\n", "print(1)\n", "def other():\n    pass\nprint(other())\n", "def broken(:\n"]:
        assert sanitize(code, "f") == code


@pytest.mark.parametrize("terms", [300, 1000, 5000])
def test_deeply_nested_code_is_never_an_error(terms: int) -> None:
    code = "def f():\n    return " + "+".join(["1"] * terms) + "\n\nprint(f())\n"
    extracted = extract_code(f"```python\n{code}```", "f")
    assert extracted in (code, code.split("\n\nprint")[0] + "\n")


def test_unfenced_search_is_bounded() -> None:
    prose = "\n".join(f"Line {i} of the explanation (with parentheses, commas and words) goes here." for i in range(400))
    unclosed = "\n".join(f"x{i} = (" for i in range(20000))
    for reply in (prose, unclosed):
        started = time.perf_counter()
        assert extract_code(reply, "f") == reply + "\n"
        assert time.perf_counter() - started < 3.0


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("    return x\n\ndef helper():\n", ["\ndef ", "\n#"], "    return x\n"),
        ("    return x\n# done\ndef g", ["\ndef ", "\n#"], "    return x"),
        ("    return x\n", ["\ndef "], "    return x\n"),
        ("    return x\n", [], "    return x\n"),
        ("    return x\n", ["", "\nprint("], "    return x\n"),
        ("print(1)", ["print("], ""),
    ],
)
def test_truncate_at_stops(text: str, stops: list[str], expected: str) -> None:
    assert truncate_at_stops(text, stops) == expected
