"""The run configuration: a YAML file validated into `EvalConfig`.

Every mistake in a config file becomes a `ConfigError` whose message is one sentence naming
the file, the line, the key and what was expected. A config is a page of YAML, and what is
not is refused before it can cost time or memory: a file larger than `MAX_CONFIG_BYTES`, one
that is not a regular file (a folder, a pipe, a device), and YAML that expands to more than
`MAX_CONFIG_VALUES` values through aliases (an alias bomb) or nests too deeply. Keys are
names: a key YAML reads as something else (``1:``, ``on:``, ``null:``) is an error, and so is
a value holding a NUL character or an unpaired surrogate (``"\\0"``, ``"\\ud800"``).

Input paths in a config (``benchmark.path``, ``model.path``, ``baseline``) are relative to the
config file's folder; ``output_dir`` is relative to the working directory, like the output
folder of any command-line tool.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ._errors import ConfigError
from ._gates import Gate, parse_gates

CONFIG_VERSION: Literal[1] = 1
MAX_CONFIG_BYTES = 1_000_000
"""The largest config file read; hand-written configs are a few hundred bytes."""
MAX_CONFIG_VALUES = 100_000
"""Keys, values and list items of a config once its aliases (``*name``) are expanded: a few
lines of aliases can stand for billions of values (the "billion laughs")."""
_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SURROGATE = re.compile(r"[\ud800-\udfff]")

_Line = dict[tuple[str | int, ...], int]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BenchmarkConfig(_Section):
    """Which problems to run: a registered benchmark by name, or a JSONL file of problems."""

    name: str | None = None
    path: str | None = None
    limit: int | None = Field(None, ge=1)
    ids: list[str] | None = Field(None, min_length=1)
    strict: bool = False  # results must be plain built-in values (evalkit._strict)


class ModelConfig(BaseModel):
    """The provider's name; the remaining keys are checked by that provider's own options model."""

    model_config = ConfigDict(extra="allow", strict=True)

    provider: str


class SamplingConfig(_Section):
    n: int = Field(1, ge=1, le=10_000)  # beyond, a plan of n samples per problem fills memory before it runs
    k: list[int] = Field(default_factory=lambda: [1])

    @field_validator("k")
    @classmethod
    def _positive_k(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("must be a non-empty list of integers >= 1")
        return sorted(set(ks))


class SandboxConfig(_Section):
    driver: str = "auto"
    timeout_s: float = Field(10.0, gt=0, le=86400, allow_inf_nan=False)
    cpu_time_s: float | None = Field(None, gt=0, le=86400, allow_inf_nan=False)
    memory_mb: int = Field(512, ge=16)
    max_processes: int = Field(8, ge=1)  # memory_mb is per process: this bounds the total
    max_output_bytes: int = Field(1_000_000, ge=1024)
    python: str | None = None
    template: str | None = None  # the sandbox template, both drivers (None: microvm "base", bwrap the host's /usr)
    # fixed: every problem gets cpu_time_s / timeout_s. calibrated: each problem's reference
    # solution is timed first and its CPU limit is calibration_factor x that, at least
    # min_time_s, at most timeout_s (evalkit._calibrate)
    time_limit: Literal["fixed", "calibrated"] = "fixed"
    calibration_factor: float = Field(4.0, ge=1, le=1000, allow_inf_nan=False)
    min_time_s: float = Field(1.0, gt=0, le=86400, allow_inf_nan=False)
    recheck_failures: bool = True  # run a failed, timeout or oom sample once more; a changed verdict is flaky


class SchedulerConfig(_Section):
    address: str | None = None
    workers: int | None = Field(None, ge=1, le=10_000)  # Ray refuses a CPU share below 1/10,000
    batch_size: int = Field(8, ge=1)
    max_in_flight: int | None = Field(None, ge=1)
    max_retries: int = Field(2, ge=0, le=100)
    canary_every: int = Field(50, ge=0, le=1_000_000)  # samples between canary checks (evalkit._canary); 0: none
    canary_hold_s: float = Field(2.0, gt=0, le=3600, allow_inf_nan=False)  # check sooner once a held verdict waited this long


class EvalConfig(_Section):
    """A validated run configuration (DESIGN.md, "Contracts")."""

    version: Literal[1] = CONFIG_VERSION
    name: str = Field(pattern=_NAME_PATTERN)
    benchmark: BenchmarkConfig
    model: ModelConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    output_dir: str = "reports"
    gates: dict[str, Any] = Field(default_factory=dict)  # metric -> condition, checked by `_gates.parse_gate`
    baseline: str | None = None  # a run folder to compare with (evalkit._compare)

    # Where the config came from, so that later stages (which load data the config names) can
    # still point at the file and line of a key: see `where`.
    _source: Path | None = PrivateAttr(None)
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def parsed_gates(self) -> list[Gate]:
        """The ``gates`` as `Gate`s (they were checked when the config loaded)."""
        return parse_gates(self.gates, self.sampling.k)

    def where(self, *key: str) -> str:
        """``"file, line N"`` for ``key`` (e.g. ``where("benchmark", "ids")``), as precisely as known."""
        if self._source is None:
            return "config"
        return _where(self._source, self._lines, key)

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: object) -> object:
        # strict mode still lets True and 1.0 through a Literal[1], as they equal 1
        if isinstance(value, bool | float):
            raise ValueError(f"should be the integer {CONFIG_VERSION}")
        return value


def load_config(path: str | Path) -> EvalConfig:
    """Read, validate and resolve the config at ``path``.

    Raises `ConfigError` naming the file, line and key on any problem.
    """
    path = Path(path)
    return parse_config(_read_config(path), source=path)


def _read_config(path: Path) -> str:
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path} is a folder, not a config file")
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device may never end, or never start
            raise ConfigError(f"{path} is not a regular file (a pipe, socket or device), so it cannot be a config file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} holds {info.st_size} bytes, more than the {MAX_CONFIG_BYTES} a config file may (is it the right file?)")
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
    if len(data) > MAX_CONFIG_BYTES:  # it grew since stat
        raise ConfigError(f"{path} holds more than the {MAX_CONFIG_BYTES} bytes a config file may (is it the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}; save the file as UTF-8)") from None


def parse_config(text: str, source: Path, *, check_inputs: bool = True) -> EvalConfig:
    """Validate config ``text`` read from ``source`` (used in messages and to resolve paths).

    ``check_inputs=False`` skips checking that input files exist: for a run folder's stored
    config, which must stay readable after its inputs have moved.
    """
    data, lines = _load_yaml(text, source)
    data = dict(data)
    if "name" not in data:
        if not re.fullmatch(_NAME_PATTERN, source.stem):
            raise ConfigError(f"{source}: set 'name' (letters, digits, '.', '_', '-'); the file name {source.stem!r} cannot name a run folder")
        data["name"] = source.stem
    try:
        config = EvalConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source, lines, EvalConfig) from None
    _check_benchmark(config.benchmark, source, lines)
    _check_model(config, source, lines)
    _check_driver(config.sandbox, source, lines)
    _check_template(config.sandbox, source, lines)
    _check_gates(config, source, lines)
    if check_inputs:
        _check_runnable(config.sandbox, source, lines)
        config = _resolve_paths(config, source.parent, source, lines)
    config._source, config._lines = source, lines
    return config


def _load_yaml(text: str, source: Path) -> tuple[dict[str, Any], _Line]:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: a config may hold at most {MAX_CONFIG_BYTES} characters, and this one holds {len(text)}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines = _index_lines(node, source)  # first: it refuses an alias bomb before it is built
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}" if mark else ""
        source_line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        # `pass@1: >= 0.6` unquoted: YAML reads '>' as the start of a folded block
        hint = "; put a gate's condition in quotes: \">= 0.6\"" if re.search(r":\s*[<>]", source_line) else ""
        raise ConfigError(f"{source}{where}: invalid YAML: {exc.problem or exc}{hint}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; it has no mark
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{source}, line {line}: invalid YAML: character #x{exc.character:04x} is not allowed") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{source}: the YAML is nested too deeply (hundreds of levels) to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping of keys to values")
    return data, lines


def _index_lines(root: yaml.Node | None, source: Path) -> _Line:
    """The line of every key and list item, by its path of keys and indexes.

    Raises `ConfigError` for a duplicate key, a key that is not a name, a NUL or an unpaired
    surrogate in a value, and more than `MAX_CONFIG_VALUES` values (aliases expanded).
    """
    out: _Line = {}
    seen = 0

    def visit(node: yaml.Node, prefix: tuple[str | int, ...]) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: the config expands to more than {MAX_CONFIG_VALUES} values through its aliases (*name); is it an alias bomb?")
        if isinstance(node, yaml.ScalarNode):
            _check_text(node, prefix, source)
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag in (_STR_TAG, _MERGE_TAG)):
                    raise ConfigError(f"{source}, line {line}: {_not_a_name(key_node, prefix)}")
                key = (*prefix, str(key_node.value))
                if key in out:  # YAML forbids it; PyYAML would silently keep the last one
                    raise ConfigError(f"{source}, line {line}: duplicate key '{_dotted(key)}' (first on line {out[key]})")
                _check_text(key_node, key, source)
                out[key] = line
                visit(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[(*prefix, i)] = item.start_mark.line + 1
                visit(item, (*prefix, i))

    if root is not None:
        visit(root, ())
    return out


def _not_a_name(key_node: yaml.Node, prefix: tuple[str | int, ...]) -> str:
    inside = f" in '{_dotted(prefix)}'" if prefix else ""
    if isinstance(key_node, yaml.ScalarNode):
        kind = key_node.tag.rpartition(":")[2]
        return f"the key {key_node.value!r}{inside} is read as a YAML {kind}, not as a name (quote it if it is meant as one)"
    kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
    return f"a key{inside} is a {kind}; keys are names"


def _check_text(node: yaml.ScalarNode, loc: tuple[str | int, ...], source: Path) -> None:
    what = f"'{_dotted(loc)}'" if loc else "the config"
    where = f"{source}, line {node.start_mark.line + 1}"
    if "\0" in node.value:
        raise ConfigError(f"{where}: {what} holds a NUL character (\\0), which no name, path or prompt may hold")
    bad = _SURROGATE.search(node.value)
    if bad:
        raise ConfigError(f"{where}: {what} holds an unpaired surrogate (\\u{ord(bad.group()):04x}), which is not valid Unicode text")


def _where(source: Path, lines: _Line, loc: tuple[str | int, ...]) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"{source}, line {lines[loc[:end]]}"
    return str(source)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in loc).replace(".[", "[")


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _config_error(
    exc: ValidationError, source: Path, lines: _Line, model: type[BaseModel], prefix: tuple[str | int, ...] = ()
) -> ConfigError:
    """Turn the first pydantic error into one sentence with file, line and key."""
    err = exc.errors()[0]
    loc = (*prefix, *err["loc"])
    where = _where(source, lines, loc)
    key = _dotted(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(err["loc"][:-1]))
        expected = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return ConfigError(f"{where}: unknown key '{key}'{expected}")
    if err["type"] == "missing":
        return ConfigError(f"{where}: missing required key '{key}'")
    message = str(err["msg"])
    message = message[0].lower() + message[1:]
    message = message.removeprefix("value error, ").removeprefix("input ")
    got = err["input"]
    if isinstance(got, str) and err["type"] in ("float_type", "int_type", "float_parsing", "int_parsing"):
        return ConfigError(f"{where}: '{key}' {message}, got the string {_shown(got)} (YAML reads 1e12 as text: write 1.0e12)")
    return ConfigError(f"{where}: '{key}' {message}, got {_shown(got)}")


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_benchmark(bench: BenchmarkConfig, source: Path, lines: _Line) -> None:
    from ._benchmarks import benchmark_names

    if (bench.name is None) == (bench.path is None):
        where = _where(source, lines, ("benchmark",))
        raise ConfigError(f"{where}: 'benchmark' needs exactly one of 'name' (e.g. humaneval) or 'path' (a JSONL file)")
    if bench.name is not None and bench.name not in benchmark_names():
        where = _where(source, lines, ("benchmark", "name"))
        raise ConfigError(f"{where}: unknown benchmark '{bench.name}' (known: {', '.join(benchmark_names())}; or give 'path' to a JSONL file)")


def _check_driver(sandbox: SandboxConfig, source: Path, lines: _Line) -> None:
    from vmpool import list_drivers

    known = ["auto", *list_drivers()]
    if sandbox.driver not in known:
        where = _where(source, lines, ("sandbox", "driver"))
        raise ConfigError(f"{where}: unknown sandbox driver '{sandbox.driver}' (known: {', '.join(known)})")


def _check_template(sandbox: SandboxConfig, source: Path, lines: _Line) -> None:
    from vmpool import template_names

    if sandbox.template is None:
        return
    where = _where(source, lines, ("sandbox", "template"))
    if sandbox.template not in template_names():
        raise ConfigError(f"{where}: unknown template '{sandbox.template}' (known: {', '.join(template_names())})")


def _check_runnable(sandbox: SandboxConfig, source: Path, lines: _Line) -> None:
    """What the config itself asks for must exist here: a driver named explicitly (``auto`` is
    resolved, and checked, when the run starts) and the sandbox's interpreter."""
    from vmpool import get_driver

    if sandbox.driver != "auto":
        reason = get_driver(sandbox.driver).available()
        if reason is not None:
            raise ConfigError(f"{_where(source, lines, ('sandbox', 'driver'))}: sandbox driver '{sandbox.driver}' cannot run here: {reason}")
    if sandbox.python is not None and not _is_executable(sandbox.python):
        raise ConfigError(f"{_where(source, lines, ('sandbox', 'python'))}: 'sandbox.python' names {sandbox.python}, which is not an executable file")


