"""The run folder: creation, the crash-safe journal, reopening, and the Parquet table."""

from __future__ import annotations

import datetime as dt
import os
import json
import re
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from evalkit import EvalConfig, RunStore, RunStoreError, Sample, SampleResult, StorageError, parse_config
from evalkit._store import Journal, space_needed

# README, "run folder": the columns of samples.parquet
PARQUET_COLUMNS = [
    "task_id", "sample_idx", "completion", "prompt", "response", "status", "passed", "duration_s", "driver", "isolation",
    "error", "exit_code", "stdout", "stderr", "output_truncated", "cpu_time_s", "max_rss_mb", "attempts",
    "cpu_limit_s", "wall_limit_s", "flaky", "first_status", "first_error",
]  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> EvalConfig:
    text = f"name: unit\nbenchmark:\n  name: humaneval\nmodel:\n  provider: reference\noutput_dir: {tmp_path / 'runs'}\n"
    return parse_config(text, source=tmp_path / "unit.yaml")


@pytest.fixture
def store(config: EvalConfig) -> RunStore:
    return RunStore.create(config)


def test_create_makes_a_stamped_folder_with_config_and_meta(config: EvalConfig, tmp_path: Path) -> None:
    store = RunStore.create(config)
    assert store.path.parent == (tmp_path / "runs").resolve()
    assert re.fullmatch(r"unit-\d{8}-\d{6}", store.path.name), store.path.name
    assert store.config().model_dump() == config.model_dump()
    meta = json.loads((store.path / "run.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == 1
    assert meta["state"] == "running"
    assert meta["evalkit_version"]
    assert meta["created"]
    assert sorted(p.name for p in store.path.iterdir()) == [".lock", "config.yaml", "run.json"]


def test_creates_in_the_same_second_get_distinct_folders(config: EvalConfig) -> None:
    stores = [RunStore.create(config) for _ in range(3)]
    paths = [s.path for s in stores]
    assert len(set(paths)) == 3
    assert all((p / "run.json").is_file() for p in paths)
    if paths[0].name == paths[1].name.removesuffix("-2"):  # the same second, as it almost always is
        assert paths[1].name.endswith("-2")


def test_create_does_not_reuse_a_taken_folder(config: EvalConfig, tmp_path: Path) -> None:
    # take the folder names of this second and the next few, as a run started just now would
    now = dt.datetime.now()
    taken = [tmp_path / "runs" / f"unit-{(now + dt.timedelta(seconds=s)).strftime('%Y%m%d-%H%M%S')}" for s in range(4)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "marker").write_text("someone else's run", encoding="utf-8")
    store = RunStore.create(config)
    assert store.path.name in {f"{folder.name}-2" for folder in taken}
    assert all(sorted(p.name for p in folder.iterdir()) == ["marker"] for folder in taken)
    again = RunStore.create(config)
    assert again.path != store.path
    assert again.path.name in {f"{folder.name}-{i}" for folder in taken for i in (2, 3)}


def test_concurrent_creates_get_distinct_folders(config: EvalConfig) -> None:
    barrier = threading.Barrier(8)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            paths.append(RunStore.create(config).path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(paths)) == 8
    assert all((p / "run.json").is_file() and (p / "config.yaml").is_file() for p in paths)


def test_write_meta_updates_and_keeps_other_keys(store: RunStore) -> None:
    created = store.meta()["created"]
    store.write_meta(state="finished", driver="bwrap")
    meta = RunStore.open(store.path).meta()
    assert meta["state"] == "finished" and meta["driver"] == "bwrap" and meta["created"] == created


def test_journal_appends_and_results_reads_back(store: RunStore, make_result) -> None:
    first = [make_result("HumanEval/0", 0), make_result("HumanEval/0", 1, "failed"), make_result("HumanEval/1", 0, "timeout")]
    with store.journal() as journal:
        for r in first:
            journal.append(r)
    assert store.results() == first
    with store.journal() as journal:  # a resumed run appends to the same journal
        journal.append(make_result("HumanEval/2", 0, "oom"))
    assert [r.key for r in RunStore.open(store.path).results()] == [r.key for r in first] + [("HumanEval/2", 0)]


def test_results_of_a_run_without_journal_is_empty(store: RunStore) -> None:
    assert store.results() == []


def test_the_last_record_of_a_sample_wins(store: RunStore, make_result) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0, "infra_error", error="sandbox died"))
        journal.append(make_result("HumanEval/1", 0, "passed"))
        journal.append(make_result("HumanEval/0", 0, "failed", attempts=2))
    results = {r.key: r for r in store.results()}
    assert len(results) == 2
    assert results[("HumanEval/0", 0)].status == "failed"
    assert results[("HumanEval/0", 0)].attempts == 2


