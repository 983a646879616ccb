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
        summary.json      metrics (pass@k), counts per status, run metadata; written last
        report.html       the report
        determinism.json  the last `evalkit recheck`: the run's verdicts against a re-execution

The plan, the completions and the journal are the source of truth: everything else is derived
from them and can be rebuilt (`evalkit report`), and `evalkit resume` needs neither the samples
file nor the model for what they hold (it never asks a model API again for a completion in
``completions.jsonl``). A partial last line of either journal (a crash mid-write) is ignored.

A write that fails (disk full, read-only file system, I/O error) raises `StorageError` naming
the file: a journal cuts off what it wrote of the failed line, other files are replaced whole
or left as they were, so the folder stays one that `resume` and `report` can continue.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno as errnos
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ._config import EvalConfig, parse_config
from ._errors import ConfigError, RunStoreError, StorageError
from ._types import Generation, Problem, Sample, SampleResult, task_order
from ._version import __version__

RUN_FORMAT_VERSION = 1
DETERMINISM_FORMAT_VERSION = 1
_FSYNC_INTERVAL_S = 1.0


_Record = TypeVar("_Record", bound=BaseModel)


class Journal(Generic[_Record]):
    """Appends records (results, completions) to a JSONL file: one ``write`` per line, fsynced at
    most once a second. One writer per file.

    A write that fails (disk full, read-only, I/O error) raises `StorageError` naming the file,
    after cutting off what it wrote of its line, so the journal holds only whole records; the
    journal then refuses further appends.
    """

    def __init__(self, path: Path, record: type[_Record]) -> None:
        self.path = path
        try:
            _end_with_newline(path, record)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error(path, "open for appending", exc) from exc
        self._size = os.fstat(self._fd).st_size
        self._last_sync = time.monotonic()
        self._broken: StorageError | None = None
        self._closed = False

    def append(self, result: _Record) -> None:
        if self._broken is not None:
            raise StorageError(str(self._broken), self.path, self._broken.errno)
        data = memoryview((result.model_dump_json() + "\n").encode("utf-8"))
        written = 0
        try:
            while written < len(data):  # a short write, then ENOSPC: the disk filled mid-line
                written += os.write(self._fd, data[written:])
            if time.monotonic() - self._last_sync > _FSYNC_INTERVAL_S:
                os.fsync(self._fd)
                self._last_sync = time.monotonic()
        except OSError as exc:
            with contextlib.suppress(OSError):  # shrinking a file needs no free space; on EIO it may fail too
                os.ftruncate(self._fd, self._size)  # and readers skip a partial last line anyway
            self._broken = storage_error(self.path, "append to", exc)
            raise self._broken from exc
        self._size += len(data)

    def close(self, *, quiet: bool = False) -> None:
        """Sync and close; idempotent. ``quiet``: a failing sync raises nothing (another error
        is already on its way)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None:
                os.fsync(self._fd)
        except OSError as exc:
            if not quiet:
                raise storage_error(self.path, "sync", exc) from exc
        finally:
            os.close(self._fd)

    def __enter__(self) -> Journal[_Record]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(quiet=exc_type is not None)


class RunStore:
    """One run folder. Create it with `RunStore.create`, reopen it with `RunStore.open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    @staticmethod
    def prepare(config: EvalConfig) -> None:
        """Make ``output_dir`` if needed and prove it writable (`probe_writable`); `ConfigError`
        naming the key, the folder and the operating system's reason if it cannot hold runs."""
        folder = Path(config.output_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe_writable(folder)
        except OSError as exc:
            raise ConfigError(
                f"{config.where('output_dir')}: 'output_dir' names {folder.resolve()}, where run folders cannot be written ({_reason(exc)})"
            ) from None

    def check_writable(self) -> None:
        """`RunStoreError` naming the folder and the reason unless files can be written into it now."""
        try:
            probe_writable(self.path)
        except OSError as exc:
            raise RunStoreError(f"cannot write into the run folder {self.path} ({_reason(exc)})") from None

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
            except OSError as exc:
                raise storage_error(path, "make the run folder", exc) from exc
        store = cls(path.resolve())
        try:
            store.acquire()  # before run.json exists: nobody can take a run that is being created
        except OSError as exc:
            raise storage_error(store.path / ".lock", "write", exc) from exc
        _atomic_write(store.path / "config.yaml", config.to_yaml())
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

    def determinism(self) -> dict[str, Any] | None:
        """What ``determinism.json`` says (the last `evalkit recheck` of the run), or None if the
        run was never rechecked; `RunStoreError` if it cannot be read."""
        path = self.path / "determinism.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunStoreError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") != DETERMINISM_FORMAT_VERSION:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise RunStoreError(f"{path} has format version {version!r}; this evalkit reads version {DETERMINISM_FORMAT_VERSION}: delete it and run 'evalkit recheck' again")
        return data

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
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except OSError as exc:  # pyarrow's I/O errors are OSErrors too
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise storage_error(path, "write", exc) from exc
        return path

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        return path

    def remove(self, name: str) -> None:
        """Delete a derived file if it is there; `StorageError` if it cannot be."""
        path = self.path / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise storage_error(path, "remove", exc) from exc

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
    """Replace ``path`` by ``text`` at once: readers see the old file or the new one, never a
    part; `StorageError` (and the old file left as it was) if it cannot be written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise storage_error(path, "write", exc) from exc


def storage_error(path: Path, action: str, exc: OSError) -> StorageError:
    """The `StorageError` for an ``OSError`` raised while doing ``action`` to ``path``."""
    return StorageError(f"cannot {action} {path}: {_reason(exc)}", path, exc.errno)


def _reason(exc: OSError) -> str:
    """The operating system's reason, as in ``No space left on device (ENOSPC)``."""
    text = exc.strerror or str(exc)
    name = errnos.errorcode.get(exc.errno) if exc.errno is not None else None
    return f"{text} ({name})" if name else text


def probe_writable(folder: Path) -> None:
    """Write, fsync and remove a small file in ``folder``; the ``OSError`` if that fails (a
    read-only or full file system, no permission). Proves more than ``os.access``, which
    ignores read-only mounts for root and says nothing of free space."""
    handle, name = tempfile.mkstemp(prefix=".evalkit-probe-", dir=folder)
    try:
        os.write(handle, b"evalkit write probe\n")
        os.fsync(handle)
    finally:
        os.close(handle)
        os.unlink(name)


# What a run writes beyond its plan, per sample and in all: a verdict line (error, the kept ends
# of stdout and stderr, figures) and its parquet row; its share of the report and junit.xml (the
# report of 164 samples is about 520 KiB); a model's reply, stored three times (completions.jsonl,
# the journal, the parquet) when a model API writes the completions; run.json, summary.json and
# the temporary copies of files being replaced.
_VERDICT_BYTES = 8 * 2**10
_REPORT_BYTES = 4 * 2**10
_REPLY_BYTES = 16 * 2**10
_FIXED_BYTES = 2**20


def space_needed(samples: Sequence[Sample]) -> int:
    """About how many bytes a run of ``samples`` writes into its folder: the plan, each
    completion again in the journal and the parquet file, the verdicts and the final files.
    An estimate for a warning, not a bound: programs that print a lot write more."""
    plan = sum(len(s.model_dump_json().encode("utf-8")) + 1 for s in samples)
    replies = sum(1 for s in samples if s.prompt is not None and not s.completion)
    return 3 * plan + len(samples) * (_VERDICT_BYTES + _REPORT_BYTES) + replies * _REPLY_BYTES + _FIXED_BYTES


def low_space(folder: Path, samples: Sequence[Sample]) -> str | None:
    """A warning when the file system of ``folder`` has less free space than a run of ``samples``
    is expected to write (`space_needed`), else None."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    needed = space_needed(samples)
    if free >= needed:
        return None
    return (
        f"only {_size(free)} free where {folder.resolve()} is, and this run may write about {_size(needed)}: "
        "if the disk fills up the run stops, keeping every finished result; free space, then continue with 'evalkit resume RUN_DIR'"
    )


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count < 2**30 else f"{count / 2**30:.1f} GiB"


def now() -> str:
    """The current UTC time in ISO 8601, as run.json records times."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
