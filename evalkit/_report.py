"""The HTML report: one self-contained file rendered from the stored results (jinja2 only here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from ._types import SampleResult, task_order

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evalkit", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

_MAX_FAILURES_SHOWN = 300


def render_report(summary: dict[str, Any], results: Sequence[SampleResult]) -> str:
    """The report page for a run, from its summary and results; pure, re-runs nothing."""
    failures = [r for r in results if not r.passed]
    failures.sort(key=lambda r: (r.status != "infra_error", *task_order(r.task_id), r.sample_idx))
    problems = summary["problems"]
    rows = [
        {"task_id": task, **problems[task], "rate": (problems[task]["c"] / problems[task]["n"]) if problems[task]["n"] else None}
        for task in sorted(problems, key=task_order)
    ]
    return _ENV.get_template("report.html.j2").render(
        summary=summary,
        rows=rows,
        failures=failures[:_MAX_FAILURES_SHOWN],
        failures_hidden=max(0, len(failures) - _MAX_FAILURES_SHOWN),
    )
