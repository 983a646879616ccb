"""Prompts: a problem rendered through a jinja2 template into what a model is asked
(jinja2 only here and in the report).

Templates see the variables in `VARIABLES`: ``prompt``, ``entry_point``, ``task_id``,
``language``, ``metadata`` (the problem's extra fields, a dict) and ``problem`` (the whole
`Problem`). Undefined names are errors (StrictUndefined): use ``metadata.get('key')`` or
``{% if 'key' in metadata %}`` for fields only some problems have. Nothing is escaped or
stripped: ``{{ prompt }}`` renders the prompt exactly, trailing newline included.
"""

from __future__ import annotations

import functools

import jinja2
import jinja2.meta

from ._errors import ConfigError
from ._types import Problem

VARIABLES = ("prompt", "entry_point", "task_id", "language", "metadata", "problem")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def check_template(template: str, *, key: str) -> None:
    """Raise `ConfigError` naming ``key`` if ``template`` has a syntax error or uses a variable
    outside `VARIABLES` (what can be known before rendering a problem)."""
    _compiled(template, key)


def render_prompt(template: str, problem: Problem, *, key: str) -> str:
    """``template`` rendered for ``problem``.

    Raises `ConfigError` naming ``key`` (the config key the template came from, e.g.
    ``model.prompt_template``) for a syntax error, an unknown variable, an attribute or key the
    problem lacks, or an expression that fails (the message names the problem).
    """
    compiled = _compiled(template, key)
    variables = {
        "prompt": problem.prompt,
        "entry_point": problem.entry_point,
        "task_id": problem.task_id,
        "language": problem.language,
        "metadata": problem.metadata,
        "problem": problem,
    }
    try:
        return compiled.render(variables)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{key}: {exc.message} (rendering the prompt of {problem.task_id})") from exc
    except Exception as exc:  # an expression of the user's template failed, e.g. {{ 1 / 0 }}
        raise ConfigError(f"{key}: {type(exc).__name__}: {exc} (rendering the prompt of {problem.task_id})") from exc


def _compiled(template: str, key: str) -> jinja2.Template:
    try:
        compiled, unknown = _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{key}: template syntax error on line {exc.lineno}: {exc.message}") from exc
    if unknown:
        raise ConfigError(f"{key}: unknown variable '{unknown[0]}' (known: {', '.join(VARIABLES)})")
    return compiled


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> tuple[jinja2.Template, list[str]]:
    """The compiled template and the variables it reads that no renderer provides."""
    undeclared = jinja2.meta.find_undeclared_variables(_ENV.parse(template))
    unknown = sorted(undeclared - set(VARIABLES))  # jinja2 globals (range, dict, ...) are declared
    return _ENV.from_string(template), unknown
