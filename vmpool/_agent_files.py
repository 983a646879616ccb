"""The agent's files: /tmp, the one writable place of a sandbox, where request paths are
resolved; a fresh scratch directory per program and the removal of what a program left; the
bodies of ``write_file`` and ``read_file``.

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_files`` on
the host and as the top-level ``_agent_files`` inside the sandbox.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional, Set

if __package__:  # imported as vmpool._agent_files (tests, type checking)
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _protocol as proto  # type: ignore[no-redef]

TMP_DIR = "/tmp"


def resolve(path: str) -> str:
    """Relative paths are relative to /tmp, the one writable place of a sandbox."""
    if not path or "\0" in path:
        raise proto.MessageError("invalid path %.100r" % path)
    return os.path.normpath(os.path.join(TMP_DIR, path))


def write_file(path: str, data: bytes) -> int:
    """Write `data` to `path` (resolved), creating its parents; the number of bytes written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return len(data)


def read_file(path: str, limit: int) -> bytes:
    """The content of `path` (resolved); MessageError if it is larger than `limit` bytes."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise proto.MessageError("file is larger than %d bytes, the most one reply carries" % limit)
    return data


HOME_GUARD_MAX_ENTRIES = 20000  # a bigger home (pip installs of a session) is not guarded


class HomeGuard:
    """What a program may not leave behind in the sandbox user's home (exclusive mode, when
    the home is not /tmp): every path below it that did not exist before the program is deleted
    afterwards, so a program cannot hand files (a .pth in the user site, a planted module) to
    the next program. Contents of files that existed before are not restored: a template's home
    starts with directories only. Homes of more than HOME_GUARD_MAX_ENTRIES entries are left
    alone (an interactive session's home, where programs are not the unit of isolation)."""

    def __init__(self, home: Optional[str]) -> None:
        self.home = home if home and home != TMP_DIR and os.path.isdir(home) else None
        self.before = self._entries() if self.home else None

    def _entries(self) -> Optional[Set[str]]:
        assert self.home is not None
        entries: Set[str] = set()
        for top, dirs, names in os.walk(self.home):  # symlinked directories are not entered
            for name in (*dirs, *names):
                entries.add(os.path.join(top, name))
            if len(entries) > HOME_GUARD_MAX_ENTRIES:
                return None
        return entries

    def cleanup(self) -> None:
        if self.home is None or self.before is None:
            return
        _make_traversable(self.home)
        for top, dirs, names in os.walk(self.home):
            for name in dirs:
                _make_traversable(os.path.join(top, name))
            for name in list(dirs) + names:
                path = os.path.join(top, name)
                if path not in self.before:
                    _rmtree(path)
                    if name in dirs:
                        dirs.remove(name)


def _rmtree(path: str) -> None:
    """Delete what a program left, even parts it made unreadable. Never follows symlinks."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    _make_traversable(path)
    for top, dirs, _files in os.walk(path):  # top-down: children are fixed before they are listed
        for name in dirs:
            _make_traversable(os.path.join(top, name))
    shutil.rmtree(path, ignore_errors=True)


def _make_traversable(directory: str) -> None:
    if not os.path.islink(directory):
        try:
            os.chmod(directory, 0o700)
        except OSError:
            pass


class Workspace:
    """A fresh private scratch directory for one program, plus (exclusive mode) a snapshot of
    /tmp's top level, so that `cleanup` can delete everything the program added there."""

    def __init__(self, root: str, number: int, clean_tmp: bool) -> None:
        self.root = root
        self.before: Optional[Set[str]] = set(os.listdir(root)) if clean_tmp else None
        self.path = os.path.join(root, "run-%d" % number)
        _rmtree(self.path)
        os.mkdir(self.path, 0o700)

    def cleanup(self) -> None:
        if self.before is not None:
            try:
                os.chmod(self.root, 0o755)  # a program may have locked the agent out of /tmp
            except OSError:
                pass
            for name in set(os.listdir(self.root)) - self.before:
                _rmtree(os.path.join(self.root, name))
        _rmtree(self.path)
