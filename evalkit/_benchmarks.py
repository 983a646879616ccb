"""The benchmark registry: problems to solve and how a completion becomes a test program.

Built-in benchmarks live in the repository's ``benchmarks/`` folder (installed as
``evalkit.benchmarks``) and are imported only when used; third parties register their own
through the ``evalkit.benchmarks`` entry-point group.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from importlib.metadata import entry_points

from ._config import BenchmarkConfig
from ._errors import ConfigError
from ._types import Problem

_BUILTIN = {"humaneval": "evalkit.benchmarks.humaneval:HumanEval"}


class Benchmark(ABC):
    """A set of problems and the rule that turns (problem, completion) into a program.

    The program must run the benchmark's tests to their end when the completion is correct, so
    that the sandbox can confirm completion; evalkit never trusts an exit code.
    """

    name: str
    supports_strict: bool = False
    """Whether `program` honours `strict`; `get_benchmark` refuses ``benchmark.strict`` otherwise."""

    strict: bool = False
    """Strict mode (``benchmark.strict``, `evalkit._strict`): programs also fail when the entry
    point returns anything but plain built-in values. `get_benchmark` sets it from the config."""

    chat_template: str = (
        "Complete the Python function `{{ entry_point }}` below. Reply with the whole function, "
        "including the imports and any helper functions it uses, in a single ```python code block.\n"
        "\n"
        "```python\n"
        "{{ prompt | trim }}\n"
        "```\n"
    )
    """The jinja2 template (`evalkit._prompts`) of the user message for chat models: the problem's
    prompt in a fence, with the request for a whole function (`humaneval_program` accepts one)."""

    completion_template: str = "{{ prompt }}"
    """The template of the text completion models continue: the prompt exactly as the benchmark
    gives it. Never strip it: a prompt's trailing newline and indentation change scores."""

    completion_stop: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
    """Stop sequences for completion models: a line at column 0 leaves the function body. These
    are the Codex paper's (``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``, used for
    published HumanEval numbers) with ``if`` and ``print`` narrowed to ``if __name__`` and
    ``print(``. ``"\\ndef "`` also cuts a helper function a model writes after the body: that
    is the standard behaviour, kept for comparable scores. Chat replies are not cut; their code
    is extracted (`evalkit._extract`)."""

    @abstractmethod
    def problems(self) -> list[Problem]:
        """Every problem of the benchmark, in its canonical order.

        Raises `ConfigError` when the data cannot be read.
        """

    @abstractmethod
    def program(self, problem: Problem, completion: str) -> str:
        """The Python program that checks ``completion`` against ``problem``'s tests (in strict
        mode if `strict` is set; a benchmark that supports it may take ``strict=`` to override)."""

    def select(self, ids: list[str] | None, limit: int | None) -> list[Problem]:
        """The problems named by ``ids`` (in the benchmark's order), then the first ``limit``.

        Raises `ConfigError` naming an id the benchmark does not have.
        """
        problems = self.problems()
        if ids is not None:
            known = {p.task_id for p in problems}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ConfigError(f"benchmark '{self.name}' has no problem '{unknown[0]}' (benchmark.ids)")
            wanted = set(ids)
            problems = [p for p in problems if p.task_id in wanted]
        return problems[:limit] if limit is not None else problems


def _load_class(spec: str) -> type[Benchmark]:
    module_name, _, attr = spec.partition(":")
    cls: object = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise ConfigError(f"{spec} is not a Benchmark class")
    return cls


def benchmark_names() -> list[str]:
    """Names of the registered benchmarks, built-in and from plug-ins."""
    return sorted({*_BUILTIN, *(ep.name for ep in entry_points(group="evalkit.benchmarks"))})


def get_benchmark(config: BenchmarkConfig) -> Benchmark:
    """The benchmark a config names: ``name`` from the registry, or ``path`` to a JSONL file,
    in strict mode if ``config.strict`` (`ConfigError` for a benchmark without one)."""
    benchmark = _named_benchmark(config)
    if config.strict:
        if not benchmark.supports_strict:
            raise ConfigError(f"benchmark '{benchmark.name}' has no strict mode (benchmark.strict); leave it false")
        benchmark.strict = True
    return benchmark


def _named_benchmark(config: BenchmarkConfig) -> Benchmark:
    if config.path is not None:
        from evalkit.benchmarks.jsonl import JsonlBenchmark

        benchmark: Benchmark = JsonlBenchmark(config.path)  # an import mypy cannot follow (package-dir)
        return benchmark
    name = config.name or ""
    if name in _BUILTIN:
        return _load_class(_BUILTIN[name])()
    for ep in entry_points(group="evalkit.benchmarks"):
        if ep.name == name:
            return _load_class(ep.value)()
    raise ConfigError(f"unknown benchmark '{name}' (known: {', '.join(benchmark_names())}; or give 'path' to a JSONL file)")
