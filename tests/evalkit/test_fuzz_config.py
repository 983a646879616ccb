"""Fuzzing config files: every bad config ends in one `ConfigError` sentence that names the
file, the line and the key (exit code 2 from the CLI), quickly, and never in a traceback, a
hang or a memory blow-up.

The cases come from a small generator over fixed seeds (``random.Random(seed)``), so a failure
names a seed that reproduces it: wrong types and out-of-range values for every key, unknown
keys at every level, missing required keys, sections of the wrong type, and random byte-level
damage to valid configs. Hand-picked cases cover what a generator would rarely hit: alias
bombs, deep nesting, huge files, binary garbage, pipes, folders and devices as configs.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from evalkit import ConfigError, EvalConfig, load_config, parse_config
from evalkit._config import MAX_CONFIG_BYTES, MAX_CONFIG_VALUES

EVALKIT = [sys.executable, "-m", "evalkit"]
SEEDS = range(60)


@contextmanager
def timebox(seconds: float) -> Iterator[None]:
    """Fail the test if the block takes longer than ``seconds`` (SIGALRM: main thread only)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def config_error(path: Path, seconds: float = 5.0) -> str:
    """The message of the `ConfigError` that loading ``path`` raises: one line, naming the file."""
    with timebox(seconds), pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --- a config as sections of keys, with the line of each key known -------------------------

Entries = dict[str | None, dict[str, str]]  # section (None: top level) -> key -> YAML text of the value

REFERENCE: Entries = {"benchmark": {"name": "humaneval"}, "model": {"provider": "reference"}}
OPENAI: Entries = {
    "benchmark": {"name": "humaneval"},
    "model": {"provider": "openai", "name": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "null"},
}


def render(entries: Entries) -> tuple[str, dict[tuple[str | None, str], int]]:
    """YAML text of ``entries`` (one key per line, values in flow style) and each key's line."""
    lines: list[str] = []
    where: dict[tuple[str | None, str], int] = {}
    for section, keys in entries.items():
        if section is None:
            for key, value in keys.items():
                lines.append(f"{key}: {value}")
                where[(None, key)] = len(lines)
            continue
        lines.append(f"{section}:")
        where[(section, "")] = len(lines)
        for key, value in keys.items():
            lines.append(f"  {key}: {value}")
            where[(section, key)] = len(lines)
    return "".join(line + "\n" for line in lines), where


def with_value(base: Entries, section: str | None, key: str, value: str) -> Entries:
    entries = {name: dict(keys) for name, keys in base.items()}
    entries.setdefault(section, {})[key] = value
    return entries


# --- what is wrong for each key ------------------------------------------------------------

NOT_INT = ["'3'", "ten", "1.5", "true", "false", "[1]", "{a: 1}", ".nan", ".inf", "2020-01-01", "!!binary aGk=", "1e3"]
NOT_NUMBER = ["soon", "'3'", "true", "[1]", "{a: 1}", ".nan", ".inf", "-.inf", "2020-01-01", "1e3", "1.0e+12", "0", "-1", "86401"]
NOT_STR = ["3", "1.5", "true", "[a]", "{a: b}", "2020-01-01", "!!binary aGk="]
NOT_BOOL = ["'yes'", "1", "0", "[true]", "text"]
REQUIRED = ["null", "~"]  # wrong for a key that has no null value


@dataclass(frozen=True)
class Key:
    section: str | None
    name: str
    bad: tuple[str, ...]
    base: str = "reference"

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


