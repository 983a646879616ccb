"""The run folder: the resolved config, the crash-safe journal of results, and the final files.

    <output_dir>/<name>-<YYYYmmdd-HHMMSS>/
        run.json          format version, evalkit version, state (running, interrupted, failed, finished)
        config.yaml       the resolved config
        plan.jsonl        every sample the run evaluates (task_id, sample_idx, completion), fixed at creation;
                          for a model-API run, the rendered prompt of each sample (its completion comes later)
        problems.jsonl    the problems the run checks against (prompt, tests, entry point), as they were
        completions.jsonl model-API runs: one line per completion received, appended as it arrives
        samples.jsonl     the journal: one line per finished sample, appended and flushed as it arrives
        calibration.json  sandbox.time_limit calibrated: each problem's limits (evalkit._calibrate)
        samples.parquet   one row per sample, written from the journal at the end
        summary.json      metrics (pass@k), counts per status, run metadata
        report.html       the report

The plan, the completions and the journal are the source of truth: everything else is derived
from them and can be rebuilt (`evalkit report`), and `evalkit resume` needs neither the samples
file nor the model for what they hold (it never asks a model API again for a completion in
``completions.jsonl``). A partial last line of either journal (a crash mid-write) is ignored.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ._config import EvalConfig, parse_config
from ._errors import ConfigError, RunStoreError
from ._types import Generation, Problem, Sample, SampleResult, task_order
from ._version import __version__

RUN_FORMAT_VERSION = 1
_FSYNC_INTERVAL_S = 1.0


_Record = TypeVar("_Record", bound=BaseModel)


class Journal(Generic[_Record]):
    """Appends records (results, completions) to a JSONL file: flushed per line, fsynced at most
    once a second. One writer per file."""

    def __init__(self, path: Path, record: type[_Record]) -> None:
        _end_with_newline(path, record)
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._last_sync = time.monotonic()

    def append(self, result: _Record) -> None:
        self._file.write(result.model_dump_json() + "\n")
        self._file.flush()
        if time.monotonic() - self._last_sync > _FSYNC_INTERVAL_S:
            os.fsync(self._file.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> Journal[_Record]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunStore:
    """One run folder. Create it with `RunStore.create`, reopen it with `RunStore.open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    @staticmethod
    def prepare(config: EvalConfig) -> None:
        """Make ``output_dir`` if needed; `ConfigError` naming the key if it cannot hold runs."""
        try:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{config.where('output_dir')}: 'output_dir' names {config.output_dir}, where run folders cannot be made ({exc.strerror})") from None

    @classmethod
    def create(cls, config: EvalConfig) -> RunStore:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(config.output_dir) / f"{config.name}-{stamp}"
        cls.prepare(config)
        path, i = base, 1
        while True:  # mkdir claims a name atomically; exists() then mkdir() raced another run
            try:
                path.mkdir()
                break
            except FileExistsError:
                i += 1
                path = base.with_name(f"{base.name}-{i}")
        store = cls(path.resolve())
        store.acquire()  # before run.json exists: nobody can take a run that is being created
        (store.path / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        store.write_meta(state="running", created=now())
        return store

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        """Reopen a run folder; raises `RunStoreError` if it is not one this evalkit can read."""
        store = cls(Path(path).resolve())
        meta = store.meta()
        if meta.get("format_version") != RUN_FORMAT_VERSION:
            raise RunStoreError(
                f"{store.path} has run format version {meta.get('format_version')!r}; this evalkit "
                f"({__version__}) reads version {RUN_FORMAT_VERSION}: use the evalkit version that wrote it"
            )
        return store

    def meta(self) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunStoreError(f"{self.path} is not an evalkit run folder (no run.json)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunStoreError(f"cannot read {self.path / 'run.json'}: {exc}") from exc
        if not isinstance(meta, dict):
            raise RunStoreError(f"cannot read {self.path / 'run.json'}: not a JSON object")
        return meta

    def write_meta(self, **updates: Any) -> None:
        path = self.path / "run.json"
        meta = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        meta.update(format_version=RUN_FORMAT_VERSION, evalkit_version=__version__, **updates)
        _atomic_write(path, json.dumps(meta, indent=2) + "\n")

    def config(self) -> EvalConfig:
        path = self.path / "config.yaml"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunStoreError(f"cannot read {path}: {exc}") from exc
        return parse_config(text, source=path, check_inputs=False)

    def write_plan(self, samples: Iterable[Sample]) -> None:
        lines = "".join(s.model_dump_json() + "\n" for s in samples)
        _atomic_write(self.path / "plan.jsonl", lines)

    def plan(self) -> list[Sample]:
        """The samples this run evaluates, as fixed when it was created; `RunStoreError` naming
        the line if the file was damaged or edited into something invalid."""
        path = self.path / "plan.jsonl"
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            raise RunStoreError(f"{self.path} has no plan.jsonl: it was not written by a complete 'evalkit run' start") from None
        except OSError as exc:
            raise RunStoreError(f"cannot read {path}: {exc.strerror}") from exc
        samples: dict[tuple[str, int], Sample] = {}
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sample = Sample.model_validate_json(line)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise RunStoreError(f"{path}, line {lineno}: not a valid sample ({'.'.join(map(str, err['loc']))}: {err['msg']})") from None
            if sample.key in samples:
                raise RunStoreError(f"{path}, line {lineno}: sample {sample.task_id} #{sample.sample_idx} appears twice")
            samples[sample.key] = sample
        if not samples:
            raise RunStoreError(f"{path} holds no samples")
        return list(samples.values())

    def write_problems(self, problems: Iterable[Problem]) -> None:
        _atomic_write(self.path / "problems.jsonl", "".join(p.model_dump_json() + "\n" for p in problems))

    def problems(self) -> list[Problem] | None:
        """The problems the run was started with (``problems.jsonl``), or None for a run folder
        written before evalkit kept them."""
        path = self.path / "problems.jsonl"
        if not path.exists():
            return None
        return list(_read_jsonl(path, Problem))

    def acquire(self) -> None:
        """Claim the run folder for this process; `RunStoreError` if another process holds it.

        The claim is an exclusive ``flock`` on ``.lock``, released by `release` or when the
        process ends, however it ends.
        """
        if self._lock is not None:
            return
        handle = open(self.path / ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunStoreError(f"{self.path} is being run by another evalkit process (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def in_use(self) -> bool:
        """Whether another process holds this run folder right now."""
        try:
            self.acquire()
        except RunStoreError:
            return True
        self.release()
        return False

    def journal(self) -> Journal[SampleResult]:
        return Journal(self.path / "samples.jsonl", SampleResult)

    def completions_journal(self) -> Journal[Generation]:
        return Journal(self.path / "completions.jsonl", Generation)

    def completions(self) -> dict[tuple[str, int], Generation]:
        """The completions a model-API run has received, by sample (the last line of a sample wins)."""
        return {g.key: g for g in _read_jsonl(self.path / "completions.jsonl", Generation)}

    def results(self) -> list[SampleResult]:
        """The journal's results, one per sample: for a sample recorded twice (a retried
        infra_error), the last verdict; an infra_error never replaces a verdict."""
        latest: dict[tuple[str, int], SampleResult] = {}
        for result in _read_jsonl(self.path / "samples.jsonl", SampleResult):
            previous = latest.get(result.key)
            if result.status == "infra_error" and previous is not None and previous.status != "infra_error":
                continue  # a verdict stands: a later infrastructure failure on the same sample says nothing new
            latest[result.key] = result
        return list(latest.values())

    def write_parquet(self, results: Iterable[SampleResult]) -> Path:
        import pandas as pd

        rows = [r.model_dump() for r in sorted(results, key=_order)]
        frame = pd.DataFrame(rows, columns=list(SampleResult.model_fields))
        frame["exit_code"] = frame["exit_code"].astype("Int64")  # stays integer when some are missing (timeouts)
        path = self.path / "samples.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        _atomic_write(path, text)
        return path


def _order(result: SampleResult) -> tuple[str, int, str, int]:
    return (*task_order(result.task_id), result.sample_idx)


def _read_jsonl(path: Path, record: type[_Record]) -> Iterator[_Record]:
    """The records of a journal; a partial last line (a crash mid-write) is skipped, any other
    invalid line is a `RunStoreError` naming it."""
    if not path.exists():
        return
    # bytes split on b"\n" only: a record holds raw U+2028, U+0085 ... (str.splitlines() splits
    # on them), and a crash can cut the last line inside a multi-byte character
    lines = path.read_bytes().removesuffix(b"\n").split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield record.model_validate_json(line)
        except ValidationError as exc:
            if lineno == len(lines):
                continue
            raise RunStoreError(f"{path}, line {lineno}: not a valid {record.__name__} record ({exc.errors()[0]['msg']})") from exc


def _end_with_newline(path: Path, record: type[BaseModel]) -> None:
    """Before appending to a journal, settle a last line that lacks its newline (a crash mid-write).

    Appended after it, the next record would fuse with it into a corrupt line in the middle of
    the journal. A partial record, which `RunStore.results` ignores, is cut off (its sample runs
    again); a whole one, which `results` reads, gets its newline.
    """
    try:
        handle = open(path, "rb+")
    except FileNotFoundError:
        return
    with handle:
        end = start = handle.seek(0, os.SEEK_END)
        tail = b""
        while start > 0:
            step = min(start, 1 << 16)
            handle.seek(start - step)
            chunk = handle.read(step)
            cut = chunk.rfind(b"\n")
            tail = chunk[cut + 1 :] + tail
            if cut >= 0:
                start += cut + 1 - step
                break
            start -= step
        if not tail:
            return
        try:
            record.model_validate_json(tail)
        except ValidationError:
            handle.truncate(start)
        else:
            handle.seek(end)
            handle.write(b"\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def now() -> str:
    """The current UTC time in ISO 8601, as run.json records times."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
