"""junit.xml: one test case per problem, failures where the model failed, one case per gate."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import evalkit
from evalkit import SampleResult, score
from evalkit._junit import junit_xml

from ._runs import write_samples


def summary_of(results: list[SampleResult], gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    summary = score(results, [1])
    summary["run"] = {"name": "unit", "benchmark": "humaneval", "model": "samples", "driver": "bwrap", "isolation": "namespaces",
                      "started": "2026-11-27T10:15:00+00:00", "host": "ci-7"}
    summary["gates"] = gates or []
    return summary


def cases(root: ET.Element, suite: str) -> dict[str, ET.Element]:
    (found,) = [s for s in root.iter("testsuite") if s.get("name") == suite]
    return {case.get("name", ""): case for case in found.iter("testcase")}


def test_one_case_per_problem_with_failures_skips_and_counts(make_result) -> None:
    results = [
        make_result("HumanEval/10", 0, "passed", duration_s=0.5),
        make_result("HumanEval/10", 1, "failed", duration_s=0.25),
        make_result("HumanEval/2", 0, "timeout", error="timed out after 10 s", stdout="tick\n" * 3),
        make_result("HumanEval/2", 1, "failed", error="AssertionError", stderr="Traceback (most recent call last):\n  boom\nAssertionError\n"),
        make_result("HumanEval/3", 0, "infra_error", error="sandbox failed: agent died"),
        make_result("HumanEval/4", 0, "infra_error", error="sandbox failed"),
        make_result("HumanEval/4", 1, "passed"),
    ]
    root = ET.fromstring(junit_xml(summary_of(results), results, ["HumanEval/2", "HumanEval/3", "HumanEval/4", "HumanEval/10", "HumanEval/11"]))
    assert root.tag == "testsuites" and root.get("name") == "evalkit: unit"
    problems = cases(root, "humaneval")
    assert list(problems) == ["HumanEval/2", "HumanEval/3", "HumanEval/4", "HumanEval/10", "HumanEval/11"]
    assert all(case.get("classname") == "humaneval" for case in problems.values())
    assert problems["HumanEval/10"].get("time") == "0.750"
    # partly solved: passes, and says how far
    assert problems["HumanEval/10"].find("failure") is None
    assert problems["HumanEval/10"].findtext("system-out") == "1 of 2 samples passed"
    # nothing passed: a failure from the first failing sample (the timeout), with its output
    failure = problems["HumanEval/2"].find("failure")
    assert failure is not None and failure.get("type") == "timeout" and failure.get("message") == "timeout: timed out after 10 s"
    assert "sample 0 of 2: timeout" in (failure.text or "") and "--- stdout ---\ntick" in (failure.text or "")
    # infra_error only, or never run: skipped, not failed
    skipped = problems["HumanEval/3"].find("skipped")
    assert skipped is not None and skipped.get("message") == "infra_error: 1 sample(s) hit infrastructure failures: sandbox failed: agent died"
    assert problems["HumanEval/11"].find("skipped") is not None
    assert problems["HumanEval/4"].findtext("system-out") == "1 of 1 samples passed; 1 infra_error sample(s) left out"
    suite = next(root.iter("testsuite"))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("5", "1", "2", "0")
    assert suite.get("hostname") == "ci-7" and suite.get("timestamp") == "2026-11-27T10:15:00+00:00"
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["pass@1"] == "0.5000"  # HumanEval/3 has no scored sample


def test_one_case_per_gate(make_result) -> None:
    results = [make_result("HumanEval/0")]
    gates = [
        {"metric": "pass@1", "condition": ">= 0.60", "value": 0.55, "passed": False, "note": None},
        {"metric": "no_significant_regression", "condition": "true", "value": True, "passed": True, "note": None},
    ]
    root = ET.fromstring(junit_xml(summary_of(results, gates), results))
    judged = cases(root, "evalkit.gates")
    assert list(judged) == ["pass@1 >= 0.60", "no_significant_regression"]
    failure = judged["pass@1 >= 0.60"].find("failure")
    assert failure is not None and failure.get("message") == "pass@1 = 0.5500, needs >= 0.60"
    assert judged["no_significant_regression"].find("failure") is None
    assert (root.get("tests"), root.get("failures")) == ("3", "1")


def test_text_xml_cannot_hold_is_escaped(make_result) -> None:
    noisy = "\x1b[31mred\x1b[0m \x00 \udce9 fine: é ✓"
    results = [make_result("HumanEval/0", 0, "failed", error=f"AssertionError {noisy}", stderr=noisy)]
    document = junit_xml(summary_of(results), results)
    failure = ET.fromstring(document).find(".//failure")
    assert failure is not None
    assert "\\x1b[31mred\\x1b[0m \\x00 \\udce9 fine: é ✓" in (failure.text or "") and "\\x1b" in failure.get("message", "")


def test_long_output_keeps_its_tail(make_result) -> None:
    stderr = "noise\n" * 5000 + "Traceback (most recent call last):\nValueError: the real reason\n"
    results = [make_result("HumanEval/0", 0, "failed", stderr=stderr)]
    failure = ET.fromstring(junit_xml(summary_of(results), results)).find(".//failure")
    assert failure is not None and "--- stderr (last 4000 characters) ---" in (failure.text or "")
    assert (failure.text or "").endswith("ValueError: the real reason\n") and len(failure.text or "") < 4500


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_a_real_run_writes_junit_with_one_case_per_problem(tmp_path: Path) -> None:
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(None, 5)
    samples = write_samples(tmp_path / "s.jsonl", {"HumanEval/1", "HumanEval/3"}, count=5)
    (tmp_path / "c.yaml").write_text(
        "name: junit\nbenchmark: {name: humaneval, limit: 5}\nmodel: {provider: samples, path: s.jsonl}\n"
        f"gates: {{'pass@1': '>= 0.5'}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    assert samples.is_file()
    outcome = evalkit.run(tmp_path / "c.yaml", progress=False)
    root = ET.parse(outcome.run_dir / "junit.xml").getroot()
    problem_cases = cases(root, "humaneval")
    assert list(problem_cases) == [p.task_id for p in problems]
    failed = {name for name, case in problem_cases.items() if case.find("failure") is not None}
    assert failed == {"HumanEval/1", "HumanEval/3"}
    failure = problem_cases["HumanEval/1"].find("failure")
    assert failure is not None and failure.get("type") == "failed" and "AssertionError" in (failure.text or "")
    assert [case.get("name") for case in cases(root, "evalkit.gates").values()] == ["pass@1 >= 0.5"]
    assert root.get("failures") == "2" and root.get("tests") == "6"