KEYS = [
    Key(None, "version", ("2", "0", "'1'", "1.0", "true", "null", "[1]")),
    Key(None, "name", (*NOT_STR, *REQUIRED, "'a/b'", "'has space'", "''", "'a b'")),
    Key(None, "output_dir", (*NOT_STR, *REQUIRED)),
    Key(None, "gates", ("[1]", "text", "3", "{pass@1: 5}", "{pass@1: null}", "{nope: '>= 0.5'}", "{pass@1: '>='}", "{pass@1: '>= .nan'}",
                        "{pass@1: '>= 1.0e+999'}", "{pass@10: '>= 0.5'}", "{pass@1: [1]}")),
    Key(None, "baseline", (*NOT_STR, "missing-run", "''", "a" * 5000, "~nosuchuser-evalkit/run")),
    Key("benchmark", "limit", (*NOT_INT, "0", "-1")),
    Key("benchmark", "ids", ("[]", "[1]", "HumanEval/0", "{a: 1}", "[HumanEval/0, [x]]", "[null]")),
    Key("benchmark", "strict", ("3", "[1]", "{a: 1}", "'maybe'")),  # issue 7's strict mode: wrong whatever its type
    Key("sampling", "n", (*NOT_INT, *REQUIRED, "0", "-1", "10001", "99999999999999999999999")),
    Key("sampling", "k", ("[]", "[0]", "[-1]", "['1']", "[1.5]", "[true]", "5", "'1'", "{a: 1}", "null", "[.nan]")),
    Key("sandbox", "driver", (*NOT_STR, *REQUIRED, "docker", "''")),
    Key("sandbox", "timeout_s", (*NOT_NUMBER, *REQUIRED)),
    Key("sandbox", "cpu_time_s", NOT_NUMBER),
    Key("sandbox", "memory_mb", (*NOT_INT, *REQUIRED, "15", "0", "-512")),
    Key("sandbox", "max_processes", (*NOT_INT, *REQUIRED, "0", "-1")),
    Key("sandbox", "max_output_bytes", (*NOT_INT, *REQUIRED, "1023", "0")),
    Key("sandbox", "python", (*NOT_STR, "/nonexistent/python3", "''", "/etc/passwd")),
    Key("sandbox", "template", (*NOT_STR, "nosuch")),
    Key("sandbox", "time_limit", (*NOT_STR, *REQUIRED, "measured", "''", "Calibrated")),
    Key("sandbox", "calibration_factor", (*NOT_NUMBER, *REQUIRED, "0.5", "1001")),
    Key("sandbox", "min_time_s", (*NOT_NUMBER, *REQUIRED)),
    Key("sandbox", "recheck_failures", (*NOT_BOOL, *REQUIRED)),
    Key("scheduler", "address", NOT_STR),
    Key("scheduler", "workers", (*NOT_INT, "0", "10001", "99999999999999999999")),
    Key("scheduler", "batch_size", (*NOT_INT, *REQUIRED, "0")),
    Key("scheduler", "max_in_flight", (*NOT_INT, "0")),
    Key("scheduler", "max_retries", (*NOT_INT, *REQUIRED, "-1", "101", "99999999999999999999")),
    Key("scheduler", "canary_every", (*NOT_INT, *REQUIRED, "-1", "1000001")),
    Key("scheduler", "canary_hold_s", (*NOT_NUMBER, *REQUIRED, "3601")),
    Key("model", "temperature", ("-0.5", ".nan", ".inf", "hot", "true", "[1]"), "openai"),
    Key("model", "top_p", ("0", "1.5", ".nan", "'0.9'"), "openai"),
    Key("model", "max_tokens", ("0", "'100'", "1.5", "-1"), "openai"),
    Key("model", "concurrency", ("0", "1025", "'8'", *REQUIRED), "openai"),
    Key("model", "timeout_s", ("0", "3601", ".inf", "soon", *REQUIRED), "openai"),
    Key("model", "max_retries", ("-1", "101", "1.5", *REQUIRED), "openai"),
    Key("model", "backoff_s", ("-1", "601", ".nan", *REQUIRED), "openai"),
    Key("model", "extra_body", ("[1]", "text", "{a: .nan}", "{a: .inf}", "{a: 2020-01-01}", "{a: !!binary aGk=}", "{a: !!set {x: null}}", "{1: 2}"), "openai"),
    Key("model", "extra_headers", ("{a: 1}", "[a]", "text", "{a: [b]}"), "openai"),
    Key("model", "stop", ("[1]", "text", "{a: b}", "[null]"), "openai"),
    Key("model", "base_url", ("'::::'", "ftp://example.com/v1", "localhost:8000/v1", "3", "'http://'", "'http://h:port/v1'", *REQUIRED), "openai"),
    Key("model", "api", ("chatty", "3", *REQUIRED), "openai"),
    Key("model", "seed", ("1.5", "'1'", "true"), "openai"),
    Key("model", "name", ("''", "3", *REQUIRED), "openai"),
    Key("model", "cache", (*NOT_BOOL, *REQUIRED), "openai"),
    Key("model", "prompt_template", ("'{{ prompt'", "3", "'{% if %}'"), "openai"),
    Key("model", "max_n_per_request", ("0", "'20'", *REQUIRED), "openai"),
]
SECTIONS = ["benchmark", "model", "sampling", "sandbox", "scheduler"]
KNOWN_KEYS = {key.name for key in KEYS} | {"provider", "path", "ids", "api_key_env", "system_prompt", "cache_dir"}


