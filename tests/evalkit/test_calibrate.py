"""Calibrated per-problem time limits: the rule, and real runs (bubblewrap sandboxes, a local Ray)
whose reference solutions burn a known amount of CPU time."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit._calibrate import (
    CALIBRATION_FILE,
    Calibration,
    ReferenceTiming,
    cpu_limit,
    describe_time_limits,
    read_calibration,
    reference_requests,
    wall_limit,
)

# --- the rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t_ref", "factor", "floor", "cap", "expected"),
    [
        (0.003, 4.0, 1.0, 10.0, 1.0),  # HumanEval's references: the floor
        (0.25, 4.0, 1.0, 10.0, 1.0),  # exactly the floor
        (0.26, 4.0, 1.0, 10.0, 2.0),  # 1.04 s: rounded up to the whole second vmpool enforces
        (0.6, 4.0, 1.0, 10.0, 3.0),
        (2.2, 4.0, 1.0, 10.5, 9.0),
        (3.0, 4.0, 1.0, 10.5, 10.5),  # capped by timeout_s, even where that is not whole
        (100.0, 4.0, 1.0, 10.0, 10.0),  # a reference far slower than the cap: never unbounded
        (0.0, 4.0, 1.5, 10.0, 2.0),  # a fractional floor is rounded up too
        (0.1, 10.0, 0.5, 0.75, 0.75),  # a cap below a whole second wins
    ],
)
def test_the_cpu_limit_is_factor_times_the_reference_clamped_and_rounded_up(t_ref: float, factor: float, floor: float, cap: float, expected: float) -> None:
    assert cpu_limit(t_ref, factor, floor, cap) == expected


def test_the_wall_limit_is_a_multiple_of_the_cpu_limit_at_most_the_timeout() -> None:
    assert wall_limit(1.0, 10.0) == 5.0
    assert wall_limit(3.0, 10.0) == 10.0
    assert wall_limit(10.0, 10.0) == 10.0


def _timing(status: str, cpu_limit_s: float, calibrated: bool = True) -> ReferenceTiming:
    return ReferenceTiming.model_validate(
        {"status": status, "runs": 1, "cpu_s": 0.1, "wall_s": 0.1, "calibrated": calibrated, "cpu_limit_s": cpu_limit_s, "wall_limit_s": 5 * cpu_limit_s}
    )


def test_a_calibration_describes_itself_for_the_summary(tmp_path: Path) -> None:
    calibration = Calibration(
        factor=4.0, min_time_s=1.0, timeout_s=10.0, driver="bwrap", isolation="ns", host="h", machine="m", measured="2026-11-28T00:00:00+00:00",
        duration_s=1.0,
        problems={"a": _timing("passed", 1.0), "b": _timing("passed", 3.0), "c": _timing("passed", 2.0),
                  "d": _timing("timeout", 10.0, calibrated=False), "e": _timing("no_reference", 10.0, calibrated=False)},
    )
    described = calibration.describe()
    assert (described["calibrated_problems"], described["fixed_problems"], described["median_cpu_limit_s"], described["max_cpu_limit_s"]) == (3, 2, 2.0, 3.0)
    assert described["unusable_references"] == {"d": {"status": "timeout", "error": None}}
    assert describe_time_limits(described) == (
        "calibrated from reference solutions: 4x factor, min 1 s, at most 10 s, median CPU limit 2 s; "
        "2 problem(s) without a usable reference keep the fixed limits"
    )
    assert calibration.time_limits()["b"].cpu_s == 3.0 and calibration.time_limits()["e"].cpu_s == 10.0
    (tmp_path / CALIBRATION_FILE).write_text(calibration.model_dump_json())
    assert read_calibration(tmp_path) == calibration
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({**json.loads(calibration.model_dump_json()), "format_version": 2}))
    with pytest.raises(evalkit.RunStoreError, match="format_version"):
        read_calibration(tmp_path)
    assert read_calibration(tmp_path / "nowhere") is None


# --- real runs ------------------------------------------------------------------------------


def _burn(seconds: float) -> str:
    """A function body that burns ``seconds`` of CPU time, then answers correctly: the same
    CPU time on any machine, so the verdicts below do not depend on the machine's speed."""
    return f"    import time\n    end = time.process_time() + {seconds}\n    while time.process_time() < end:\n        pass\n    return x + 1\n"


