"""`load_run` and `load_runs` on real runs (real bubblewrap sandboxes, a real local Ray), and the
example notebook executed with nbclient against one."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit import BenchmarkConfig, Problem, RunStoreError
from evalkit._frames import PROBLEM_DTYPES, RUN_COLUMNS, SAMPLE_DTYPES

from ..conftest import bwrap_missing_reason
from ._mixed import LOOP
from .model_server import ModelServer, humaneval_replies

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "reports" / "analysis.ipynb"
IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/53"]
HTML_ERROR = "<b>boom</b> & 'co'"



@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).select(IDS, None)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp("runs")


def run_config(folder: Path, name: str, model: dict[str, Any], **sections: Any) -> Path:
    config = {"name": name, "benchmark": {"name": "humaneval", "ids": IDS}, "model": model, "output_dir": str(folder), **sections}
    path = folder.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mixed(runs_dir: Path, problems: list[Problem]) -> Path:
    """A finished run: per problem a crash (its error holds HTML), the reference solution and a
    wrong answer; HumanEval/0 also loops into a timeout. pass@1..3 are reported, pass@10 not."""
    rows = []
    for p in problems:
        rows += [(p.task_id, f"    raise ValueError({HTML_ERROR!r})\n"), (p.task_id, p.canonical_solution or ""), (p.task_id, "    return None\n")]
    rows.append((IDS[0], LOOP))
    samples = runs_dir.parent / "mixed-samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows), encoding="utf-8")
    config = run_config(runs_dir, "mixed", {"provider": "samples", "path": str(samples)}, sampling={"n": 1, "k": [1, 2, 3, 10]}, sandbox={"timeout_s": 2})
    outcome = evalkit.run(config, progress=False)
    assert outcome.summary["counts"] == {"passed": 3, "failed": 6, "timeout": 1, "oom": 0, "infra_error": 0}
    return outcome.run_dir


@pytest.fixture(scope="module")
def baseline(runs_dir: Path) -> Path:
    """The reference solutions of the same problems: every sample passes."""
    outcome = evalkit.run(run_config(runs_dir, "baseline", {"provider": "reference"}), progress=False)
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    return outcome.run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a run folder, its files' times kept (so what is current stays current)."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def keep_journal_lines(run_dir: Path, count: int) -> list[str]:
    journal = run_dir / "samples.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    journal.write_text("".join(lines[:count]), encoding="utf-8")
    return lines


def assert_dtypes(frame: pd.DataFrame, expected: dict[str, Any]) -> None:
    assert list(frame.columns) == list(expected)
    for column, dtype in expected.items():
        assert frame[column].dtype == pd.api.types.pandas_dtype(dtype), (column, frame[column].dtype, dtype)


def readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Analysing runs in Jupyter\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README has a section 'Analysing runs in Jupyter'"
    return match.group(1)


@pytest.mark.parametrize("frame", ["samples", "problems"])
def test_every_column_is_documented_in_the_docstring_and_the_readme(frame: str) -> None:
    columns = SAMPLE_DTYPES if frame == "samples" else PROBLEM_DTYPES
    docstring = evalkit.Run.__doc__ or ""
    section = readme_section()
    for column in columns:
        assert f"``{column}``" in docstring, column
        assert f"`{column}`" in section, column
    for column in RUN_COLUMNS:
        assert f"``{column}``" in (evalkit.load_runs.__doc__ or "") and f"`{column}`" in section, column


@pytest.mark.ray
@pytest.mark.sandbox
def test_samples_frame_has_the_documented_columns_and_the_parquets_rows(mixed: Path) -> None:
    run = evalkit.load_run(mixed)
    assert_dtypes(run.samples, SAMPLE_DTYPES)
    assert list(run.samples["status"].cat.categories) == list(evalkit.STATUSES)
    stored = pd.read_parquet(mixed / "samples.parquet")
    pd.testing.assert_frame_equal(run.samples[list(stored.columns)], stored.astype({c: SAMPLE_DTYPES[c] for c in stored.columns}))
    assert run.samples[["finish_reason", "input_tokens", "latency_s", "completion_source"]].isna().all().all(), "no model API here"
    loop = run.samples[(run.samples["task_id"] == IDS[0]) & (run.samples["sample_idx"] == 3)].iloc[0]
    assert loop["status"] == "timeout" and pd.isna(loop["exit_code"])
    crashes = run.samples[run.samples["sample_idx"] == 0]
    assert (crashes["status"] == "failed").all() and crashes["error"].str.contains(re.escape(HTML_ERROR)).all()
    assert run.path == mixed and run.name == "mixed" and run.config.sandbox.timeout_s == 2
    assert run.summary == json.loads((mixed / "summary.json").read_text(encoding="utf-8"))
    assert run.complete


@pytest.mark.ray
@pytest.mark.sandbox
def test_pass_at_k_is_the_summarys_very_figure(mixed: Path) -> None:
    run = evalkit.load_run(mixed)
    metrics = run.summary["metrics"]
    assert set(metrics) == {"pass@1", "pass@2", "pass@3"}
    for name, value in metrics.items():
        assert run.pass_at_k(int(name.removeprefix("pass@"))) == value
    assert run.pass_at_k(1) == pytest.approx((1 / 4 + 1 / 3 + 1 / 3) / 3)
    with pytest.raises(ValueError, match=r"pass@10 needs 1 <= k <= n for every problem; HumanEval/2 has n = 3"):
        run.pass_at_k(10)
    with pytest.raises(ValueError, match="pass@0"):
        run.pass_at_k(0)


@pytest.mark.ray
@pytest.mark.sandbox
def test_problems_frame_matches_the_summary(mixed: Path, problems: list[Problem]) -> None:
    run = evalkit.load_run(mixed)
    frame = run.problems
    assert_dtypes(frame, PROBLEM_DTYPES)
    assert frame["task_id"].tolist() == IDS
    for row in frame.itertuples():
        assert {"n": row.n, "c": row.c, "infra_error": row.infra_error} == run.summary["problems"][row.task_id]
        assert row.pass_rate == row.c / row.n
        assert row.planned == row.n + row.infra_error + row.pending and row.pending == 0
    assert frame[list(evalkit.STATUSES)].to_numpy().sum() == len(run.samples)
    by_id = frame.set_index("task_id")
    assert by_id.loc[IDS[0], "timeout"] == 1 and by_id.loc[IDS[0], "max_duration_s"] >= 2.0
    assert by_id.loc[IDS[1], ["passed", "failed", "timeout"]].tolist() == [1, 2, 0]
    for p in problems:
        assert by_id.loc[p.task_id, ["entry_point", "prompt", "test"]].tolist() == [p.entry_point, p.prompt, p.test]


@pytest.mark.ray
@pytest.mark.sandbox
def test_an_interrupted_run_loads_from_its_journal_as_the_runner_would_score_it(mixed: Path, tmp_path: Path) -> None:
    folder = copy_run(mixed, tmp_path)
    lines = keep_journal_lines(folder, 4)
    evalkit.RunStore.open(folder).write_meta(state="interrupted")
    for name in ("samples.parquet", "summary.json", "report.html"):
        (folder / name).unlink()
    run = evalkit.load_run(folder)
    assert len(run.samples) == 4 and not run.complete
    assert_dtypes(run.samples, SAMPLE_DTYPES)
    assert run.summary["run"]["state"] == "interrupted" and run.summary["run"]["planned_samples"] == len(lines)
    assert run.problems["pending"].sum() == len(lines) - 4
    assert "Incomplete run (interrupted)" in run._repr_html_()
    assert not (folder / "summary.json").exists(), "loading writes nothing"
    # what `evalkit report` makes of the same folder is what load_run computed
    reported = evalkit.report(folder).summary
    for key in ("metrics", "skipped_k", "counts", "problems", "num_samples", "generation"):
        assert run.summary[key] == reported[key], key
    assert run.summary["run"].items() <= reported["run"].items()
    pd.testing.assert_frame_equal(evalkit.load_run(folder).samples, run.samples)  # now from the parquet report wrote


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_run_stopped_before_any_verdict_loads(mixed: Path, tmp_path: Path) -> None:
    folder = copy_run(mixed, tmp_path)
    for name in ("samples.jsonl", "samples.parquet", "summary.json"):
        (folder / name).unlink()
    evalkit.RunStore.open(folder).write_meta(state="interrupted")
    run = evalkit.load_run(folder)
    assert run.samples.empty and not run.complete
    assert_dtypes(run.samples, SAMPLE_DTYPES)
    assert run.problems[["task_id", "planned", "n", "pending"]].values.tolist() == [[IDS[0], 4, 0, 4], [IDS[1], 3, 0, 3], [IDS[2], 3, 0, 3]]
    assert run.problems["pass_rate"].isna().all()
    with pytest.raises(ValueError, match="has no scored sample, so no pass@1"):
        run.pass_at_k(1)
    assert "0 of 10 planned samples have a verdict" in run._repr_html_()
    assert len(evalkit.load_runs([folder, mixed])) == 10


@pytest.mark.ray
@pytest.mark.sandbox
def test_parquet_and_summary_are_read_only_while_no_source_is_newer(mixed: Path, tmp_path: Path) -> None:
    folder = copy_run(mixed, tmp_path)
    lines = keep_journal_lines(folder, 2)
    evalkit.report(folder)  # parquet and summary of the first two samples
    assert len(evalkit.load_run(folder).samples) == 2
    # The run goes on (a resume): the journal grows after the parquet and the summary were written.
    (folder / "samples.jsonl").write_text("".join(lines), encoding="utf-8")
    run = evalkit.load_run(folder)
    assert len(run.samples) == len(lines) and run.summary["num_samples"] == len(lines)
    assert sum(run.summary["counts"].values()) == len(lines)
    # A parquet newer than every source is what load_run reads.
    edited = pd.read_parquet(folder / "samples.parquet").assign(error="read from the parquet")
    edited.to_parquet(folder / "samples.parquet")
    assert set(evalkit.load_run(folder).samples["error"]) == {"read from the parquet"}


@pytest.mark.ray
@pytest.mark.sandbox
def test_infra_errors_are_counted_apart(mixed: Path, tmp_path: Path) -> None:
    folder = copy_run(mixed, tmp_path)
    journal = folder / "samples.jsonl"
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    hit = next(r for r in records if r["task_id"] == IDS[1] and r["status"] == "passed")
    hit.update(status="infra_error", passed=False, error="sandbox failed 3 time(s)")
    journal.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    run = evalkit.load_run(folder)
    row = run.problems.set_index("task_id").loc[IDS[1]]
    assert (row["n"], row["c"], row["infra_error"], row["pending"]) == (2, 0, 1, 0)
    assert run.summary["counts"]["infra_error"] == 1 and not run.complete
    html = run._repr_html_()
    assert '<div style="color:#b91c1c">infra_error 1 (left out of pass@k' in html
    reported = evalkit.report(folder).summary
    assert run.pass_at_k(1) == reported["metrics"]["pass@1"] and run.summary["metrics"] == reported["metrics"]


@pytest.mark.ray
@pytest.mark.sandbox
def test_repr_html_is_compact_and_escaped(mixed: Path) -> None:
    run = evalkit.load_run(mixed)
    html = run._repr_html_()
    pass_1 = f"{run.summary['metrics']['pass@1']:.4f}"
    for expected in ("<strong>mixed</strong>", "model <b>samples</b>", "benchmark <b>humaneval</b>", "pass@1", pass_1,
                     "verdicts: passed 3 · failed 6 · timeout 1 · oom 0", "infra_error 0", "pass@10 not computed",
                     "3 problems: 0 passed by every sample, 3 by some, 0 by none", "&lt;b&gt;boom&lt;/b&gt; &amp; &#x27;co&#x27;"):
        assert expected in html, expected
    assert "<b>boom" not in html and "Incomplete" not in html
    assert html.count("<tr>") <= 1 + 1 + 1 + 3, "a compact view: a metrics row and the worst problems"
    text = repr(run)
    assert "\n" not in text and f"pass@1={pass_1}" in text and "mixed-" in text and "state='finished'" in text


@pytest.mark.ray
@pytest.mark.sandbox
def test_load_runs_stacks_runs_with_run_columns(mixed: Path, baseline: Path, runs_dir: Path) -> None:
    frame = evalkit.load_runs(str(runs_dir / "*"))
    assert_dtypes(frame, {**RUN_COLUMNS, **SAMPLE_DTYPES})
    assert sorted(frame["run"].unique()) == sorted([mixed.name, baseline.name])
    assert frame.groupby("run_name")["passed"].mean().to_dict() == {"baseline": 1.0, "mixed": 0.3}
    mine = frame[frame["run_dir"] == str(mixed)].drop(columns=list(RUN_COLUMNS)).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, evalkit.load_run(mixed).samples)
    assert set(frame["model"]) == {"samples", "reference"} and set(frame["benchmark"]) == {"humaneval"}
    started = json.loads((mixed / "run.json").read_text())["created"]
    assert frame.loc[frame["run"] == mixed.name, "started"].eq(pd.Timestamp(started)).all()
    ordered = evalkit.load_runs([baseline, str(mixed)])
    assert ordered["run"].drop_duplicates().tolist() == [baseline.name, mixed.name]


def test_load_run_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(RunStoreError, match=f"no run folder at {re.escape(str(tmp_path / 'gone'))}: it does not exist"):
        evalkit.load_run(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunStoreError, match="is a file, not a run folder"):
        evalkit.load_run(tmp_path / "file")
    with pytest.raises(RunStoreError, match=r"is not an evalkit run folder \(no run.json\)"):
        evalkit.load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"format_version": 99}')
    with pytest.raises(RunStoreError, match="run format version 99"):
        evalkit.load_run(tmp_path)


def test_load_runs_errors(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nightly-*")
    with pytest.raises(ValueError, match=f"the pattern {re.escape(repr(pattern))} matches nothing"):
        evalkit.load_runs(pattern)
    (tmp_path / "nightly-1").mkdir()
    with pytest.raises(ValueError, match="matches 1 path\\(s\\), none a run folder"):
        evalkit.load_runs(pattern)
    with pytest.raises(RunStoreError, match="no run.json"):
        evalkit.load_runs([tmp_path / "nightly-1"])
    with pytest.raises(ValueError, match="at least one"):
        evalkit.load_runs([])


@pytest.mark.ray
@pytest.mark.sandbox
def test_compare_takes_the_argument_as_the_baseline(mixed: Path, baseline: Path) -> None:
    run, base = evalkit.load_run(mixed), evalkit.load_run(baseline)
    comparison = run.compare(base)
    assert (comparison.a, comparison.b) == (base.label, run.label)
    assert comparison.metrics["pass@1"] == pytest.approx((1.0, run.pass_at_k(1))) and comparison.delta < 0
    assert sorted(c.task_id for c in comparison.regressed) == IDS and comparison.improved == []
    assert comparison.problems == 3 and comparison.only_a == comparison.only_b == []


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_model_api_run_has_its_completions_columns(runs_dir: Path, problems: list[Problem], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_TEST_ANALYSIS_KEY", "sk-analysis-test")
    with ModelServer(api_key="sk-analysis-test", reply=humaneval_replies(problems, style="mixed")) as server:
        model = {"provider": "openai", "name": "test-model", "base_url": server.url + "/v1", "api_key_env": "EVALKIT_TEST_ANALYSIS_KEY",
                 "cache_dir": str(runs_dir.parent / "cache")}
        outcome = evalkit.run(run_config(runs_dir.parent / "api-runs", "api", model), progress=False)
    run = evalkit.load_run(outcome.run_dir)
    assert_dtypes(run.samples, SAMPLE_DTYPES)
    assert run.samples["passed"].all()
    assert run.samples["prompt"].notna().all() and run.samples["response"].notna().all()
    assert (run.samples["finish_reason"] == "stop").all() and (run.samples["completion_source"] == "api").all()
    assert (run.samples["input_tokens"] > 0).all() and (run.samples["output_tokens"] > 0).all() and (run.samples["latency_s"] > 0).all()
    assert run.summary["run"]["model"] == "openai:test-model"


def test_the_committed_notebook_has_no_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"


def execute_notebook(cwd: Path) -> list[dict[str, Any]]:
    """Run every cell of the notebook in a fresh kernel started in ``cwd``; the outputs of its
    code cells. A cell that raises fails the test (nbclient raises CellExecutionError)."""
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def text_of(outputs: list[dict[str, Any]]) -> str:
    return "\n".join(str(o.get("text") or "") + str(o.get("data", {}).get("text/plain", "")) + str(o.get("data", {}).get("text/html", "")) for o in outputs)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.parametrize("where", ["EVALKIT_RUN_DIR", "newest under reports/"])
def test_the_notebook_executes_against_a_real_run(mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.delenv("EVALKIT_BASELINE_DIR", raising=False)
    if where == "EVALKIT_RUN_DIR":
        monkeypatch.setenv("EVALKIT_RUN_DIR", str(mixed))
    else:
        monkeypatch.delenv("EVALKIT_RUN_DIR", raising=False)
        shutil.copytree(mixed, tmp_path / "reports" / "mixed-older")
        shutil.copytree(mixed, tmp_path / "reports" / "mixed-newest")
        os.utime(tmp_path / "reports" / "mixed-older" / "run.json", (1, 1))
    outputs = execute_notebook(tmp_path)
    text = text_of(outputs)
    pass_1 = json.loads((mixed / "summary.json").read_text())["metrics"]["pass@1"]
    assert f"pass@1 = {pass_1:.4f} from 3 problems (summary.json: {pass_1:.4f})" in text
    assert "3 of 3 problems have a sample that did not pass" in text and "ValueError: &lt;b&gt;boom" in text
    assert 'class="evalkit-run"' in text and "no baseline" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the charts were drawn"
    shown = mixed.name if where == "EVALKIT_RUN_DIR" else "mixed-newest"
    assert shown in text


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.sandbox
def test_the_notebook_compares_with_a_baseline(mixed: Path, baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_RUN_DIR", str(mixed))
    monkeypatch.setenv("EVALKIT_BASELINE_DIR", str(baseline))
    text = text_of(execute_notebook(tmp_path))
    assert "3 problem(s) regressed, 0 improved" in text and "pass@1 1.0000 -> 0.3056" in text
