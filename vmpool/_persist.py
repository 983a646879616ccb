"""Pausing a sandbox into a directory and resuming it from there (`LocalSandbox.pause`,
`LocalSandbox.resume`): the driver-independent part.

What is kept depends on the driver (`Driver.keeps_memory`):

- ``memory`` (microvm): the whole VM, written by `Driver.pause` (`vmpool._vm_pause`). A resumed
  sandbox goes on where it stopped: its processes still run, with their memory, and its files
  are there.
- ``files`` (bwrap, and any driver that cannot keep memory): the sandbox's writable directories
  (/tmp, and the home /home/user of template sandboxes) as tar archives made by its agent
  (`vmpool._persist_files`). Processes are not kept: a resumed sandbox is a new one, started
  with the same options, with those files unpacked.

The directory (created by `pause`, mode 0700) holds the data files and `STATE_FILE`, written
last, so a directory without it was never a complete pause. ``state.json`` (`PausedState`,
format `STATE_FORMAT`) says which driver, template (name and build hash) and options, what was
saved and the size of each file (for a files-only pause: the directory each archive unpacks
into, in order, and the links to make again after them), when the sandbox started and was
paused, how long pausing took and which vmpool version wrote it, plus the driver's own record
(``driver_state``).
`resume` refuses, with `PausedStateError` and before starting anything, a directory without a
readable state of this format, with missing or resized files, or whose template build or
driver record (QEMU version, machine configuration, ...) does not match this host; it deletes
the directory only once the sandbox runs, and leaves it as it is if anything fails.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from . import _persist_files
from ._client import AgentClient
from ._driver import Driver, StartOptions, get_driver
from ._errors import DriverUnavailableError, PausedStateError
from ._templates import cached

if TYPE_CHECKING:
    from ._sandbox import LocalSandbox

__all__ = ["STATE_FILE", "STATE_FORMAT", "PausedState", "StartRecord", "pause", "read_state", "resume"]

STATE_FILE = "state.json"
STATE_FORMAT = 1  # bump when the directory's layout or state.json's meaning changes
GREETING_TIMEOUT_S = 30.0  # the agent's hello after a failed pause


@dataclass(frozen=True)
class StartRecord:
    """How a `LocalSandbox` was started, kept for `pause`: its driver, options and start time."""

    driver: Driver
    options: StartOptions
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    hash: str


class SavedOptions(BaseModel):
    """The `StartOptions` of the paused sandbox, with its template as resolved then."""

    model_config = ConfigDict(extra="forbid")
    python: str | None
    tmp_size_mb: int
    agent_args: list[str]
    network: bool | None = None  # False: kept off although the template has one


class SavedFile(BaseModel):
    """One data file of the paused directory: its name there, its size, and for a files-only
    pause the sandbox directory its archive unpacks into (files are restored in list order)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    bytes: int
    restores: str | None = None


class SavedLink(BaseModel):
    """A symlink of a files-only pause that is made again after the archives are unpacked."""

    model_config = ConfigDict(extra="forbid")
    path: str
    target: str