def test_a_truncated_last_line_is_ignored(store: RunStore, make_result) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0))
        journal.append(make_result("HumanEval/1", 0))
    whole = make_result("HumanEval/2", 0).model_dump_json()
    with open(store.path / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write(whole[: len(whole) // 2])  # the process died in the middle of this line
    assert [r.key for r in store.results()] == [("HumanEval/0", 0), ("HumanEval/1", 0)]


def test_appending_after_a_truncated_last_line_loses_nothing(store: RunStore, make_result) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0))
    whole = make_result("HumanEval/1", 0).model_dump_json()
    with open(store.path / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write(whole[:40])
    with store.journal() as journal:  # resume after the crash
        journal.append(make_result("HumanEval/1", 0))
        journal.append(make_result("HumanEval/2", 0))
    assert [r.key for r in store.results()] == [("HumanEval/0", 0), ("HumanEval/1", 0), ("HumanEval/2", 0)]


def test_a_last_line_cut_inside_a_multibyte_character_is_ignored(store: RunStore, make_result) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0))
    whole = make_result("HumanEval/1", 0, completion="    return 'é€😀' * 3\n").model_dump_json().encode()
    assert "é".encode() in whole  # written raw, not escaped
    cut = whole.index("€".encode()) + 1
    with open(store.path / "samples.jsonl", "ab") as f:
        f.write(whole[:cut])
    assert [r.key for r in store.results()] == [("HumanEval/0", 0)]
    with store.journal() as journal:
        journal.append(make_result("HumanEval/1", 0))
    assert [r.key for r in store.results()] == [("HumanEval/0", 0), ("HumanEval/1", 0)]


def test_a_whole_last_record_without_its_newline_is_kept(store: RunStore, make_result) -> None:
    with open(store.path / "samples.jsonl", "w", encoding="utf-8") as f:
        f.write(make_result("HumanEval/0", 0).model_dump_json())  # the newline never made it
    assert [r.key for r in store.results()] == [("HumanEval/0", 0)]
    with store.journal() as journal:
        journal.append(make_result("HumanEval/1", 0))
    assert [r.key for r in store.results()] == [("HumanEval/0", 0), ("HumanEval/1", 0)]


