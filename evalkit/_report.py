"""The HTML report: one self-contained page rendered from the stored results (jinja2 only here).

Rendering is pure: the same summary, results, problems and comparison give the same bytes
(no render time, no random ids), and the page fetches nothing. Its script and style are inline
and a Content-Security-Policy allows nothing else, so a report opened offline, mailed, or
archived as a CI artifact looks the same, and text from a model can never load or run anything.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from . import _charts
from ._calibrate import describe_time_limits
from ._compare import Comparison
from ._infra import infra_faults
from ._types import STATUSES, Problem, SampleResult, task_order

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evalkit", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.globals["infra_faults"] = infra_faults

FAILING_SHOWN = 3
"""Per problem, the report shows up to this many samples that did not pass (distinct errors
first), one that passed and every flaky one; samples.parquet has every sample."""

DIFFERING_SHOWN = 20
"""Samples whose verdict differed in a determinism check that the report lists; determinism.json has all."""

# Characters kept of each text field of a shown sample (the rest is in samples.parquet). stderr
# keeps its end, where a traceback says what went wrong; the others keep their start.
_LIMITS = {"completion": 4000, "response": 4000, "prompt": 4000, "error": 1000, "stdout": 1000, "stderr": 3000}
_VERDICTS = tuple(s for s in STATUSES if s != "infra_error")


@dataclass(frozen=True)
class Cut:
    """A text as shown, and how many characters of it were left out."""

    text: str
    omitted: int = 0


@dataclass(frozen=True)
class SampleView:
    result: SampleResult
    gist: str
    error: Cut | None
    completion: Cut
    response: Cut | None
    stdout: Cut
    stderr: Cut
    first_error: Cut | None = None


@dataclass(frozen=True)
class ProblemRow:
    anchor: str
    order: int
    task_id: str
    n: int
    c: int
    infra_error: int
    rate: float | None
    counts: dict[str, int]
    max_duration_s: float | None
    flags: str
    headline: str
    problem: Problem | None
    sent_prompt: Cut | None
    samples: list[SampleView]
    not_passed: int

    @property
    def search(self) -> str:
        return " ".join([self.task_id, self.flags, self.headline]).lower()


def render_report(
    summary: dict[str, Any],
    results: Sequence[SampleResult],
    problems: Sequence[Problem] = (),
    comparison: Comparison | None = None,
) -> str:
    """The report page for a run, from its summary, results and problems (prompts and tests
    shown when given), with a section comparing it with a baseline run when `comparison` is
    given; pure, re-runs nothing."""
    rows = _rows(summary, results, problems)
    anchors = {row.task_id: row.anchor for row in rows}
    verdicts = [r for r in results if r.status != "infra_error"]
    charts = {}
    if results:
        charts["statuses"] = _charts.statuses(summary["counts"])
        charts["pass_rates"] = _charts.pass_rates([(row.task_id, row.rate, f"#{row.anchor}") for row in rows])
    if verdicts:
        by_status: dict[str, list[float]] = defaultdict(list)
        for r in verdicts:
            by_status[r.status].append(r.duration_s)
        charts["durations"] = _charts.durations(by_status)
    script = _ENV.get_template("_report.js.j2").render()
    return _ENV.get_template("report.html.j2").render(
        summary=summary,
        run=summary["run"],
        rows=rows,
        charts=charts,
        sandbox_s=math.fsum(r.duration_s for r in results),
        failing_shown=FAILING_SHOWN,
        differing_shown=DIFFERING_SHOWN,
        comparison=comparison,
        anchors=anchors,
        **_page(script),
    )


def render_comparison(comparison: Comparison) -> str:
    """A page of its own for a comparison of two runs (``evalkit compare``); pure."""
    return _ENV.get_template("comparison.html.j2").render(comparison=comparison, anchors={}, **_page(None))


def _page(script: str | None) -> dict[str, Any]:
    """What every page shares: the style, and the script with the policy that lets only it run."""
    source = "'none'"
    if script is not None:
        source = "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
    return {
        "css": _ENV.get_template("_style.css.j2").render(colors=_charts.STATUS_COLORS),
        "script": script,
        "csp": f"default-src 'none'; style-src 'unsafe-inline'; script-src {source}; base-uri 'none'; form-action 'none'",
    }


def _rows(summary: dict[str, Any], results: Sequence[SampleResult], problems: Sequence[Problem]) -> list[ProblemRow]:
    per_problem: Mapping[str, Mapping[str, int]] = summary["problems"]
    by_task: dict[str, list[SampleResult]] = defaultdict(list)
    for r in sorted(results, key=lambda r: r.sample_idx):
        by_task[r.task_id].append(r)
    by_id = {p.task_id: p for p in problems}
    tasks = sorted(set(per_problem) | set(by_id), key=task_order)
    return [_row(i, task, per_problem.get(task, {}), by_task.get(task, []), by_id.get(task)) for i, task in enumerate(tasks)]


def _row(order: int, task_id: str, figures: Mapping[str, int], samples: list[SampleResult], problem: Problem | None) -> ProblemRow:
    n, c = figures.get("n", 0), figures.get("c", 0)
    counts: Counter[str] = Counter(r.status for r in samples)
    counts["flaky"] = sum(r.flaky for r in samples)
    not_passed = [r for r in samples if not r.passed]
    shown = _pick(not_passed, FAILING_SHOWN) + [r for r in samples if r.passed][:1]
    shown += [r for r in samples if r.flaky and r not in shown]  # flaky samples are always shown
    timed = [r.duration_s for r in samples if r.status != "infra_error"]
    return ProblemRow(
        anchor=f"p{order}",
        order=order,
        task_id=task_id,
        n=n,
        c=c,
        infra_error=figures.get("infra_error", counts["infra_error"]),
        rate=c / n if n else None,
        counts={s: counts[s] for s in STATUSES},
        max_duration_s=max(timed) if timed else None,
        flags=_flags(n, c, counts),
        headline=_gist(not_passed[0]) if not_passed else "",
        problem=problem,
        sent_prompt=_sent_prompt(samples, problem),
        samples=[_view(r) for r in sorted(shown, key=lambda r: (r.passed, r.sample_idx))],
        not_passed=len(not_passed),
    )


def _pick(not_passed: list[SampleResult], cap: int) -> list[SampleResult]:
    """Up to `cap` samples, one of each distinct failure (status and first line of the error)
    before any repeat, so that the few shown explain as many failures as they can."""
    seen: set[tuple[str, str]] = set()
    first: list[SampleResult] = []
    repeats: list[SampleResult] = []
    for r in not_passed:
        kind = (r.status, _gist(r))
        (repeats if kind in seen else first).append(r)
        seen.add(kind)
    return (first + repeats)[:cap]


def _flags(n: int, c: int, counts: Counter[str]) -> str:
    """The words the status filter and the search match a problem by."""
    flags: list[str] = [s for s in STATUSES if counts[s]]
    if any(counts[s] for s in _VERDICTS if s != "passed"):
        flags.append("failing")
    if counts["flaky"]:
        flags.append("flaky")
    if not n:
        flags.append("unscored")
    elif c == n:
        flags.append("all-passed")
    elif c == 0:
        flags.append("none-passed")
    return " ".join(flags)


def _gist(result: SampleResult) -> str:
    """What a sample's failure comes down to: its error's last non-empty line (a traceback's
    exception), or its status."""
    lines = [line.strip() for line in (result.error or "").splitlines() if line.strip()]
    return (lines[-1] if lines else result.status)[:200]


def _sent_prompt(samples: list[SampleResult], problem: Problem | None) -> Cut | None:
    """The prompt a model API was sent, when it is not just the problem's prompt (a chat template)."""
    sent = next((r.prompt for r in samples if r.prompt), None)
    if sent is None or (problem is not None and sent == problem.prompt):
        return None
    return _head(sent, _LIMITS["prompt"])


