"""``junit.xml``: a run as JUnit test results, so that CI systems list the problems that failed.

    <testsuites name="evalkit: RUN NAME">
      <testsuite name="BENCHMARK">          one <testcase> per planned problem
        <testcase classname="BENCHMARK" name="TASK_ID" time="...">
      <testsuite name="evalkit.gates">      one <testcase> per gate, when the config has gates

A problem's test case

- **fails** when none of its scored samples passed (``<failure>``, typed by the status of its
  first failing sample, with that sample's error, the tail of its stderr and of its stdout). A
  problem some samples solved passes, with "c of n samples passed" in its ``<system-out>``:
  with several samples per problem, CI should flag what the model cannot do, not its sampling
  noise, which pass@k and the comparison with a baseline measure;
- is **skipped** when it has no scored sample: all its samples are ``infra_error`` (not the
  model's fault; the exit code reports them) or were never run;
- takes as ``time`` the sum of its samples' durations in the sandbox;
- names its flaky samples (verdict changed when re-run, `evalkit._executor`) in its
  ``<system-out>``; the suite's ``flaky`` property counts them, and ``time_limits`` says
  whether limits were fixed or calibrated.

A gate's test case fails when the gate is not met. Characters that XML cannot hold (control
characters such as the ESC of coloured output, lone surrogates) are written as Python escapes
(``\\x1b``, ``\\udce9``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from ._calibrate import describe_time_limits
from ._gates import describe, gate_name
from ._types import SampleResult, task_order

_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TAIL = 4000
_MESSAGE = 300


def junit_xml(summary: Mapping[str, Any], results: Sequence[SampleResult], planned_tasks: Sequence[str] = ()) -> str:
    """The JUnit XML document of a run, from its summary and results (pure).

    ``planned_tasks``: the task ids the run planned, so that problems without any result (a run
    that did not finish) appear too, as skipped.
    """
    run = summary["run"]
    by_task: dict[str, list[SampleResult]] = {}
    for result in sorted(results, key=lambda r: r.sample_idx):
        by_task.setdefault(result.task_id, []).append(result)
    tasks = sorted({*by_task, *planned_tasks}, key=task_order)
    benchmark = str(run.get("benchmark") or "benchmark")
    root = ET.Element("testsuites", name=_text(f"evalkit: {run['name']}"))
    problems = _suite(root, benchmark, timestamp=run.get("started"), hostname=run.get("host"))
    _properties(problems, summary)
    for task in tasks:
        _problem_case(problems, benchmark, task, by_task.get(task, []))
    _close(problems)
    if summary.get("gates"):
        gates = _suite(root, "evalkit.gates")
        for gate in summary["gates"]:
            case = ET.SubElement(gates, "testcase", classname="evalkit.gates", name=_text(gate_name(gate)), time="0")
            if not gate["passed"]:
                ET.SubElement(case, "failure", type="gate", message=_text(describe(gate)))
            else:
                ET.SubElement(case, "system-out").text = _text(describe(gate))
        _close(gates)
    _close(root, suites=root.findall("testsuite"))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(root: ET.Element, name: str, **attributes: object) -> ET.Element:
    values = {key: _text(str(value)) for key, value in attributes.items() if value is not None}
    return ET.SubElement(root, "testsuite", {"name": _text(name), **values})


def _properties(suite: ET.Element, summary: Mapping[str, Any]) -> None:
    run = summary["run"]
    properties = ET.SubElement(suite, "properties")
    shown = {"run": run["name"], "model": run.get("model"), "driver": run.get("driver"), "isolation": run.get("isolation"), **summary["metrics"]}
    if summary.get("flaky") is not None:
        shown["flaky"] = summary["flaky"]["total"]
    if run.get("time_limits"):
        shown["time_limits"] = describe_time_limits(run["time_limits"])
    for name, value in shown.items():
        if value is not None:
            ET.SubElement(properties, "property", name=_text(name), value=_text(f"{value:.4f}" if isinstance(value, float) else str(value)))


def _problem_case(suite: ET.Element, benchmark: str, task: str, samples: Sequence[SampleResult]) -> None:
    case = ET.SubElement(suite, "testcase", classname=_text(benchmark), name=_text(task), time=f"{sum(r.duration_s for r in samples):.3f}")
    scored = [r for r in samples if r.status != "infra_error"]
    infra = [r for r in samples if r.status == "infra_error"]
    passed = sum(r.passed for r in scored)
    if not scored:
        why = f"infra_error: {len(infra)} sample(s) hit infrastructure failures: {infra[0].error}" if infra else "not run: the run did not finish"
        ET.SubElement(case, "skipped", message=_text(_first_line(why)))
        return
    if passed == 0:
        first = next(r for r in scored if not r.passed)
        failure = ET.SubElement(case, "failure", type=first.status, message=_text(_first_line(f"{first.status}: {first.error or 'did not pass'}")))
        failure.text = _text(_details(first, len(scored)))
    note = f"{passed} of {len(scored)} samples passed" + (f"; {len(infra)} infra_error sample(s) left out" if infra else "")
    flaky = [f"sample {r.sample_idx} was {r.first_status}, then {r.status} when re-run" for r in scored if r.flaky]
    if flaky:
        note += "; flaky (the re-run's verdict counts): " + "; ".join(flaky)
    ET.SubElement(case, "system-out").text = note


def _details(result: SampleResult, scored: int) -> str:
    parts = [f"sample {result.sample_idx} of {scored}: {result.status}", result.error or ""]
    for name, stream in (("stderr", result.stderr), ("stdout", result.stdout)):
        if stream:
            cut = len(stream) > _TAIL
            parts.append(f"--- {name}{' (last 4000 characters)' if cut else ''} ---\n{stream[-_TAIL:]}")
    return "\n".join(part for part in parts if part)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= _MESSAGE else line[: _MESSAGE - 3] + "..."


def _close(element: ET.Element, suites: Sequence[ET.Element] | None = None) -> None:
    """Set the counts and total time of a testsuite (from its cases) or of the root (from its suites)."""
    if suites is None:
        cases = element.findall("testcase")
        counts = {
            "tests": len(cases),
            "failures": sum(case.find("failure") is not None for case in cases),
            "errors": 0,
            "skipped": sum(case.find("skipped") is not None for case in cases),
        }
        time = sum(float(case.get("time", "0")) for case in cases)
    else:
        counts = {key: sum(int(suite.get(key, "0")) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}
        time = sum(float(suite.get("time", "0")) for suite in suites)
    for key, value in counts.items():
        element.set(key, str(value))
    element.set("time", f"{time:.3f}")


def _text(value: str) -> str:
    return _NOT_XML.sub(_escape, value)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