def test_a_corrupt_middle_line_is_an_error_naming_it(store: RunStore, make_result) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0))
    with open(store.path / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write('{"task_id": "HumanEval/1", "oops"\n')
    with store.journal() as journal:
        journal.append(make_result("HumanEval/2", 0))
    with pytest.raises(RunStoreError) as info:
        store.results()
    message = str(info.value)
    assert str(store.path / "samples.jsonl") in message
    assert "line 2" in message


def test_a_record_that_is_not_a_result_is_an_error(store: RunStore, make_result) -> None:
    (store.path / "samples.jsonl").write_text(
        json.dumps({"task_id": "HumanEval/0", "sample_idx": 0, "status": "exploded"}) + "\n"
        + make_result("HumanEval/1", 0).model_dump_json() + "\n",
        encoding="utf-8",
    )  # fmt: skip
    with pytest.raises(RunStoreError, match="line 1"):
        store.results()


@pytest.mark.parametrize("text", ["x\u2028y", "x\u2029y", "x\x85y", "x\x1cy", "x\x0by\x0cz", "x\ry\r\nz"])
def test_line_separators_in_results_survive_the_journal(store: RunStore, make_result, text: str) -> None:
    results = [
        make_result("HumanEval/0", 0, "failed", completion=f"    return '{text}'\n", stdout=text, stderr=text),
        make_result("HumanEval/1", 0, "passed"),
    ]
    with store.journal() as journal:
        for r in results:
            journal.append(r)
    assert store.results() == results


def test_open_a_folder_without_run_json(tmp_path: Path) -> None:
    (tmp_path / "not-a-run").mkdir()
    for path in (tmp_path / "not-a-run", tmp_path / "missing"):
        with pytest.raises(RunStoreError) as info:
            RunStore.open(path)
        message = str(info.value)
        assert str(path) in message and "not an evalkit run folder" in message and "run.json" in message


def test_open_another_format_version(store: RunStore) -> None:
    store.write_meta()
    meta = json.loads((store.path / "run.json").read_text(encoding="utf-8"))
    meta["format_version"] = 99
    (store.path / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(RunStoreError) as info:
        RunStore.open(store.path)
    message = str(info.value)
    assert str(store.path) in message and "99" in message and "version 1" in message


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"run"', ""])
def test_open_an_unreadable_run_json(store: RunStore, content: str) -> None:
    (store.path / "run.json").write_text(content, encoding="utf-8")
    with pytest.raises(RunStoreError, match="run.json"):
        RunStore.open(store.path)


def test_open_finds_what_create_made(store: RunStore) -> None:
    reopened = RunStore.open(store.path)
    assert reopened.path == store.path
    assert reopened.meta()["state"] == "running"


def test_write_parquet_has_one_row_per_sample_with_the_documented_columns(store: RunStore, make_result) -> None:
    results = [
        make_result("HumanEval/10", 1, "failed", error="AssertionError", stderr="Traceback ...", exit_code=1),
        make_result("HumanEval/2", 0, "passed", cpu_time_s=0.5, max_rss_mb=12.5),
        make_result("HumanEval/10", 0, "timeout", error="timed out after 10 s", exit_code=None),
        make_result("HumanEval/2", 1, "infra_error", error="sandbox died", attempts=3, driver="microvm"),
    ]
    path = store.write_parquet(results)
    assert path == store.path / "samples.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == PARQUET_COLUMNS
    assert list(SampleResult.model_fields) == PARQUET_COLUMNS
    assert len(frame) == 4
    # sorted by task number, then sample_idx
    assert list(zip(frame["task_id"], frame["sample_idx"])) == [("HumanEval/2", 0), ("HumanEval/2", 1), ("HumanEval/10", 0), ("HumanEval/10", 1)]
    rows = {(row["task_id"], row["sample_idx"]): row for row in frame.to_dict("records")}
    assert bool(rows[("HumanEval/2", 0)]["passed"]) is True
    assert rows[("HumanEval/2", 0)]["max_rss_mb"] == 12.5
    assert rows[("HumanEval/2", 1)]["status"] == "infra_error"
    assert rows[("HumanEval/2", 1)]["attempts"] == 3
    assert rows[("HumanEval/2", 1)]["driver"] == "microvm"
    assert rows[("HumanEval/10", 1)]["error"] == "AssertionError"
    assert rows[("HumanEval/10", 1)]["completion"] == "    return 1\n"
    assert pd.isna(rows[("HumanEval/2", 0)]["error"])
    assert not list(store.path.glob("*.tmp"))


def test_parquet_rows_of_a_task_stay_together_whatever_the_ids(store: RunStore, make_result) -> None:
    ids = ["mbpp/b", "mbpp/a", "plain", "mbpp/007", "mbpp/7", "odd/\u00b2", "odd/"]
    results = [make_result(task_id, idx) for idx in range(2) for task_id in ids]
    frame = pd.read_parquet(store.write_parquet(results))
    assert len(frame) == len(results)
    order = list(frame["task_id"])
    for task_id in ids:
        first = order.index(task_id)
        assert order[first : first + 2] == [task_id, task_id], order
    for task_id in ids:
        assert list(frame[frame["task_id"] == task_id]["sample_idx"]) == [0, 1]


def test_write_parquet_of_no_results(store: RunStore) -> None:
    frame = pd.read_parquet(store.write_parquet([]))
    assert len(frame) == 0
    assert list(frame.columns) == PARQUET_COLUMNS


def test_write_json_and_text(store: RunStore) -> None:
    store.write_json("summary.json", {"metrics": {"pass@1": 0.5}})
    store.write_text("report.html", "<html></html>")
    assert json.loads((store.path / "summary.json").read_text(encoding="utf-8")) == {"metrics": {"pass@1": 0.5}}
    assert (store.path / "report.html").read_text(encoding="utf-8") == "<html></html>"
    assert not list(store.path.glob("*.tmp"))


def test_a_run_folder_is_held_by_one_process_at_a_time(store: RunStore) -> None:
    import subprocess
    import sys

    probe = (
        "import sys\nfrom evalkit import RunStore, RunStoreError\n"
        "try:\n    RunStore.open(sys.argv[1]).acquire()\nexcept RunStoreError as exc:\n    print(exc)\n"
    )
    held = subprocess.run([sys.executable, "-c", probe, str(store.path)], capture_output=True, text=True, check=True)
    assert "is being run by another evalkit process" in held.stdout and str(os.getpid()) in held.stdout
    store.release()
    free = subprocess.run([sys.executable, "-c", probe, str(store.path)], capture_output=True, text=True, check=True)
    assert free.stdout == ""
    assert not RunStore.open(store.path).in_use()


def test_an_infra_error_never_replaces_a_verdict(store: RunStore, make_result: Any) -> None:
    with store.journal() as journal:
        journal.append(make_result("HumanEval/0", 0, status="passed"))
        journal.append(make_result("HumanEval/0", 0, status="infra_error"))
        journal.append(make_result("HumanEval/1", 0, status="infra_error"))
        journal.append(make_result("HumanEval/1", 0, status="failed"))
    statuses = {r.task_id: r.status for r in store.results()}
    assert statuses == {"HumanEval/0": "passed", "HumanEval/1": "failed"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"task_id": "HumanEval/0", "sample_idx": 0, "completion": ""}', '{"task_id": "HumanEval/0", "sample_idx": -1, "completion": ""}'], "line 2: not a valid sample (sample_idx"),
        (['{"task_id": "HumanEval/0", "sample_idx": 0, "completion": "a"}', '{"task_id": "HumanEval/0", "sample_idx": 0, "completion": "b"}'], "line 2: sample HumanEval/0 #0 appears twice"),
        ([], "holds no samples"),
    ],
)
def test_a_damaged_plan_is_reported_with_its_line(store: RunStore, lines: list[str], message: str) -> None:
    (store.path / "plan.jsonl").write_text("".join(line + "\n" for line in lines))
    with pytest.raises(RunStoreError, match=re.escape(message)):
        store.plan()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device every write to fails with ENOSPC")