def assert_names(message: str, path: Path, line: int, *names: str) -> None:
    assert f"{path}, line {line}:" in message, message
    assert any(name in message for name in names), (names, message)


def test_the_key_table_covers_every_config_key() -> None:
    from evalkit import BenchmarkConfig, SamplingConfig, SandboxConfig, SchedulerConfig

    covered = {key.dotted for key in KEYS}
    for section, model in (("benchmark", BenchmarkConfig), ("sampling", SamplingConfig), ("sandbox", SandboxConfig), ("scheduler", SchedulerConfig)):
        expected = {f"{section}.{name}" for name in model.model_fields} - {"benchmark.name", "benchmark.path"}
        assert expected <= covered, expected - covered
    # a key another change adds to EvalConfig must get a row here too
    top = set(EvalConfig.model_fields) - {"benchmark", "model", "sampling", "sandbox", "scheduler"}
    assert top <= covered, top - covered


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.dotted + ("" if key.base == "reference" else f"({key.base})"))
def test_every_bad_value_of_every_key_names_its_line_and_key(tmp_path: Path, key: Key) -> None:
    base = OPENAI if key.base == "openai" else REFERENCE
    for i, value in enumerate(key.bad):
        text, where = render(with_value(base, key.section, key.name, value))
        path = tmp_path / f"case{i}.yaml"
        path.write_text(text, encoding="utf-8")
        message = config_error(path)
        assert_names(message, path, where[(key.section, key.name)], key.dotted, key.name)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_single_mistakes_name_the_file_line_and_key(tmp_path: Path, seed: int) -> None:
    """One mistake per config, chosen by the seed: a bad value, an unknown key at some level,
    a missing required key or a section of the wrong type."""
    rng = random.Random(seed)
    kind = rng.choice(["value", "unknown", "missing", "section"])
    path = tmp_path / "eval.yaml"
    if kind == "value":
        key = rng.choice(KEYS)
        value = rng.choice(key.bad)
        text, where = render(with_value(OPENAI if key.base == "openai" else REFERENCE, key.section, key.name, value))
        expected: tuple[int, tuple[str, ...]] = (where[(key.section, key.name)], (key.dotted, key.name))
    elif kind == "unknown":
        base = rng.choice([REFERENCE, OPENAI])
        section = rng.choice([None, *SECTIONS])
        name = rng.choice(["timout_s", "Timeout_s", "colour", "memory", "workers_", "idz", "prompt", "n_samples", "k2"])
        assert name not in KNOWN_KEYS
        text, where = render(with_value(base, section, name, rng.choice(["1", "x", "[1]", "{a: 1}", "null"])))
        dotted = f"{section}.{name}" if section else name
        expected = (where[(section, name)], (f"unknown key '{dotted}'",))
    elif kind == "missing":
        choice = rng.choice(["benchmark", "model", "model.provider", "model.path", "model.name"])
        entries: Entries = {name: dict(keys) for name, keys in REFERENCE.items()}
        if choice in ("benchmark", "model"):
            del entries[choice]
            text, where = render(entries)
            expected = (0, (f"missing required key '{choice}'",))
        else:
            entries["model"] = {"samples": {"provider": "samples"}, "openai": {"provider": "openai"}, "reference": {"api": "chat"}}[
                {"model.path": "samples", "model.name": "openai", "model.provider": "reference"}[choice]
            ]
            text, where = render(entries)
            expected = (where[("model", "")], (f"missing required key '{choice}'",))
    else:
        section = rng.choice(SECTIONS)
        value = rng.choice(["[1]", "3", "null", "text", "true", "[]", "''"])
        entries = {name: dict(keys) for name, keys in REFERENCE.items() if name != section}
        entries[None] = {section: value}
        text, where = render(entries)
        expected = (where[(None, section)], (f"'{section}'",))
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    line, names = expected
    if line:
        assert_names(message, path, line, *names)
    else:
        assert any(name in message for name in names), (names, message)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_combinations_of_mistakes_report_one_of_them(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    entries: Entries = {name: dict(keys) for name, keys in (OPENAI if seed % 2 else REFERENCE).items()}
    mistakes: list[tuple[str | None, str]] = []
    for key in rng.sample([k for k in KEYS if k.base == ("openai" if seed % 2 else "reference")], rng.randint(2, 4)):
        entries.setdefault(key.section, {})[key.name] = rng.choice(key.bad)
        mistakes.append((key.section, key.name))
    text, where = render(entries)
    path = tmp_path / "eval.yaml"
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    assert any(f"line {where[m]}:" in message for m in mistakes), (mistakes, message)


# --- byte-level damage ---------------------------------------------------------------------

FULL = (
    "version: 1\nname: fuzz\n"
    "benchmark:\n  name: humaneval\n  limit: 3\n  ids: [HumanEval/0, HumanEval/1]\n"
    "model:\n  provider: reference\n"
    "sampling:\n  n: 2\n  k: [1, 2]\n"
    "sandbox:\n  driver: auto\n  timeout_s: 5\n  memory_mb: 256\n  max_processes: 4\n"
    "scheduler:\n  workers: 2\n  batch_size: 4\n  max_retries: 1\n"
    "output_dir: runs\n"
)
API = (
    "benchmark: {name: humaneval, limit: 2}\n"
    "model:\n  provider: openai\n  name: m\n  base_url: http://127.0.0.1:9/v1\n  api_key_env: null\n"
    "  extra_body: {max_tokens: null, reasoning: {effort: low}}\n  stop: ['\\ndef ', '\\nclass ']\n"
    "  prompt_template: |\n    Solve {{ prompt }}\n  temperature: 0.2\n"
    "defaults: &d {timeout_s: 3}\n"
)
NOISE = [b":", b"-", b"[", b"]", b"{", b"}", b"&", b"*", b"!", b"|", b">", b"\t", b"\x00", b"\xff", b"\xc3", b"'", b'"', b"#",
         b"%", b"@", b"`", b"\n", b"  ", b"? ", b"<<: *d\n", b"!!python/object:os.system ", b"\xef\xbb\xbf", b"\r", b"\\u", b"1e3"]


def damaged(text: str, rng: random.Random) -> bytes:
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 5)):
        at = rng.randrange(len(data) + 1)
        op = rng.choice(["insert", "replace", "delete", "dup_line", "truncate"])
        if op == "insert":
            data[at:at] = rng.choice(NOISE)
        elif op == "replace" and at < len(data):
            data[at] = rng.randrange(256)
        elif op == "delete":
            del data[at : at + rng.randint(1, 8)]
        elif op == "dup_line":
            lines = bytes(data).split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            data = bytearray(b"\n".join(lines))
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("seed", range(150))
def test_damaged_configs_load_or_raise_config_error(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # the API config names a base: mutations may hit its defaults anchor (&d) and merge key (<<)
    data = damaged(rng.choice([FULL, API.replace("defaults: &d", "sandbox: &d")]), rng)
    path = tmp_path / "eval.yaml"
    path.write_bytes(data)
    with timebox(5):
        try:
            config = load_config(path)
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
        else:
            assert isinstance(config, EvalConfig)


# --- files that are not a page of YAML -----------------------------------------------------


def test_an_alias_bomb_is_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    levels = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
    path = tmp_path / "bomb.yaml"
    path.write_text("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels + "benchmark: {name: humaneval}\nmodel: {provider: reference}\n")
    tracemalloc.start()
    try:
        started = time.monotonic()
        message = config_error(path)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"more than {MAX_CONFIG_VALUES} values" in message and "alias" in message
    assert elapsed < 3 and peak < 64 * 2**20, (elapsed, peak)


def test_aliases_within_reason_still_work(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(
        "benchmark: {name: humaneval, ids: &ids [HumanEval/0, HumanEval/1]}\nmodel: {provider: reference}\n"
        "sandbox: &box {timeout_s: 3, memory_mb: 256}\nscheduler:\n  <<: {workers: 2}\n  batch_size: 4\n"
    )
    config = load_config(path)
    assert config.benchmark.ids == ["HumanEval/0", "HumanEval/1"] and config.sandbox.timeout_s == 3
    assert (config.scheduler.workers, config.scheduler.batch_size) == (2, 4)


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(600)) + "  " * 600 + "x: 1\n",
        "a:\n" + "".join("  " * (i + 1) + "-\n" for i in range(600)) + "  " * 601 + "1\n",
    ],
    ids=["lists", "flow-mappings", "block-mappings", "block-lists"],
)
def test_deep_nesting_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\n" + text)
    message = config_error(path)
    assert "nested too deeply" in message or "unknown key 'a'" in message or "unknown key 'k0'" in message, message