def _is_executable(path: str) -> bool:
    try:
        return Path(path).is_file() and os.access(path, os.X_OK)
    except (OSError, ValueError):  # a name too long for the file system
        return False


def _check_model(config: EvalConfig, source: Path, lines: _Line) -> None:
    from ._models import provider_options_model

    try:
        options_model = provider_options_model(config.model.provider)
    except ConfigError as exc:
        raise ConfigError(f"{_where(source, lines, ('model', 'provider'))}: {exc}") from None
    try:
        options = options_model.model_validate(config.model.model_dump())
    except ValidationError as exc:
        raise _config_error(exc, source, lines, options_model, ("model",)) from None
    template = getattr(options, "prompt_template", None)
    if isinstance(template, str):
        from ._prompts import check_template

        try:
            check_template(template, key="model.prompt_template")
        except ConfigError as exc:
            raise ConfigError(f"{_where(source, lines, ('model', 'prompt_template'))}: {exc}") from None


def _check_gates(config: EvalConfig, source: Path, lines: _Line) -> None:
    for metric, condition in config.gates.items():
        try:
            parse_gates({metric: condition}, config.sampling.k)
        except ValueError as exc:
            raise ConfigError(f"{_where(source, lines, ('gates', metric))}: {exc}") from None


def _resolve_paths(config: EvalConfig, base: Path, source: Path, lines: _Line) -> EvalConfig:
    def located(value: str, loc: tuple[str, ...], wanted: str) -> Path:
        try:
            path = (base / Path(value).expanduser()).resolve()
            found = (path / wanted).is_file()
        except (OSError, RuntimeError, ValueError) as exc:  # too long a name; ~user of no user
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{_where(source, lines, loc)}: '{'.'.join(loc)}' names {_shown(value)}, which cannot be a path here ({reason})") from None
        if not found:
            what = "a file" if not wanted else "an evalkit run folder"
            raise ConfigError(f"{_where(source, lines, loc)}: '{'.'.join(loc)}' names {value}, which is not {what} (looked for {path / wanted})")
        return path

    def resolve(value: str, loc: tuple[str, ...]) -> str:
        return str(located(value, loc, ""))

    def run_folder(value: str) -> str:
        return str(located(value, ("baseline",), "run.json"))

    baseline = None if config.baseline is None else run_folder(config.baseline)
    bench = config.benchmark
    if bench.path is not None:
        bench = bench.model_copy(update={"path": resolve(bench.path, ("benchmark", "path"))})
    model = config.model
    extra = dict(model.model_extra or {})
    if isinstance(extra.get("path"), str):
        extra["path"] = resolve(extra["path"], ("model", "path"))
        model = ModelConfig.model_validate({"provider": model.provider, **extra})
    return config.model_copy(update={"benchmark": bench, "model": model, "baseline": baseline})