class PausedState(BaseModel):
    """The content of state.json (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    format: int
    vmpool_version: str
    driver: str
    template: TemplateRef | None
    options: SavedOptions
    saved: Literal["memory", "files"]
    files: list[SavedFile]
    links: list[SavedLink]
    sandbox_id: str
    started_at: datetime
    paused_at: datetime
    pause_s: float
    driver_state: dict[str, Any]


def vmpool_version() -> str:
    try:
        return importlib.metadata.version("evalkit")  # vmpool ships in the evalkit distribution
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pause(sandbox: LocalSandbox, directory: Path) -> None:
    """`LocalSandbox.pause` (its docstring is the contract)."""
    begun = time.monotonic()
    record: StartRecord | None = getattr(sandbox, "_start_record", None)
    if record is None:
        raise ValueError("sandbox %s was not started by LocalSandbox.create or resume, so its driver and "
                         "options are unknown and it cannot be paused" % sandbox.sandbox_id)
    sandbox.ping()  # SandboxError (and the sandbox killed) if it is dead or its agent hangs
    template = None if record.driver.keeps_memory else _template_of(record.options.template)
    directory.mkdir(mode=0o700, parents=True)  # FileExistsError: never mix with other files
    directory.chmod(0o700)  # whatever the umask
    try:
        links: list[SavedLink] = []
        if record.driver.keeps_memory:
            saved: Literal["memory", "files"] = "memory"
            try:
                with sandbox._serial:  # no program, command or file operation runs meanwhile
                    driver_state = record.driver.pause(sandbox._process, directory)
            except OSError:
                if sandbox.is_running():
                    _greet_again(sandbox)
                raise
            if driver_state.get("template"):
                template = TemplateRef.model_validate(driver_state["template"])
            files = [_saved_file(directory, path.name, None) for path in sorted(directory.iterdir())]
        else:
            saved, driver_state = "files", {}
            parts, made_links = _persist_files.save(sandbox, directory)
            files = [_saved_file(directory, name, restores) for name, restores in parts]
            links = [SavedLink(path=path, target=target) for path, target in made_links]
        state = PausedState(
            format=STATE_FORMAT, vmpool_version=vmpool_version(), driver=sandbox.driver, template=template,
            options=SavedOptions(python=record.options.python, tmp_size_mb=record.options.tmp_size_mb,
                                 agent_args=list(record.options.agent_args), network=record.options.network),
            saved=saved, files=files, links=links, sandbox_id=sandbox.sandbox_id, started_at=record.started_at,
            paused_at=datetime.now(timezone.utc), pause_s=round(time.monotonic() - begun, 3),
            driver_state=driver_state)
        _write_state(directory, state)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        if not sandbox.is_running():
            sandbox.kill()  # the driver gave up on it: release the rest (finalizer, channel)
        raise
    sandbox.kill()


def _greet_again(sandbox: LocalSandbox) -> None:
    """Talk to the agent of a sandbox whose memory pause failed, which greets anew (see
    `Driver.pause`): a new client, as the old one saw its channel end. SandboxError (the
    sandbox killed) if no hello comes."""
    client = AgentClient(sandbox._process, "sandbox %s" % sandbox.sandbox_id)
    try:
        client.handshake(GREETING_TIMEOUT_S)
    except BaseException:
        sandbox.kill()
        raise
    sandbox._client = client


def _saved_file(directory: Path, name: str, restores: str | None) -> SavedFile:
    return SavedFile(name=name, bytes=(directory / name).stat().st_size, restores=restores)


def _template_of(name: str | None) -> TemplateRef | None:
    if name is None:
        return None
    built = cached(name)
    if built is None:  # it was built to start the sandbox: deleted or changed meanwhile
        raise OSError(errno.ENOENT, "cannot pause: template %r of the sandbox is no longer built, so a "
                      "resume could not start it (the sandbox keeps running)" % name)
    return TemplateRef(name=built.name, hash=built.hash)


def _write_state(directory: Path, state: PausedState) -> None:
    partial = directory / (".%s.partial" % STATE_FILE)
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
        handle.write(state.model_dump_json(indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, directory / STATE_FILE)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_state(directory: Path) -> PausedState:
    """The checked state.json of a paused sandbox's `directory` (see the module docstring).
    FileNotFoundError if there is no such directory; PausedStateError if it is no complete
    pause of this format, or its data files are missing or have another size."""
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no paused sandbox here", str(directory))
    try:
        raw = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PausedStateError("%s is not a paused sandbox: it has no %s (an interrupted pause, or another "
                               "directory)" % (directory, STATE_FILE)) from None
    except (OSError, ValueError) as exc:
        raise PausedStateError("cannot read %s: %s" % (directory / STATE_FILE, exc)) from None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise PausedStateError("%s has state format %r, and this vmpool (%s) reads format %d: resume it with "
                               "the vmpool version that paused it (%s)" % (
                                   directory, found, vmpool_version(), STATE_FORMAT,
                                   raw.get("vmpool_version", "unknown") if isinstance(raw, dict) else "unknown"))
    try:
        state = PausedState.model_validate(raw)
    except ValidationError as exc:
        raise PausedStateError("%s is malformed: %s" % (directory / STATE_FILE, exc)) from None
    for saved in state.files:
        path = directory / saved.name
        if os.path.basename(saved.name) != saved.name or saved.name in ("", ".", "..", STATE_FILE):
            raise PausedStateError("%s names a data file %r outside its directory" % (STATE_FILE, saved.name))
        try:
            size = path.stat().st_size
        except OSError:
            raise PausedStateError("the paused sandbox in %s is incomplete: %s is missing"
                                   % (directory, saved.name)) from None
        if size != saved.bytes:
            raise PausedStateError("the paused sandbox in %s is damaged: %s has %d bytes, %d were saved"
                                   % (directory, saved.name, size, saved.bytes))
        if (saved.restores is not None) != (state.saved == "files") or (
                saved.restores is not None and not _persist_files.is_area_path(saved.restores)):
            raise PausedStateError("%s: %s cannot restore %r" % (STATE_FILE, saved.name, saved.restores))
    for link in state.links:
        if state.saved != "files" or not _persist_files.is_area_path(link.path):
            raise PausedStateError("%s: cannot make a link at %r" % (STATE_FILE, link.path))
    return state


def resume(cls: type[LocalSandbox], directory: Path, start_timeout: float) -> LocalSandbox:
    """`LocalSandbox.resume` (its docstring is the contract)."""
    state = read_state(directory)
    driver = get_driver(state.driver)
    reason = driver.available()
    if reason is not None:
        raise DriverUnavailableError("the paused sandbox needs the %s driver, which is not usable here: %s"
                                     % (state.driver, reason))
    template = state.template
    if template is not None:
        built = cached(template.name)
        if built is None or built.hash != template.hash:
            raise PausedStateError(
                "the sandbox was paused running template %r build %s, which is not built here any more "
                "(its spec changed, or the cache was cleared): it cannot be resumed"
                % (template.name, template.hash[:16]))
    options = StartOptions(python=state.options.python, tmp_size_mb=state.options.tmp_size_mb,
                           agent_args=tuple(state.options.agent_args),
                           template=template.name if template else None, network=state.options.network)
    if state.saved == "memory":
        if not driver.keeps_memory:
            raise PausedStateError("the %s driver cannot resume a saved memory" % state.driver)
        process = driver.resume(directory, options, state.driver_state)
        sandbox = cls(driver.name, driver.isolation(), process, start_timeout, driver.reuse_after_timeout)
    else:
        sandbox = cls.create(driver, python=options.python, tmp_size_mb=options.tmp_size_mb,
                             start_timeout=start_timeout, agent_args=options.agent_args,
                             template=options.template, network=options.network)
        try:
            _persist_files.restore(sandbox, directory, [(saved.name, saved.restores or "") for saved in state.files],
                                   [(link.path, link.target) for link in state.links])
        except BaseException:
            sandbox.kill()
            raise
    sandbox._start_record = StartRecord(driver, options, state.started_at)
    shutil.rmtree(directory, ignore_errors=True)
    return sandbox