def test_a_50_mb_config_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "w", encoding="utf-8") as out:
        out.write("benchmark: {name: humaneval}\nmodel: {provider: reference}\nname: ")
        out.write("a" * (50 * 2**20))
        out.write("\n")
    started = time.monotonic()
    message = config_error(path, seconds=3)
    assert time.monotonic() - started < 1
    assert f"holds 52428865 bytes, more than the {MAX_CONFIG_BYTES} a config file may" in message


def test_parse_config_refuses_huge_text_too(tmp_path: Path) -> None:
    with timebox(3), pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_BYTES} characters"):
        parse_config("benchmark: {name: humaneval}\nmodel: {provider: reference}\n# " + "x" * MAX_CONFIG_BYTES, source=tmp_path / "c.yaml")


def test_a_config_just_under_the_size_limit_loads(tmp_path: Path) -> None:
    body = "benchmark: {name: humaneval}\nmodel: {provider: reference}\n"
    path = tmp_path / "eval.yaml"
    path.write_text(body + "#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(path).benchmark.name == "humaneval"


def test_a_folder_is_not_a_config(tmp_path: Path) -> None:
    assert "is a folder, not a config file" in config_error(tmp_path)


def test_a_pipe_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "eval.yaml"
    os.mkfifo(fifo)  # no writer: opening it would block for ever
    assert "not a regular file" in config_error(fifo, seconds=3)


def test_a_device_is_not_read(tmp_path: Path) -> None:
    with timebox(3), pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")  # reading it would never end
    with timebox(3), pytest.raises(ConfigError, match="not a regular file"):
        load_config(os.devnull)


def test_a_path_under_a_file_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "does not exist" in config_error(tmp_path / "file" / "eval.yaml")


def test_binary_garbage_names_a_line(tmp_path: Path) -> None:
    rng = random.Random(7)
    for i in range(20):
        path = tmp_path / f"garbage{i}.yaml"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4000))))
        message = config_error(path)
        assert re.search(r", line \d+: (not UTF-8 text|invalid YAML)", message) or "mapping" in message, message


