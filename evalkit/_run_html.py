"""A run's compact HTML view in a notebook (`Run._repr_html_`): what it ran, pass@k, verdicts
with ``infra_error`` apart, and the problems that did worst. Every value is escaped."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from ._types import STATUSES

if TYPE_CHECKING:
    from ._analysis import Run

_WORST_SHOWN = 5
_ERROR_CHARS = 160
_CELL = "padding:2px 8px;text-align:left"


def run_html(run: Run) -> str:
    summary = run.summary
    info = summary["run"]
    parts = [
        f'<div class="evalkit-run"><div><strong>{escape(run.name)}</strong> <code>{escape(str(run.path))}</code></div>',
        f"<div>{_facts(info)}</div>",
        _incomplete(run, info),
        _table([escape(name) for name in summary["metrics"]], [[f"{value:.4f}" for value in summary["metrics"].values()]]),
        _skipped(summary.get("skipped_k") or {}),
        _counts(summary["counts"]),
        _flaky(summary.get("flaky")),
        _problems(run),
        "</div>",
    ]
    return "\n".join(part for part in parts if part)


def _facts(info: dict[str, Any]) -> str:
    facts = [
        f"model <b>{escape(str(info.get('model')))}</b>",
        f"benchmark <b>{escape(str(info.get('benchmark')))}</b>",
        f"{escape(str(info.get('driver')))} ({escape(str(info.get('isolation')))})",
        f"state {escape(str(info.get('state')))}",
    ]
    if info.get("started"):
        facts.append(f"started {escape(str(info['started']))}")
    if info.get("duration_s"):
        facts.append(f"{float(info['duration_s']):.1f} s")
    return " · ".join(facts)


def _incomplete(run: Run, info: dict[str, Any]) -> str:
    if info.get("complete"):
        return ""
    with_verdict = int((run.samples["status"] != "infra_error").sum())
    return (f'<div style="color:#b45309"><b>Incomplete run ({escape(str(info.get("state")))})</b>: '
            f"{with_verdict} of {int(info.get('planned_samples', 0))} planned samples have a verdict; the figures cover only those.</div>")


def _skipped(skipped: dict[str, str]) -> str:
    if not skipped:
        return ""
    return "<div><small>" + "; ".join(f"{escape(k)} not computed: {escape(reason)}" for k, reason in skipped.items()) + "</small></div>"


def _counts(counts: dict[str, int]) -> str:
    verdicts = " · ".join(f"{status} {int(counts.get(status, 0))}" for status in STATUSES if status != "infra_error")
    infra = int(counts.get("infra_error", 0))
    style = ' style="color:#b91c1c"' if infra else ""
    return (f"<div>verdicts: {verdicts}</div>"
            f"<div{style}>infra_error {infra} (left out of pass@k: the machinery failed, not the model)</div>")


def _flaky(flaky: dict[str, Any] | None) -> str:
    if not flaky or not flaky.get("total"):
        return ""
    changes = ", ".join(f"{escape(change)} {int(count)}" for change, count in flaky["by_change"].items())
    return f"<div>flaky {int(flaky['total'])} ({changes}): another verdict when re-run; the re-run's counts</div>"


def _problems(run: Run) -> str:
    problems = run.problems
    scored = problems[problems["n"] > 0]
    every = int((scored["c"] == scored["n"]).sum())
    none = int((scored["c"] == 0).sum())
    line = (f"<div>{len(problems)} problems: {every} passed by every sample, {len(scored) - every - none} by some, "
            f"{none} by none{_unscored(len(problems) - len(scored))}</div>")
    worst = scored[scored["c"] < scored["n"]].sort_values(["pass_rate", "task_id"]).head(_WORST_SHOWN)
    if worst.empty:
        return line
    rows = [[escape(str(p.task_id)), f"{p.c}/{p.n}", escape(_statuses(p)), escape(_first_error(run, str(p.task_id)))] for p in worst.itertuples()]
    return line + "<div>lowest pass rates:</div>" + _table(["problem", "passed", "statuses", "first error"], rows)


def _unscored(count: int) -> str:
    return f", {count} without a scored sample" if count else ""


def _statuses(problem: Any) -> str:
    return ", ".join(f"{status} {getattr(problem, status)}" for status in STATUSES if getattr(problem, status))


def _first_error(run: Run, task_id: str) -> str:
    samples = run.samples
    failed = samples[(samples["task_id"] == task_id) & ~samples["passed"] & samples["error"].notna()]
    if failed.empty:
        return ""
    error = str(failed["error"].iloc[0]).strip()
    last = error.splitlines()[-1] if error else ""  # a traceback's last line says what went wrong
    return last if len(last) <= _ERROR_CHARS else last[: _ERROR_CHARS - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A small table; header and cells are already escaped."""
    if not header or not rows:
        return ""
    head = "".join(f'<th style="{_CELL}">{cell}</th>' for cell in header)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{cell}</td>' for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