CORRECT = "    return x + 1\n"
LOOP = "    while True:\n        pass\n"
TEST = "def check(candidate):\n    assert candidate(1) == 2\n"
PROBLEMS = [
    # the reference burns 0.5 s: calibrated, the CPU limit is ceil(4 x ~0.5) = 3 s
    {"task_id": "burn/0", "prompt": "def burn(x):\n", "entry_point": "burn", "test": TEST, "canonical_solution": _burn(0.5)},
    {"task_id": "plain/1", "prompt": "def inc(x):\n", "entry_point": "inc", "test": TEST},  # no reference
    {"task_id": "wrongref/2", "prompt": "def inc(x):\n", "entry_point": "inc", "test": TEST, "canonical_solution": "    return x\n"},
]
SAMPLES = [("burn/0", _burn(1.5)), ("burn/0", LOOP), ("plain/1", CORRECT), ("wrongref/2", CORRECT)]


def _write_run_config(tmp_path: Path, name: str, **sandbox: Any) -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in SAMPLES))
    config = {
        "name": name,
        "benchmark": {"path": "problems.jsonl"},
        "model": {"provider": "samples", "path": "samples.jsonl"},
        # a fixed CPU limit of 1 s is too tight for burn/0, whose reference alone takes 0.5 s
        "sandbox": {"driver": "bwrap", "timeout_s": 10, "cpu_time_s": 1, "recheck_failures": False, **sandbox},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("evalkit")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _row(frame: pd.DataFrame, task_id: str, sample_idx: int) -> Any:
    return frame[(frame.task_id == task_id) & (frame.sample_idx == sample_idx)].iloc[0]


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_calibrated_limits_let_slow_correct_code_pass_where_the_fixed_limit_times_it_out(tmp_path: Path, warnings: list[str]) -> None:
    fixed = evalkit.run(_write_run_config(tmp_path, "fixed"), progress=False)
    frame = evalkit.load_run(fixed.run_dir).samples
    assert _row(frame, "burn/0", 0).status == "timeout", "1.5 s of CPU under a fixed 1 s limit"
    assert set(frame["cpu_limit_s"]) == {1.0} and set(frame["wall_limit_s"]) == {10.0}
    assert fixed.summary["run"]["time_limits"] == {"mode": "fixed", "cpu_limit_s": 1.0, "wall_limit_s": 10.0}
    assert not (fixed.run_dir / CALIBRATION_FILE).exists()

    calibrated = evalkit.run(_write_run_config(tmp_path, "calibrated", time_limit="calibrated"), progress=False)
    recorded = json.loads((calibrated.run_dir / CALIBRATION_FILE).read_text())
    burn = recorded["problems"]["burn/0"]
    assert burn["status"] == "passed" and burn["calibrated"] and burn["runs"] == 3, "a reference whose time matters is measured three times"
    assert 0.5 <= burn["cpu_s"] < 0.75 and burn["cpu_limit_s"] == 3.0 and burn["wall_limit_s"] == 10.0
    assert recorded["problems"]["plain/1"] | {"cpu_limit_s": 1.0, "wall_limit_s": 10.0, "calibrated": False, "status": "no_reference"} == recorded["problems"]["plain/1"]
    wrong = recorded["problems"]["wrongref/2"]
    assert (wrong["status"], wrong["calibrated"], wrong["cpu_limit_s"]) == ("failed", False, 1.0), "a failing reference is never used"
    assert any("wrongref/2" in message and "did not pass in calibration" in message for message in warnings), warnings
    assert (recorded["driver"], recorded["factor"], recorded["min_time_s"]) == ("bwrap", 4.0, 1.0) and recorded["machine"]

    frame = evalkit.load_run(calibrated.run_dir).samples
    slow, loop = _row(frame, "burn/0", 0), _row(frame, "burn/0", 1)
    assert slow.status == "passed" and slow.cpu_limit_s == 3.0 and slow.cpu_time_s > 1.0
    # a busy loop still times out: the limit scales with the reference, it is never unbounded
    assert loop.status == "timeout" and loop.cpu_limit_s == 3.0 and "cpu-time limit of 3s" in loop.error
    assert _row(frame, "plain/1", 0).cpu_limit_s == 1.0 and _row(frame, "wrongref/2", 0).cpu_limit_s == 1.0
    assert _row(frame, "plain/1", 0).status == "passed"

    limits = calibrated.summary["run"]["time_limits"]
    assert (limits["mode"], limits["calibrated_problems"], limits["fixed_problems"], limits["median_cpu_limit_s"]) == ("calibrated", 1, 2, 3.0)
    assert limits["unusable_references"] == {"wrongref/2": {"status": "failed", "error": wrong["error"]}}
    html = (calibrated.run_dir / "report.html").read_text()
    assert "time limits</dt><dd>calibrated from reference solutions: 4x factor, min 1 s, at most 10 s, median CPU limit 3 s" in html
    assert "references that did not pass in calibration" in html and "wrongref/2</a> (failed)" in html
    junit = (calibrated.run_dir / "junit.xml").read_text()
    assert 'name="time_limits" value="calibrated from reference solutions' in junit

    # A recheck applies the limits the run applied: under the fixed 1 s, the slow sample would time out.
    again = evalkit.recheck(calibrated.run_dir, workers=1, batch_size=1, progress=False)
    assert again.identical and again.exit_code == 0, again.determinism


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_resume_applies_the_recorded_calibration_and_never_measures_again(tmp_path: Path) -> None:
    config = {
        "name": "t",
        "benchmark": {"name": "humaneval", "limit": 2},
        "model": {"provider": "reference"},
        "sandbox": {"driver": "bwrap", "time_limit": "calibrated"},
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    first = evalkit.run(tmp_path / "t.yaml", progress=False)
    assert {r["cpu_limit_s"] for r in map(json.loads, (first.run_dir / "samples.jsonl").read_text().splitlines())} == {1.0}
    journal = first.run_dir / "samples.jsonl"
    kept = [line for line in journal.read_text().splitlines() if json.loads(line)["task_id"] == "HumanEval/0"]
    journal.write_text(kept[0] + "\n")  # as if interrupted after HumanEval/0
    evalkit.RunStore.open(first.run_dir).write_meta(state="interrupted")
    # Edit the recorded limits of HumanEval/1: a resumed run applies what the file says.
    path = first.run_dir / CALIBRATION_FILE
    recorded = json.loads(path.read_text())
    recorded["problems"]["HumanEval/1"].update(cpu_limit_s=7.0, wall_limit_s=9.0)
    path.write_text(json.dumps(recorded))
    edited = path.read_text()

    resumed = evalkit.resume(first.run_dir, progress=False)
    assert resumed.summary["counts"]["passed"] == 2
    results = {r.task_id: r for r in evalkit.load_run(first.run_dir).results}
    assert (results["HumanEval/1"].cpu_limit_s, results["HumanEval/1"].wall_limit_s) == (7.0, 9.0)
    assert results["HumanEval/0"].cpu_limit_s == 1.0
    assert path.read_text() == edited, "calibration.json is read, never measured or written again"

    # Verdicts without their calibration: the rest cannot get the same limits, so no resume.
    journal.write_text(kept[0] + "\n")
    evalkit.RunStore.open(first.run_dir).write_meta(state="interrupted")
    path.unlink()
    with pytest.raises(evalkit.RunStoreError, match="no calibration.json"):
        evalkit.resume(first.run_dir, progress=False)


def test_references_run_under_the_ceiling_not_the_fixed_cpu_limit(tmp_path: Path) -> None:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    benchmark = evalkit.get_benchmark(evalkit.BenchmarkConfig(path=str(tmp_path / "problems.jsonl")))
    requests = reference_requests(benchmark, benchmark.problems(), 10.0, runs=2, first=1)
    assert [(r.sample.task_id, r.sample.sample_idx) for r in requests] == [("burn/0", 1), ("burn/0", 2), ("wrongref/2", 1), ("wrongref/2", 2)]
    assert {r.time_limits for r in requests} == {evalkit.TimeLimits(cpu_s=10.0, wall_s=10.0)}
    assert requests[0].program == benchmark.program(benchmark.problems()[0], PROBLEMS[0]["canonical_solution"])