def test_non_utf8_text_names_its_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"benchmark: {name: humaneval}\nmodel: {provider: reference}\nname: caf\xe9\n")
    message = config_error(path)
    assert f"{path}, line 3: not UTF-8 text (byte 0xe9 at column 10" in message


def test_a_utf8_byte_order_mark_and_crlf_line_ends_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "windows.yaml"
    path.write_bytes(b"\xef\xbb\xbfbenchmark:\r\n  name: humaneval\r\nmodel:\r\n  provider: reference\r\nsampling:\r\n  n: 3\r\n")
    assert load_config(path).sampling.n == 3
    path.write_bytes(b"\xef\xbb\xbfbenchmark:\r\n  name: humaneval\r\nmodel:\r\n  provider: reference\r\nsampling:\r\n  n: x\r\n")
    assert "line 6: 'sampling.n'" in config_error(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1: 2", "the key '1' is read as a YAML int"),
        ("null: 2", "the key 'null' is read as a YAML null"),
        ("~: 2", "the key '~' is read as a YAML null"),
        ("1.5: 2", "the key '1.5' is read as a YAML float"),
        ("2020-01-01: 2", "the key '2020-01-01' is read as a YAML timestamp"),
        ("sandbox:\n  on: 1", "the key 'on' in 'sandbox' is read as a YAML bool"),
        ("sandbox:\n  yes: 1", "the key 'yes' in 'sandbox' is read as a YAML bool"),
        ("? [a, b]\n: 1", "a key is a list; keys are names"),
        ("? {a: b}\n: 1", "a key is a mapping; keys are names"),
        ("model_extra:\n  ? - x\n  : 1", "a key in 'model_extra' is a list"),
    ],
    ids=["int", "null", "tilde", "float", "date", "on", "yes", "list", "mapping", "nested-list"],
)
def test_keys_must_be_names(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\n" + line + "\n")
    message = config_error(path)
    assert expected in message and f"{path}, line " in message, message


def test_a_quoted_key_that_looks_like_a_number_is_a_name(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\n'1': 2\n")
    assert "unknown key '1'" in config_error(path)


@pytest.mark.parametrize(
    ("entry", "key", "what"),
    [
        ('name: "run\\0one"', "name", "NUL"),
        ('output_dir: "runs\\0"', "output_dir", "NUL"),
        ('sandbox:\n  python: "/usr/bin/python3\\0"', "sandbox.python", "NUL"),
        ('name: "\\ud800"', "name", "unpaired surrogate (\\ud800)"),
        ('output_dir: "a\\udfffb"', "output_dir", "unpaired surrogate (\\udfff)"),
        ('"k\\0": 1', "k", "NUL"),
    ],
)
def test_nul_and_surrogates_are_refused_with_their_line(tmp_path: Path, entry: str, key: str, what: str) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\n" + entry + "\n")
    message = config_error(path)
    assert f"{path}, line " in message and what in message and f"'{key}" in message, message


def test_nul_and_surrogates_in_api_options_are_refused(tmp_path: Path) -> None:
    text, where = render(with_value(OPENAI, "model", "system_prompt", '"be \\ud83d brief"'))
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    assert f"line {where[('model', 'system_prompt')]}: 'model.system_prompt' holds an unpaired surrogate" in config_error(path)
    text, where = render(with_value(OPENAI, "model", "extra_body", '{user: "a\\0b"}'))
    path.write_text(text)
    assert f"line {where[('model', 'extra_body')]}: 'model.extra_body.user' holds a NUL" in config_error(path)


# --- input files and paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("missing.jsonl", "which is not a file"),
        ("'.'", "which is not a file"),
        ("''", "which is not a file"),
        ("/dev/null", "which is not a file"),
        ("/dev/zero", "which is not a file"),
        ("a" * 5000, "cannot be a path here (File name too long)"),
        ("~nosuchuser-evalkit/s.jsonl", "cannot be a path here"),
    ],
    ids=["missing", "folder", "empty", "devnull", "devzero", "too-long", "no-such-user"],
)
@pytest.mark.parametrize("key", ["benchmark.path", "model.path"])
def test_input_paths_that_name_no_file(tmp_path: Path, key: str, value: str, expected: str) -> None:
    entries: Entries = {"benchmark": {"name": "humaneval"}, "model": {"provider": "samples", "path": "s.jsonl"}}
    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0", "completion": ""}\n')
    section, name = key.split(".")
    if key == "benchmark.path":
        entries["benchmark"] = {"path": value}
    else:
        entries["model"]["path"] = value
    text, where = render(entries)
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    message = config_error(path)
    assert_names(message, path, where[(section, name)], f"'{key}'")
    assert expected in message, message


