"""Config files: the shipped ones load, and every mistake is one sentence naming the file,
the line, the dotted key and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evalkit import ConfigError, EvalConfig, load_config, parse_config

REFERENCE = "benchmark:\n  name: humaneval\nmodel:\n  provider: reference\n"


def write(folder: Path, text: str, name: str = "eval.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def samples_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n', encoding="utf-8")
    return path


def shipped_configs(repo_root: Path) -> list[Path]:
    return sorted([*repo_root.glob("configs/*.yaml"), *repo_root.glob("configs/*.yml")])


def test_the_configs_folder_is_not_empty(repo_root: Path) -> None:
    assert shipped_configs(repo_root), f"no YAML files in {repo_root / 'configs'}"


def test_every_shipped_config_loads(repo_root: Path) -> None:
    for path in shipped_configs(repo_root):
        config = load_config(path)
        assert isinstance(config, EvalConfig), path
        assert config.sampling.n >= max(config.sampling.k) or config.model.provider == "samples", path


def test_the_reference_config_is_the_humaneval_sanity_run(repo_root: Path) -> None:
    config = load_config(repo_root / "configs" / "humaneval.yaml")
    assert config.name == "humaneval-reference"
    assert config.benchmark.name == "humaneval"
    assert config.model.provider == "reference"
    assert config.sampling.k == [1]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, REFERENCE))
    assert config.version == 1
    assert config.sampling.n == 1 and config.sampling.k == [1]
    assert config.sandbox.driver == "auto" and config.sandbox.timeout_s == 10.0
    assert config.scheduler.address is None and config.scheduler.max_retries == 2
    assert config.output_dir == "reports"


def test_ks_are_sorted_and_deduplicated(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, REFERENCE + "sampling:\n  n: 10\n  k: [10, 1, 1, 5]\n"))
    assert config.sampling.k == [1, 5, 10]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "colour: red\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 5" in message
    assert "unknown key 'colour'" in message
    for allowed in ("version", "name", "benchmark", "model", "sampling", "sandbox", "scheduler", "output_dir"):
        assert allowed in message


def test_unknown_nested_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "sandbox:\n  timeout_s: 5\n  timout_s: 5\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 7" in message
    assert "'sandbox.timout_s'" in message
    for allowed in ("driver", "timeout_s", "cpu_time_s", "memory_mb", "max_processes", "max_output_bytes", "python"):
        assert allowed in message


def test_unknown_key_of_the_provider(tmp_path: Path) -> None:
    samples_file(tmp_path)
    path = write(tmp_path, "benchmark:\n  name: humaneval\nmodel:\n  provider: samples\n  path: samples.jsonl\n  temperature: 0.2\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 6" in message
    assert "unknown key 'model.temperature'" in message
    assert "provider" in message and "path" in message.split("temperature", 1)[1]


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "sampling:\n  n: ten\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 6" in message
    assert "'sampling.n'" in message
    assert "integer" in message
    assert "'ten'" in message


@pytest.mark.parametrize("value", ["'3'", "1.5", "true"])
def test_numbers_are_not_coerced(tmp_path: Path, value: str) -> None:
    message = config_error(write(tmp_path, REFERENCE + f"sampling:\n  n: {value}\n"))
    assert "line 6" in message and "'sampling.n'" in message and "integer" in message


def test_bad_value(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "sampling:\n  n: 1\n  k: [0]\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 7" in message
    assert "'sampling.k'" in message
    assert ">= 1" in message


def test_empty_k_is_a_bad_value(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, REFERENCE + "sampling:\n  k: []\n"))
    assert "line 6" in message and "'sampling.k'" in message and "non-empty" in message


def test_out_of_range_number(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, REFERENCE + "sandbox:\n  memory_mb: 4\n"))
    assert "line 6" in message and "'sandbox.memory_mb'" in message and "16" in message


def test_missing_required_key_of_the_provider(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark:\n  name: humaneval\nmodel:\n  provider: samples\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 3" in message  # the 'model' section it belongs in
    assert "missing required key 'model.path'" in message


def test_missing_model_section(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark:\n  name: humaneval\n")
    message = config_error(path)
    assert str(path) in message
    assert "missing required key 'model'" in message


def test_unknown_provider_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark:\n  name: humaneval\nmodel:\n  provider: gpt-17\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 4" in message
    assert "'gpt-17'" in message
    assert "reference" in message and "samples" in message


def test_unknown_benchmark_key(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  provider: reference\nbenchmark:\n  name: humaneval\n  split: test\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 5" in message
    assert "unknown key 'benchmark.split'" in message
    assert all(key in message for key in ("name", "path", "limit", "ids"))


@pytest.mark.parametrize(
    "benchmark",
    ["benchmark:\n  name: humaneval\n  path: problems.jsonl\n", "benchmark:\n  limit: 3\n"],
    ids=["both", "neither"],
)
def test_benchmark_needs_exactly_one_of_name_and_path(tmp_path: Path, benchmark: str) -> None:
    (tmp_path / "problems.jsonl").write_text("{}\n", encoding="utf-8")
    path = write(tmp_path, "model:\n  provider: reference\n" + benchmark)
    message = config_error(path)
    assert str(path) in message
    assert "line 3" in message
    assert "'benchmark'" in message
    assert "exactly one of 'name'" in message and "'path'" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "sampling:\n  k: [1, 10\n")
    message = config_error(path)
    assert str(path) in message
    assert "invalid YAML" in message
    assert re.search(r"line [67]\b", message), message


def test_tab_indentation_is_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark:\n\tname: humaneval\n")
    message = config_error(path)
    assert str(path) in message and "line 2" in message and "invalid YAML" in message


def test_control_character_is_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, REFERENCE + "name: run\x07one\n")
    message = config_error(path)
    assert str(path) in message and "line 5" in message and "invalid YAML" in message


@pytest.mark.parametrize("text", ["- benchmark\n- model\n", "just words\n", "", "# only a comment\n"])
def test_a_config_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert "mapping" in message


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "eval.yaml"
    message = config_error(path)
    assert str(path) in message
    assert "does not exist" in message


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_bytes(REFERENCE.encode() + b"name: caf\xe9\n")
    message = config_error(path)
    assert str(path) in message


def test_model_path_is_resolved_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = samples_file(tmp_path / "data")
    path = write(tmp_path / "configs", "benchmark:\n  name: humaneval\nmodel:\n  provider: samples\n  path: ../data/samples.jsonl\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    resolved = Path(config.model.model_dump()["path"])
    assert resolved.is_absolute()
    assert resolved == data.resolve()


def test_missing_model_path_is_an_error(tmp_path: Path) -> None:
    samples_file(tmp_path)  # next to the working directory's idea of it, but not the config's
    path = write(tmp_path / "configs", "benchmark:\n  name: humaneval\nmodel:\n  provider: samples\n  path: samples.jsonl\n")
    message = config_error(path)
    assert str(path) in message
    assert "line 5" in message
    assert "'model.path'" in message
    assert str((tmp_path / "configs" / "samples.jsonl").resolve()) in message


def test_benchmark_path_is_resolved_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text("{}\n", encoding="utf-8")
    path = write(tmp_path / "cfg", "benchmark:\n  path: ../problems.jsonl\nmodel:\n  provider: reference\n")
    monkeypatch.chdir(tmp_path / "cfg")
    assert Path(load_config(path).benchmark.path or "") == problems.resolve()
    missing = write(tmp_path / "cfg", "benchmark:\n  path: problems.jsonl\nmodel:\n  provider: reference\n", "missing.yaml")
    message = config_error(missing)
    assert "line 2" in message and "'benchmark.path'" in message


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, REFERENCE, "my-model_v2.yaml")).name == "my-model_v2"
    assert load_config(write(tmp_path, REFERENCE + "name: chosen\n", "other.yaml")).name == "chosen"


def test_to_yaml_round_trips_through_parse_config(tmp_path: Path) -> None:
    samples_file(tmp_path / "data")
    text = (
        "name: round-trip\n"
        "benchmark:\n  name: humaneval\n  ids: [HumanEval/0, HumanEval/3]\n  limit: 2\n"
        "model:\n  provider: samples\n  path: data/samples.jsonl\n"
        "sampling:\n  n: 10\n  k: [10, 1]\n"
        "sandbox:\n  driver: bwrap\n  timeout_s: 2.5\n  cpu_time_s: 2\n  memory_mb: 256\n"
        "scheduler:\n  address: auto\n  workers: 3\n  batch_size: 4\n  max_retries: 0\n"
        "output_dir: out/runs\n"
    )
    config = load_config(write(tmp_path, text))
    # parsed from a different folder: the resolved paths are absolute and must survive
    again = parse_config(config.to_yaml(), source=tmp_path / "run" / "config.yaml")
    assert again.model_dump() == config.model_dump()  # == would also compare where each was read from
    assert again.to_yaml() == config.to_yaml()


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        (REFERENCE + "sampling:\n  n: 5\nsampling:\n  n: 1\n", 7, "sampling", 5),
        (REFERENCE + "sampling:\n  n: 5\n  k: [1]\n  n: 1\n", 8, "sampling.n", 6),
    ],
    ids=["top-level", "nested"],
)
def test_duplicate_key_is_an_error(tmp_path: Path, text: str, line: int, key: str, first: int) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert f"line {line}" in message
    assert f"duplicate key '{key}'" in message
    assert f"line {first}" in message


def test_a_key_overriding_a_merge_key_is_not_a_duplicate(tmp_path: Path) -> None:
    text = REFERENCE + "sandbox:\n  <<: {timeout_s: 3, memory_mb: 256}\n  timeout_s: 5\n"
    config = load_config(write(tmp_path, text))
    assert (config.sandbox.timeout_s, config.sandbox.memory_mb) == (5, 256)


@pytest.mark.parametrize("value", [".inf", "1.0e+12", ".nan"])
def test_timeouts_must_be_finite_and_at_most_a_day(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"benchmark: {{name: humaneval}}\nmodel: {{provider: reference}}\nsandbox:\n  timeout_s: {value}\n")
    with pytest.raises(ConfigError, match=r"line 4: 'sandbox.timeout_s'"):
        load_config(path)


def test_a_driver_that_cannot_run_here_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no QEMU to be found
    path = write(tmp_path, "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsandbox:\n  driver: microvm\n")
    with pytest.raises(ConfigError, match=r"line 4: sandbox driver 'microvm' cannot run here: QEMU .*apt-get install"):
        load_config(path)


def test_a_missing_sandbox_interpreter_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsandbox:\n  python: /usr/bin/python9\n")
    with pytest.raises(ConfigError, match=r"line 4: 'sandbox.python' names /usr/bin/python9, which is not an executable file"):
        load_config(path)


def test_a_template_must_exist_and_serves_both_drivers(tmp_path: Path) -> None:
    base = "benchmark: {name: humaneval}\nmodel: {provider: reference}\nsandbox:\n"
    path = write(tmp_path, base + "  driver: microvm\n  template: nosuch\n")
    with pytest.raises(ConfigError, match=r"line 5: unknown template 'nosuch' \(known: base"):
        load_config(path)
    for driver in ("microvm", "bwrap", "auto"):
        path = write(tmp_path, base + "  driver: %s\n  template: base\n" % driver)
        assert load_config(path).sandbox.template == "base"