def _view(r: SampleResult) -> SampleView:
    return SampleView(
        result=r,
        gist="" if r.passed else _gist(r),
        error=_head(r.error, _LIMITS["error"]) if r.error else None,
        completion=_head(r.completion, _LIMITS["completion"]),
        response=_head(r.response, _LIMITS["response"]) if r.response is not None and r.response != r.completion else None,
        stdout=_head(r.stdout, _LIMITS["stdout"]),
        stderr=_tail(r.stderr, _LIMITS["stderr"]),
        first_error=_head(r.first_error, _LIMITS["error"]) if r.flaky and r.first_error else None,
    )


def _head(text: str, limit: int) -> Cut:
    return Cut(text[:limit], max(0, len(text) - limit))


def _tail(text: str, limit: int) -> Cut:
    return Cut(text[-limit:] if len(text) > limit else text, max(0, len(text) - limit))


def _pre(text: str) -> Markup:
    """Text for the inside of a ``<pre>``: only ``&``, ``<`` and ``>`` escaped (jinja2's escaping
    also turns every quote into ``&#34;``/``&#39;``, which roughly doubles the size of code)."""
    return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _when(stamp: str | None) -> str:
    """An ISO 8601 time as people read it: ``2026-11-27 10:15:00 UTC``."""
    if not stamp:
        return "–"
    return stamp.replace("T", " ").replace("+00:00", " UTC")


def _p_value(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def describe_execution(execution: Mapping[str, Any]) -> str:
    """``2 workers bwrap, batch 8``: how one execution of a run's samples ran (``determinism.json``)."""
    workers = execution.get("workers")
    count = "? workers" if workers is None else f"{workers} worker{'' if workers == 1 else 's'}"
    return f"{count} {execution.get('driver', '?')}, batch {execution.get('batch_size', '?')}"


_ENV.filters.update(pre=_pre, duration=_duration, when=_when, p_value=_p_value, signed=_signed, execution=describe_execution,
                    time_limits=describe_time_limits)