PROBLEM = json.dumps({"task_id": "P/0", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n    assert c() == 1\n"})


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([PROBLEM, "{not json"], "line 2: not valid JSON (Expecting property name"),
        (["", PROBLEM, "[1, 2]"], "line 3: expected a JSON object (a problem), got list"),
        (["\x00garbage"], "line 1: not valid JSON"),
    ],
    ids=["bad-json", "array", "garbage"],
)
def test_a_problems_file_with_a_bad_line_names_it(tmp_path: Path, lines: list[str], expected: str) -> None:
    from evalkit import BenchmarkConfig, get_benchmark

    path = tmp_path / "problems.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with timebox(60), pytest.raises(ConfigError) as info:
        get_benchmark(BenchmarkConfig(path=str(path))).problems()
    assert str(info.value).startswith(f"cannot read problems from {path}, {expected}"), str(info.value)


def test_a_samples_path_that_is_a_pipe_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "s.jsonl")
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: samples, path: s.jsonl}\n")
    assert "'model.path' names s.jsonl, which is not a file" in config_error(path, seconds=3)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("sandbox:\n  timeout_s: 0", "sandbox.timeout_s"),
        ("sandbox:\n  timeout_s: 1.0e+12", "sandbox.timeout_s"),
        ("sandbox:\n  timeout_s: 1e12", "sandbox.timeout_s"),  # YAML 1.1 reads this as text
        ("sandbox:\n  cpu_time_s: 1.0e+12", "sandbox.cpu_time_s"),
        ("sandbox:\n  memory_mb: 1", "sandbox.memory_mb"),
        ("sandbox:\n  max_processes: 0", "sandbox.max_processes"),
        ("sandbox:\n  max_output_bytes: 1", "sandbox.max_output_bytes"),
        ("sampling:\n  n: 100000000", "sampling.n"),
        ("scheduler:\n  workers: 1000000", "scheduler.workers"),
        ("scheduler:\n  max_retries: 1000000000", "scheduler.max_retries"),
        ("scheduler:\n  batch_size: 0", "scheduler.batch_size"),
    ],
)
def test_absurd_limits_are_config_errors(tmp_path: Path, entry: str, key: str) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\n" + entry + "\n")
    assert f"line 4: '{key}'" in config_error(path)


