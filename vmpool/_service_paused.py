"""Paused sandboxes on disk, so that any later service process can list, resume or kill them.

Layout, under ``<cache>/paused`` (`vmpool._templates.cache_dir`)::

    <id>/
        sandbox.json   {"format": 1, "info": SandboxInfo, "envs": {...}, "kernel": {...} | null}:
                       written last, atomically; a folder without it is a pause in progress
                       (or one that crashed midway). "kernel" is how to follow the sandbox's
                       code kernel again (`vmpool._service_code.CodeRunner.suspend`)
        state/         what `LocalSandbox.pause` saved (driver-specific)
        lock           flock'ed while the sandbox is paused, resumed or deleted, so that two
                       service processes never resume the same sandbox

Paused sandboxes never expire (E2B keeps them until they are killed).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._errors import SandboxException
from ._service_types import SandboxInfo
from ._templates import cache_dir

__all__ = ["PausedSandbox", "PausedStore", "default_paused_dir"]

FORMAT_VERSION = 1
INFO_FILE = "sandbox.json"


def default_paused_dir() -> Path:
    return cache_dir() / "paused"


@dataclass(frozen=True)
class PausedSandbox:
    """A paused sandbox as its folder describes it."""

    info: SandboxInfo
    envs: dict[str, str]
    state_dir: Path
    kernel: dict[str, Any] | None = None


class PausedStore:
    """The folder of paused sandboxes (see module docstring)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_paused_dir()

    def _folder(self, sandbox_id: str) -> Path:
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise SandboxException("invalid sandbox id %r" % sandbox_id)
        return self.root / sandbox_id

    @contextmanager
    def locked(self, sandbox_id: str, create: bool = False) -> Iterator[Path | None]:
        """Hold the lock of `sandbox_id`'s folder: yields the folder, or None if there is none
        (and `create` is false)."""
        folder = self._folder(sandbox_id)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o711)  # names are capabilities: not listable by others
            folder.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder if folder.is_dir() else None
        finally:
            os.close(fd)

    def state_dir(self, folder: Path) -> Path:
        return folder / "state"

    def commit(self, folder: Path, info: SandboxInfo, envs: dict[str, str],
               kernel: dict[str, Any] | None = None) -> None:
        """Mark the pause in `folder` complete (call with its lock held)."""
        data = {"format": FORMAT_VERSION, "info": info.model_dump(mode="json"), "envs": envs, "kernel": kernel}
        temporary = folder / (INFO_FILE + ".tmp")
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, folder / INFO_FILE)

    def read(self, folder: Path) -> PausedSandbox | None:
        """The paused sandbox in `folder`; None if its pause never completed. SandboxException
        if its description is unreadable or from another vmpool version."""
        try:
            data: Any = json.loads((folder / INFO_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SandboxException("paused sandbox %s: unreadable %s: %s" % (folder.name, INFO_FILE, exc)) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise SandboxException(
                "paused sandbox %s was saved in format %r, this vmpool reads format %d: resume it with "
                "the vmpool that paused it, or kill it" % (folder.name, data.get("format") if isinstance(
                    data, dict) else None, FORMAT_VERSION))
        try:
            info = SandboxInfo.model_validate(data["info"])
            envs = {str(k): str(v) for k, v in dict(data.get("envs") or {}).items()}
            kernel = data.get("kernel")
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise SandboxException("paused sandbox %s: malformed %s: %s" % (folder.name, INFO_FILE, exc)) from None
        return PausedSandbox(info, envs, self.state_dir(folder), kernel if isinstance(kernel, dict) else None)

    def get(self, sandbox_id: str) -> PausedSandbox | None:
        """The paused sandbox `sandbox_id`, if there is one (read without its lock)."""
        folder = self._folder(sandbox_id)
        return self.read(folder) if folder.is_dir() else None

    def all(self) -> list[PausedSandbox]:
        """Every completely paused sandbox; unreadable ones are skipped."""
        found = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            try:
                paused = self.read(folder)
            except SandboxException:
                continue
            if paused is not None:
                found.append(paused)
        return found

    def delete(self, folder: Path) -> None:
        """Remove a paused sandbox's folder (call with its lock held)."""
        shutil.rmtree(folder, ignore_errors=True)
