"""`evalkit run CONFIG --resume` picks only an unfinished run of this very config."""

from __future__ import annotations

from pathlib import Path

from evalkit import RunStore, Sample, latest_unfinished, parse_config


def config_text(tmp_path: Path, name: str, timeout: int = 10) -> str:
    return f"name: {name}\nbenchmark: {{name: humaneval}}\nmodel: {{provider: reference}}\nsandbox: {{timeout_s: {timeout}}}\noutput_dir: {tmp_path / 'runs'}\n"


def started(tmp_path: Path, name: str, timeout: int = 10, state: str = "interrupted") -> Path:
    config = parse_config(config_text(tmp_path, name, timeout), source=tmp_path / f"{name}.yaml")
    store = RunStore.create(config)
    store.write_plan([Sample(task_id="HumanEval/0", sample_idx=0, completion="    return True\n")])
    store.write_meta(state=state)
    return store.path


def test_a_run_killed_before_its_plan_was_written_is_not_resumed(tmp_path: Path) -> None:
    folder = started(tmp_path, "model")
    (folder / "plan.jsonl").unlink()
    config = parse_config(config_text(tmp_path, "model"), source=tmp_path / "model.yaml")
    assert latest_unfinished(config) is None


def test_a_run_killed_while_writing_its_summary_is_resumed(tmp_path: Path) -> None:
    folder = started(tmp_path, "model", state="finished")
    config = parse_config(config_text(tmp_path, "model"), source=tmp_path / "model.yaml")
    assert latest_unfinished(config) == folder
    (folder / "summary.json").write_text("{}")
    assert latest_unfinished(config) is None


def test_the_newest_unfinished_run_of_the_same_config_is_found(tmp_path: Path) -> None:
    folder = started(tmp_path, "model")
    config = parse_config(config_text(tmp_path, "model"), source=tmp_path / "model.yaml")
    assert latest_unfinished(config) == folder


def test_a_run_of_another_config_sharing_a_name_prefix_is_not_resumed(tmp_path: Path) -> None:
    started(tmp_path, "model-v2")
    config = parse_config(config_text(tmp_path, "model"), source=tmp_path / "model.yaml")
    assert latest_unfinished(config) is None


def test_a_run_started_with_different_settings_is_not_resumed(tmp_path: Path) -> None:
    started(tmp_path, "model", timeout=10)
    edited = parse_config(config_text(tmp_path, "model", timeout=3), source=tmp_path / "model.yaml")
    assert latest_unfinished(edited) is None


def test_finished_runs_are_not_resumed(tmp_path: Path) -> None:
    folder = started(tmp_path, "model", state="finished")
    (folder / "summary.json").write_text("{}")
    config = parse_config(config_text(tmp_path, "model"), source=tmp_path / "model.yaml")
    assert latest_unfinished(config) is None
