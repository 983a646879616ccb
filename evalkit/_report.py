"""The HTML report: one self-contained file rendered from the stored results (jinja2 only here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from ._types import Problem, SampleResult, task_order

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evalkit", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

_MAX_FAILURES_SHOWN = 300


def render_report(summary: dict[str, Any], results: Sequence[SampleResult], problems: Sequence[Problem] = ()) -> str:
    """The report page for a run, from its summary, results and problems; pure, re-runs nothing."""
    failures = [r for r in results if not r.passed]
    failures.sort(key=lambda r: (r.status != "infra_error", *task_order(r.task_id), r.sample_idx))
    per_problem = summary["problems"]
    rows = [
        {"task_id": task, **per_problem[task], "rate": (per_problem[task]["c"] / per_problem[task]["n"]) if per_problem[task]["n"] else None}
        for task in sorted(per_problem, key=task_order)
    ]
    return _ENV.get_template("report.html.j2").render(
        summary=summary,
        rows=rows,
        failures=failures[:_MAX_FAILURES_SHOWN],
        failures_hidden=max(0, len(failures) - _MAX_FAILURES_SHOWN),
    )