def test_a_journal_write_that_fails_raises_a_storage_error_naming_the_file(make_result: Any) -> None:
    journal = Journal(Path("/dev/full"), SampleResult)
    with pytest.raises(StorageError, match=r"^cannot append to /dev/full: No space left on device \(ENOSPC\)$") as caught:
        journal.append(make_result("t/0"))
    assert caught.value.errno == 28 and caught.value.path == Path("/dev/full")
    with pytest.raises(StorageError, match="ENOSPC"):  # once broken, it writes nothing more
        journal.append(make_result("t/1"))
    journal.close()  # quietly: it knows the journal is broken
    journal.close()


def test_space_needed_counts_the_plan_three_times_each_sample_and_the_end_files() -> None:
    files = [Sample(task_id="t/0", sample_idx=i, completion="x" * 1000) for i in range(10)]
    plan = sum(len(s.model_dump_json()) + 1 for s in files)
    assert space_needed(files) == 3 * plan + 10 * 12 * 2**10 + 2**20
    prompts = [Sample(task_id="t/0", sample_idx=i, completion="", prompt="p") for i in range(10)]
    plan = sum(len(s.model_dump_json()) + 1 for s in prompts)
    assert space_needed(prompts) == 3 * plan + 10 * (12 + 16) * 2**10 + 2**20  # a model API's replies are still to come
