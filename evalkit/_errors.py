"""The exceptions evalkit raises.

    EvalkitError
    ├── UserInputError      the user's config or input files are wrong (exit code 2); the message
    │   ├── ConfigError     is one sentence naming the file, the line or key, and what was expected
    │   └── SamplesError
    ├── InfraError          the machinery failed beyond its retry budget (exit code 3)
    │   ├── StorageError    a run folder file could not be written mid-run (disk full, read-only, I/O
    │   │                   error); every result journaled before it is kept, `evalkit resume` continues
    │   └── CanaryFailure   a worker's canaries misbehaved in two fresh sandboxes in a row
    ├── RunStoreError       a run folder is missing, unreadable or of an unknown format version
    └── RunInterrupted      Ctrl-C or SIGTERM stopped a run; its finished results are on disk (exit 130)

Expected outcomes of generated code (failing tests, timeouts, OOM) are never exceptions: they
are `SampleResult`s with a status. Errors from third-party libraries are translated at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """Base class of every error evalkit raises on purpose."""


class UserInputError(EvalkitError):
    """Something the user gave us is wrong; printed as one sentence, without a traceback."""


class ConfigError(UserInputError):
    """A config file is malformed: unknown key, wrong type, missing file, bad value."""


class SamplesError(UserInputError):
    """A samples file is malformed: bad JSON, missing fields, unknown task_id."""


class InfraError(EvalkitError):
    """The sandbox, scheduler or another part of the machinery failed beyond its retry budget."""


class StorageError(InfraError):
    """A file of a run folder could not be written (``ENOSPC``, ``EROFS``, ``EIO``, ...).

    The message names the file and the operating system's reason; ``path`` and ``errno`` say
    the same for code. The journal never keeps half a line of the write that failed.
    """

    def __init__(self, message: str, path: object = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class CanaryFailure(InfraError):
    """A worker's known-pass or known-fail program (`evalkit._canary`) misbehaved in two fresh
    sandboxes in a row: the worker cannot be trusted, so the scheduler replaces it. ``counts``:
    what the worker counted since its last reply (`evalkit._infra.InfraCounts`), set by it."""

    counts: dict[str, int] | None = None


class RunStoreError(UserInputError):
    """A run folder cannot be used: missing files, or a format version this evalkit cannot read."""


class RunInterrupted(EvalkitError):
    """A run was stopped by the user; every finished result is in its journal."""

    def __init__(self, run_dir: object, done: int, total: int) -> None:
        super().__init__(f"interrupted with {done} of {total} samples finished and saved in {run_dir}")
        self.run_dir = run_dir
        self.done = done
        self.total = total
