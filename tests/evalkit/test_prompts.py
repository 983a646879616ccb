"""Prompt templates: the benchmark's defaults on every HumanEval problem, user templates, and
the errors a broken template gives."""

from __future__ import annotations

import re

import pytest

from evalkit import Benchmark, ConfigError, Problem
from evalkit._prompts import VARIABLES, check_template, render_prompt

KEY = "model.prompt_template"
PROBLEM = Problem(
    task_id="Toy/0",
    prompt='def add(a, b):\n    """Add a < b & "c"."""\n',
    entry_point="add",
    test="def check(candidate):\n    assert candidate(1, 2) == 3\n",
    canonical_solution="    return a + b\n",
    metadata={"difficulty": "easy", "tags": ["math", "toy"]},
)


def test_the_completion_template_renders_every_prompt_exactly(humaneval: Benchmark) -> None:
    for problem in humaneval.problems():
        assert render_prompt(humaneval.completion_template, problem, key=KEY) == problem.prompt, problem.task_id


def test_the_chat_template_renders_every_problem(humaneval: Benchmark) -> None:
    for problem in humaneval.problems():
        text = render_prompt(humaneval.chat_template, problem, key=KEY)
        assert f"`{problem.entry_point}`" in text, problem.task_id
        fenced = re.search(r"```python\n(.*)\n```\n$", text, re.DOTALL)
        assert fenced is not None and fenced.group(1) == problem.prompt.strip(), problem.task_id
        assert "```python code block" in text


def test_benchmarks_share_the_default_templates(humaneval: Benchmark) -> None:
    assert humaneval.chat_template == Benchmark.chat_template
    assert humaneval.completion_template == "{{ prompt }}"
    assert humaneval.completion_stop == ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
    check_template(humaneval.chat_template, key=KEY)
    check_template(humaneval.completion_template, key=KEY)


def test_every_variable_renders() -> None:
    template = "{{ task_id }}|{{ entry_point }}|{{ language }}|{{ metadata.difficulty }}|{{ metadata['tags'] | join(',') }}|{{ problem.canonical_solution }}{{ prompt }}"
    assert render_prompt(template, PROBLEM, key=KEY) == "Toy/0|add|python|easy|math,toy|    return a + b\n" + PROBLEM.prompt
    assert set(VARIABLES) == {"prompt", "entry_point", "task_id", "language", "metadata", "problem"}


def test_nothing_is_escaped_and_trailing_newlines_stay() -> None:
    assert render_prompt("{{ prompt }}\n\n", PROBLEM, key=KEY) == PROBLEM.prompt + "\n\n"
    assert "a < b & \"c\"" in render_prompt("{{ prompt }}", PROBLEM, key=KEY)


def test_template_variables_and_jinja_globals_are_not_unknown() -> None:
    template = "{% set n = 2 %}{% for i in range(n) %}{{ i }}{% endfor %}{% if 'missing' in metadata %}x{% endif %}{{ metadata.get('missing', '-') }}"
    check_template(template, key=KEY)
    assert render_prompt(template, PROBLEM, key=KEY) == "01-"


def test_an_unknown_variable_is_named_with_the_known_ones() -> None:
    for call in (lambda: check_template("{{ prompt }}{{ foo }}", key=KEY), lambda: render_prompt("{{ foo }}", PROBLEM, key=KEY)):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == f"{KEY}: unknown variable 'foo' (known: prompt, entry_point, task_id, language, metadata, problem)"


def test_a_syntax_error_names_the_key_and_line() -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{KEY}: template syntax error on line 2: ")):
        check_template("Solve this:\n{{ prompt }\n", key=KEY)
    with pytest.raises(ConfigError, match=r"^benchmark\.x: template syntax error on line 1"):
        render_prompt("{% if prompt %}unclosed", PROBLEM, key="benchmark.x")


def test_a_missing_metadata_field_names_the_problem() -> None:
    with pytest.raises(ConfigError) as info:
        render_prompt("{{ metadata.author }}", PROBLEM, key=KEY)
    message = str(info.value)
    assert message.startswith(f"{KEY}: ") and "author" in message and "Toy/0" in message


def test_a_failing_expression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"ZeroDivisionError.*Toy/0"):
        render_prompt("{{ 1 / 0 }}", PROBLEM, key=KEY)
    with pytest.raises(ConfigError, match=r"Toy/0"):
        render_prompt("{% include 'other.j2' %}", PROBLEM, key=KEY)
