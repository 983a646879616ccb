"""TEMPORARY placeholder (helper H2 writes the real one)."""
from __future__ import annotations
import jinja2
from ._types import Problem
def render_prompt(template: str, problem: Problem, *, key: str) -> str:
    return jinja2.Template(template, keep_trailing_newline=True).render(prompt=problem.prompt, entry_point=problem.entry_point, task_id=problem.task_id)