def test_large_but_harmless_limits_are_accepted(tmp_path: Path) -> None:
    """Memory, processes and output above what a machine has mean "no limit" (vmpool caps
    output at 8 MiB and treats a limit beyond 2**63 as none); a run with them completes
    (checked by hand: `evalkit run` with each, 2 HumanEval problems, pass@1 = 1.0)."""
    path = tmp_path / "eval.yaml"
    path.write_text(
        "benchmark: {name: humaneval}\nmodel: {provider: reference}\n"
        "sandbox: {memory_mb: 100000000000000, max_processes: 100000000000000000000, max_output_bytes: 100000000000000000000000}\n"
        "sampling: {n: 10000, k: [100000000000000000000]}\nscheduler: {workers: 10000, max_retries: 100}\n"
    )
    config = load_config(path)
    assert config.sandbox.memory_mb == 10**14 and config.sampling.n == 10_000 and config.scheduler.workers == 10_000


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("benchmark: {name: humaneval}\nmodel: {provider: reference}\nsampling:\n  n: [" + ", ".join(["123456789"] * 20000) + "]\n")
    message = config_error(path)
    assert "line 4: 'sampling.n'" in message and message.endswith("...") and len(message) < 400, message


# --- the same through the command line -----------------------------------------------------


def evalkit_run(config: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVALKIT, "run", str(config)], cwd=cwd, capture_output=True, text=True, timeout=60)


