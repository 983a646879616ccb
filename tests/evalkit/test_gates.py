"""Gates: parsed when the config loads, judged when the run ends, and the exit code CI sees."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import evalkit
from evalkit import ConfigError, SampleResult, load_config, score
from evalkit._gates import Gate, evaluate_gates, parse_gate
from evalkit._results import exit_code

from ._runs import BROKEN_IN_A, BROKEN_IN_B, PROBLEMS, reference_problems, write_config
from .model_server import Fault, ModelServer, humaneval_replies

EVALKIT = [sys.executable, "-m", "evalkit"]
REFERENCE = "benchmark: {name: humaneval}\nmodel: {provider: reference}\n"


def evalkit_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVALKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gated.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return str(info.value)


# Parsing -----------------------------------------------------------------------------------


VALUES = (0.0, 0.005, 0.01, 0.5, 0.59, 0.6, 0.61, 1 - 1e-12, 1.0)


@pytest.mark.parametrize(
    ("condition", "holds_at"),
    [
        (">= 0.6", VALUES[5:]),
        ("> 0.6", VALUES[6:]),
        ("<= 0.01", VALUES[:3]),
        ("< 0.01", VALUES[:2]),
        ("== 1", VALUES[7:]),  # 1 - 1e-12 is 1 to within the tolerance
        (">=.5", VALUES[3:]),
    ],
)
def test_conditions(condition: str, holds_at: tuple[float, ...]) -> None:
    gate = parse_gate("pass@1", condition, [1])
    assert [value for value in VALUES if gate.holds(value)] == list(holds_at)


def test_a_boundary_value_that_rounding_moved_still_meets_the_gate() -> None:
    value = sum([0.1] * 6)  # 0.6000000000000001
    assert parse_gate("pass@1", "<= 0.6", [1]).holds(value)
    assert not parse_gate("pass@1", "< 0.6", [1]).holds(value)


def test_boolean_and_baseline_gates() -> None:
    gate = parse_gate("no_significant_regression", True, [1])
    assert gate == Gate("no_significant_regression", "is", 1.0, "true") and gate.needs_baseline
    assert parse_gate("pass@1_delta", ">= -0.02", [1]).needs_baseline
    assert not parse_gate("timeout_rate", "<= 0.1", [1]).needs_baseline


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('  pass1: ">= 0.6"\n', ["unknown gate 'gates.pass1'", "pass@1, infra_error_rate, timeout_rate, failed_rate, oom_rate, pass@1_delta, no_significant_regression"]),
        ('  "pass@10": ">= 0.6"\n', ["'gates.pass@10' needs 10 in sampling.k (now [1])"]),
        ("  pass@1: 0.6\n", ["gates.pass@1", "condition in quotes", '">= 0.6"', "got 0.6"]),
        ('  pass@1: "at least 0.6"\n', ["gates.pass@1", "'at least 0.6'", "an operator (>=, <=, ==, >, <) and a number"]),
        ('  pass@1: ">= 60"\n', ["gates.pass@1", "fraction between 0 and 1", "60% as 0.6"]),
        ('  pass@1_delta: ">= -2"\n', ["gates.pass@1_delta", "between -1 and 1"]),
        ("  no_significant_regression: false\n", ["gates.no_significant_regression", "takes true"]),
        ("  pass@1: >= 0.6\n", ["invalid YAML", "put a gate's condition in quotes"]),
    ],
)
def test_a_bad_gate_is_a_config_error_naming_the_line_and_key(tmp_path: Path, line: str, fragments: list[str]) -> None:
    message = config_error(tmp_path, REFERENCE + "gates:\n  infra_error_rate: \"<= 0.01\"\n" + line)
    assert "line 5" in message, message
    for fragment in fragments[1:] if fragments[0] == "invalid YAML" else fragments:
        assert fragment in message, (fragment, message)


def test_gates_keep_their_order_and_text(tmp_path: Path) -> None:
    path = tmp_path / "gated.yaml"
    path.write_text(REFERENCE + 'sampling: {n: 5, k: [1, 5]}\ngates:\n  timeout_rate: "<= 0.05"\n  "pass@5": ">=0.90"\n  pass@1: "> .5"\n')
    config = load_config(path)
    assert [(g.metric, g.condition) for g in config.parsed_gates()] == [("timeout_rate", "<= 0.05"), ("pass@5", ">= 0.90"), ("pass@1", "> .5")]
    assert yaml.safe_load(config.to_yaml())["gates"] == {"timeout_rate": "<= 0.05", "pass@5": ">=0.90", "pass@1": "> .5"}


def test_the_baseline_is_a_run_folder_relative_to_the_config(tmp_path: Path) -> None:
    message = config_error(tmp_path, REFERENCE + "baseline: runs/yesterday\n")
    assert "line 3" in message and "'baseline' names runs/yesterday, which is not an evalkit run folder" in message
    folder = tmp_path / "runs" / "yesterday"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    (tmp_path / "gated.yaml").write_text(REFERENCE + "baseline: runs/yesterday\n")
    assert load_config(tmp_path / "gated.yaml").baseline == str(folder)


# Judging a summary ---------------------------------------------------------------------------


def summary_of(results: list[SampleResult], *, planned: int | None = None, state: str = "finished", ks: tuple[int, ...] = (1,)) -> dict[str, Any]:
    summary = score(results, ks)
    with_verdict = sum(r.status != "infra_error" for r in results)
    planned = len(results) if planned is None else planned
    summary["run"] = {"state": state, "planned_samples": planned, "complete": state == "finished" and with_verdict == planned, "name": "t"}
    return summary


def judge(summary: dict[str, Any], gates: dict[str, object]) -> dict[str, Any]:
    summary["gates"] = evaluate_gates([parse_gate(m, c, [1, 10]) for m, c in gates.items()], summary)
    summary["gates_passed"] = all(g["passed"] for g in summary["gates"])
    return summary


@pytest.fixture
def ten(make_result) -> list[SampleResult]:
    """Ten problems: 6 passed, 2 failed, 1 timeout, 1 infra_error."""
    statuses = ["passed"] * 6 + ["failed"] * 2 + ["timeout", "infra_error"]
    return [make_result(f"T/{i}", 0, status) for i, status in enumerate(statuses)]


def test_metric_values(ten: list[SampleResult]) -> None:
    summary = judge(summary_of(ten), {"pass@1": ">= 0.6", "infra_error_rate": "<= 0.05", "timeout_rate": "<= 0.2", "failed_rate": "< 0.2", "oom_rate": "== 0"})
    values = {g["metric"]: (g["value"], g["passed"]) for g in summary["gates"]}
    assert values == {
        "pass@1": (pytest.approx(6 / 9), True),  # infra_error is left out of pass@k
        "infra_error_rate": (0.1, False),  # over planned samples
        "timeout_rate": (pytest.approx(1 / 9), True),  # over samples with a verdict
        "failed_rate": (pytest.approx(2 / 9), False),
        "oom_rate": (0.0, True),
    }


def test_a_metric_that_cannot_be_computed_fails_its_gate_with_the_reason(ten: list[SampleResult]) -> None:
    summary = judge(summary_of(ten, ks=(1, 10)), {"pass@10": ">= 0.5", "no_significant_regression": True, "pass@1_delta": ">= 0"})
    assert [(g["value"], g["passed"]) for g in summary["gates"]] == [(None, False)] * 3
    assert "needs n >= 10" in summary["gates"][0]["note"]
    assert summary["gates"][1]["note"] == "no baseline run to compare with"


def test_infrastructure_beats_gates(ten: list[SampleResult], make_result) -> None:
    # an infra_error and no tolerance: 3, whatever the gates say
    assert exit_code(judge(summary_of(ten), {"pass@1": ">= 0.9"})) == 3
    assert exit_code(judge(summary_of(ten), {})) == 3
    # an infra_error_rate gate is the tolerance: within it, the other gates decide
    assert exit_code(judge(summary_of(ten), {"infra_error_rate": "<= 0.1", "pass@1": ">= 0.9"})) == 1
    assert exit_code(judge(summary_of(ten), {"infra_error_rate": "<= 0.1", "pass@1": ">= 0.6"})) == 0
    # beyond it: 3, even with another gate not met
    assert exit_code(judge(summary_of(ten), {"infra_error_rate": "<= 0.05", "pass@1": ">= 0.9"})) == 3
    # a run that did not finish is 3, tolerance or not
    clean = [make_result(f"T/{i}") for i in range(4)]
    assert exit_code(judge(summary_of(clean, planned=5, state="interrupted"), {"infra_error_rate": "<= 0.5"})) == 3
    assert exit_code(judge(summary_of(clean), {"pass@1": "== 1"})) == 0
    assert exit_code(judge(summary_of(clean), {"pass@1": "< 1"})) == 1


# Through the real CLI: real sandboxes, a real Ray --------------------------------------------

CI_LINE = re.compile(r"evalkit: (?P<name>\S+) pass@1=(?P<value>[\d.]+) \[(?P<low>[\d.]+), (?P<high>[\d.]+)\] \((?P<problems>\d+) problems, (?P<infra>\d+) infra_error\) (?P<gates>.*) -> exit (?P<code>\d)")


def last_line(proc: subprocess.CompletedProcess[str]) -> re.Match[str]:
    line = proc.stdout.strip().splitlines()[-1]
    match = CI_LINE.fullmatch(line)
    assert match is not None, line
    return match


def run_folder(folder: Path, name: str) -> Path:
    (found,) = (folder / "runs").glob(f"{name}-*")
    return found


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes")
def test_gates_met_exit_0_and_not_met_exit_1_and_report_regates(tmp_path: Path) -> None:
    base = write_config(tmp_path, "base", BROKEN_IN_A, gates={"pass@1": ">= 0.80", "infra_error_rate": "<= 0.01"})
    met = evalkit_cli("run", base.name, "--quiet", cwd=tmp_path)
    assert met.returncode == 0, met.stderr
    line = last_line(met)
    assert line["name"] == "base" and line["value"] == "0.8750" and line["problems"] == str(PROBLEMS) and line["infra"] == "0"
    assert float(line["low"]) <= 0.875 <= float(line["high"])
    assert line["gates"] == "gates: 2/2 met" and line["code"] == "0"
    assert "gate pass@1 >= 0.80: met (pass@1 = 0.8750, needs >= 0.80)" in met.stdout

    worse = write_config(tmp_path, "next", BROKEN_IN_B, gates={"pass@1": ">= 0.80", "no_significant_regression": True})
    run_a = run_folder(tmp_path, "base")
    missed = evalkit_cli("run", worse.name, "--quiet", "--baseline", str(run_a), cwd=tmp_path)
    assert missed.returncode == 1, missed.stderr
    line = last_line(missed)
    assert line["gates"] == "gates: 1/2 met (not met: pass@1 = 0.6250, needs >= 0.80)" and line["code"] == "1"
    assert "gate pass@1 >= 0.80: NOT MET" in missed.stdout
    assert "against the baseline: pass@1 -0.2500 over 8 problems, p = 0.625 (3 regressed, 1 improved" in missed.stdout
    run_b = run_folder(tmp_path, "next")
    summary = json.loads((run_b / "summary.json").read_text())
    assert summary["gates_passed"] is False
    assert [(g["metric"], g["passed"]) for g in summary["gates"]] == [("pass@1", False), ("no_significant_regression", True)]
    assert summary["comparison"] == json.loads((run_b / "comparison.json").read_text())
    assert {c["task_id"] for c in summary["comparison"]["regressed"]} == BROKEN_IN_B
    assert yaml.safe_load((run_b / "config.yaml").read_text())["baseline"] == str(run_a), "--baseline is recorded in the run"

    # report re-gates from the stored results and returns the same exit code, running nothing
    journal = (run_b / "samples.jsonl").read_bytes()
    again = evalkit_cli("report", str(run_b), cwd=tmp_path)
    assert again.returncode == 1 and last_line(again)["gates"] == line["gates"]
    shown = json.loads(evalkit_cli("report", "--json", str(run_b), cwd=tmp_path).stdout)
    assert shown["exit_code"] == 1 and shown["gates_passed"] is False and shown["metrics_ci"]["pass@1"][0] <= 0.625
    # compared with itself, B shows no change; without a comparison the baseline gate cannot be judged
    itself = evalkit_cli("report", str(run_b), "--baseline", str(run_b), cwd=tmp_path)
    assert "against the baseline: pass@1 +0.0000" in itself.stdout and itself.returncode == 1
    config = yaml.safe_load((run_b / "config.yaml").read_text())
    config["gates"] = {"pass@1": ">= 0.6"}
    config["baseline"] = None
    (run_b / "config.yaml").write_text(yaml.safe_dump(config))
    relaxed = evalkit_cli("report", str(run_b), cwd=tmp_path)
    assert relaxed.returncode == 0 and last_line(relaxed)["gates"] == "gates: 1/1 met"
    assert not (run_b / "comparison.json").exists(), "a comparison with a baseline that is gone is not left behind"
    assert (run_b / "samples.jsonl").read_bytes() == journal


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_a_significant_regression_fails_its_gate(tmp_path: Path) -> None:
    base = evalkit.run(write_config(tmp_path, "base", BROKEN_IN_A), progress=False)
    everything = {p.task_id for p in reference_problems()}
    broken = write_config(tmp_path, "broken", everything, gates={"no_significant_regression": True, "pass@1_delta": ">= -0.9"}, baseline=str(base.run_dir))
    outcome = evalkit.run(broken, progress=False)
    assert outcome.exit_code == 1
    comparison = evalkit.Comparison.from_dict(outcome.summary["comparison"])
    assert comparison.significant_regression and comparison.p_value == pytest.approx(2 / 2**7)
    assert {c.task_id for c in comparison.regressed} == everything - BROKEN_IN_A and comparison.improved == []
    regression, delta = outcome.summary["gates"]
    assert regression["passed"] is False and regression["value"] is False and "p = 0.01562 < 0.05" in regression["note"]
    assert delta["passed"] is True and delta["value"] == pytest.approx(-7 / 8)
    # resume of a finished run only re-reports it: against another baseline (itself), nothing regressed
    again = evalkit.resume(outcome.run_dir, progress=False, baseline=outcome.run_dir)
    assert again.exit_code == 0 and again.summary["comparison"]["regressed"] == []
    assert [g["passed"] for g in again.summary["gates"]] == [True, True]


def test_a_gate_that_needs_a_baseline_without_one_exits_2_before_running(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(REFERENCE + "gates:\n  no_significant_regression: true\n")
    proc = evalkit_cli("run", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "c.yaml, line 4: gate 'no_significant_regression' compares with a baseline run" in proc.stderr
    assert "--baseline RUN_DIR" in proc.stderr
    assert not (tmp_path / "reports").exists(), "nothing ran"


def test_a_baseline_that_is_not_a_run_exits_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(REFERENCE)
    proc = evalkit_cli("run", "c.yaml", "--baseline", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "baseline:" in proc.stderr and "not an evalkit run folder" in proc.stderr


@pytest.mark.parametrize(
    ("gates", "fragment"),
    [('  "pass@2": ">= 0.5"\n', "gates.pass@2"), ("  pass@1: 1\n", "condition in quotes"), ("  pass@1: >= 1\n", "in quotes")],
)
def test_bad_gates_exit_2_naming_the_key(tmp_path: Path, gates: str, fragment: str) -> None:
    (tmp_path / "c.yaml").write_text(REFERENCE + "gates:\n" + gates)
    proc = evalkit_cli("run", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "c.yaml, line 4" in line and fragment in line


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_infrastructure_failures_beat_gates_unless_within_the_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model API that keeps failing for one problem (infra_error) and answers another wrongly."""
    problems = reference_problems(6)
    down, wrong = problems[1], problems[4]
    solve = humaneval_replies(problems)
    monkeypatch.setenv("EVALKIT_TEST_MODEL_KEY", "sk-test")

    def reply(kind: Any, prompt_text: str, index: int) -> str:
        return "I don't know" if wrong.prompt.strip() in prompt_text else solve(kind, prompt_text, index)

    def fault(number: int, path: str, body: dict[str, Any]) -> Fault | None:
        return Fault(status=503, message="overloaded") if down.prompt.strip() in str(body["messages"][-1]["content"]) else None

    def config(gates: dict[str, str]) -> Path:
        model = {"provider": "openai", "name": "m", "base_url": server.url + "/v1", "api_key_env": "EVALKIT_TEST_MODEL_KEY",
                 "max_retries": 1, "backoff_s": 0.01, "cache": False}
        return write_config(tmp_path, "api", (), count=6, model=model, gates=gates)

    with ModelServer(api_key="sk-test", reply=reply, fault=fault) as server:
        strict = evalkit.run(config({"pass@1": ">= 0.9"}), progress=False)
        assert strict.summary["counts"]["infra_error"] == 1 and strict.summary["counts"]["failed"] == 1
        assert strict.summary["gates_passed"] is False
        assert strict.exit_code == 3, "infrastructure beats gates"
        tolerant = evalkit.run(config({"infra_error_rate": "<= 0.2", "pass@1": ">= 0.9"}), progress=False)
        assert tolerant.exit_code == 1, tolerant.summary["gates"]
        assert tolerant.summary["gates"][0] == {"metric": "infra_error_rate", "condition": "<= 0.2", "value": pytest.approx(1 / 6), "passed": True, "note": None}
    junit = (tolerant.run_dir / "junit.xml").read_text()
    assert f'name="{down.task_id}"' in junit and "infra_error: 1 sample(s) hit infrastructure failures" in junit


def test_the_shipped_nightly_config_gates_without_a_baseline(repo_root: Path) -> None:
    config = load_config(repo_root / "configs" / "nightly.yaml")
    assert [(g.metric, g.condition) for g in config.parsed_gates()] == [("pass@1", ">= 0.60"), ("infra_error_rate", "<= 0.01"), ("timeout_rate", "<= 0.05")]
    assert config.baseline is None, "a shipped config cannot name a run folder that exists"
    assert (config.model.model_extra or {})["cache"] is False, "a nightly checkpoint keeps its name: last night's completions must not be reused"
    text = (repo_root / "configs" / "nightly.yaml").read_text()
    assert "# no_significant_regression: true" in text and "# baseline:" in text