def assert_cli_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evalkit: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""


def test_cli_bad_configs_exit_2_with_one_line(tmp_path: Path) -> None:
    """A sample of the cases above through `python -m evalkit run`: exit 2, one line on
    stderr, no traceback, each within the subprocess timeout."""
    head = "benchmark: {name: humaneval}\nmodel: {provider: reference}\n"
    bomb = "l0: &l0 [a, a, a, a, a, a, a, a, a]\n" + "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
    cases: dict[str, bytes] = {
        "bomb": (bomb + head).encode(),
        "deep": (head + "a: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "binary": bytes(random.Random(3).randrange(256) for _ in range(3000)),
        "latin1": head.encode() + b"name: caf\xe9\n",
        "intkey": (head + "sandbox:\n  1: 2\n").encode(),
        "wrongtype": (head + "sampling: {n: [1]}\n").encode(),
        "absurd": (head + "scheduler: {workers: 1000000}\n").encode(),
        "baseurl": b"benchmark: {name: humaneval}\nmodel: {provider: openai, name: m, api_key_env: null, base_url: 'localhost:8000/v1'}\n",
        "extrabody": b"benchmark: {name: humaneval}\nmodel: {provider: openai, name: m, api_key_env: null, extra_body: {temperature: .nan}}\n",
        "list": b"- benchmark\n- model\n",
    }
    expected = {"bomb": "alias bomb", "deep": "nested too deeply", "binary": "bin.yaml", "latin1": "line 3: not UTF-8",
                "intkey": "line 4: the key '1' in 'sandbox'", "wrongtype": "'sampling.n'", "absurd": "'scheduler.workers'",
                "baseurl": "'model.base_url'", "extrabody": "'model.extra_body'", "list": "mapping"}
    for name, data in cases.items():
        path = tmp_path / ("bin.yaml" if name == "binary" else f"{name}.yaml")
        path.write_bytes(data)
        assert_cli_error(evalkit_run(path.name, tmp_path), path.name, expected[name])
    big = tmp_path / "big.yaml"
    with open(big, "wb") as out:
        out.truncate(50 * 2**20)
    assert_cli_error(evalkit_run("big.yaml", tmp_path), "big.yaml", "bytes")
    (tmp_path / "folder").mkdir()
    assert_cli_error(evalkit_run("folder", tmp_path), "folder is a folder")
    os.mkfifo(tmp_path / "fifo.yaml")
    assert_cli_error(evalkit_run("fifo.yaml", tmp_path), "not a regular file")
    assert_cli_error(evalkit_run("/dev/zero", tmp_path), "not a regular file")
    (tmp_path / "problems.jsonl").write_text(PROBLEM + "\n{oops\n")
    (tmp_path / "problems.yaml").write_text("benchmark: {path: problems.jsonl}\nmodel: {provider: reference}\n")
    assert_cli_error(evalkit_run("problems.yaml", tmp_path), "problems.jsonl, line 2: not valid JSON")  # no log line from datasets
