"""Files-only pauses (drivers without `Driver.keeps_memory`, e.g. bwrap): a sandbox's writable
directories, `AREAS`, saved as tar archives through its agent and unpacked into a new sandbox.

Every archive has to fit one agent message (`MAX_PAYLOAD_BYTES`, ~48 MiB). A directory whose
archive would not is split: its own entries go into archives the host assembles from
`Files.list` and `Files.read` (modes and times kept; hard links become copies), and each of its
subdirectories is packed the same way, recursively. So only one file larger than a message
cannot be kept (OSError(EFBIG); the sandbox keeps running). Archives are unpacked in the
order they were made, parents before their subdirectories.

The agent's ``unpack_dir`` refuses symlinks that lead outside the directory it unpacks into
(an absolute one such as a virtualenv's ``bin/python``, or ``../x`` at the top of a split
part). Those are taken out of the archives and made again after them, by ``ln -s`` in the new
sandbox. Sockets are left out, as tar leaves them out; a FIFO or a device node refuses the
pause (OSError(EINVAL)). Processes are not kept: the resumed sandbox is a new one.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import shlex
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._agent_fs import MAX_PAYLOAD_BYTES
from ._protocol import b64decode, b64encode
from ._templates import HOME_DIR
from ._types import EntryInfo

if TYPE_CHECKING:
    from ._sandbox import LocalSandbox

__all__ = ["AREAS", "is_area_path", "restore", "save"]

AREAS = (("tmp", "/tmp"), ("home", HOME_DIR))  # archive name prefix, directory in the sandbox
OP_TIMEOUT_S = 120.0  # packing or unpacking one archive of up to ~48 MiB
PART_BYTES = MAX_PAYLOAD_BYTES - 64 * 1024  # what an archive the host assembles may hold
LINKS_PER_COMMAND = 200

Part = tuple[str, str]  # archive file name, the sandbox directory it unpacks into
Link = tuple[str, str]  # path in the sandbox, target


def save(sandbox: LocalSandbox, directory: Path) -> tuple[list[Part], list[Link]]:
    """Write the archives of the sandbox's `AREAS` into `directory`: the parts in restore order,
    and the links to make after them."""
    parts: list[Part] = []
    links: list[Link] = []
    for prefix, area in AREAS:
        if not sandbox.files.exists(area):
            continue
        for number, (root, archive) in enumerate(_pack(sandbox, area)):
            kept, refused = _take_out_links(archive, root)
            links += refused
            name = "%s.%d.tar" % (prefix, number)
            with open(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(kept)
                handle.flush()
                os.fsync(handle.fileno())
            parts.append((name, root))
    return parts, links


def _pack(sandbox: LocalSandbox, path: str) -> Iterator[tuple[str, bytes]]:
    """(directory, archive) pairs that hold the tree under `path` (see the module docstring)."""
    try:
        reply = sandbox._call("pack_dir", OP_TIMEOUT_S, path=path)
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
    else:
        yield path, b64decode(str(reply.get("tar_b64", "")))
        return
    subdirectories = []
    batch = _Batch()
    for entry in sandbox.files.list(path):
        info = tarfile.TarInfo(entry.name)
        info.mode, info.mtime = entry.mode, entry.modified_time.timestamp()
        data = b""
        if entry.type == "dir":
            info.type = tarfile.DIRTYPE
            subdirectories.append(entry.path)
        elif entry.type == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, entry.symlink_target or ""
        elif entry.permissions.startswith("s"):
            continue
        else:
            data = _read_file(sandbox, entry)
            info.size = len(data)
        yield from ((path, archive) for archive in batch.add(info, data))
    if batch.members:
        yield path, batch.archive()
    for subdirectory in subdirectories:
        yield from _pack(sandbox, subdirectory)


def _read_file(sandbox: LocalSandbox, entry: EntryInfo) -> bytes:
    if not entry.permissions.startswith("-"):
        raise _special(entry.path)
    if entry.size > PART_BYTES:
        raise OSError(errno.EFBIG, "cannot pause: %s has %d bytes, and a pause of a %s sandbox keeps files of "
                      "at most %d (the sandbox keeps running)" % (entry.path, entry.size, sandbox.driver, PART_BYTES))
    return sandbox.files.read(entry.path, format="bytes")


def _special(path: str) -> OSError:
    return OSError(errno.EINVAL, "cannot pause: %s is neither a file, a directory nor a link, and only those "
                   "are kept; remove it first (the sandbox keeps running)" % path)


class _Batch:
    """Members collected into archives of at most PART_BYTES."""

    def __init__(self) -> None:
        self.members: list[tuple[tarfile.TarInfo, bytes]] = []
        self.size = 0

    def add(self, info: tarfile.TarInfo, data: bytes) -> list[bytes]:
        blocks = 4 + (len(info.name) + len(info.linkname)) // tarfile.BLOCKSIZE  # with a pax header
        cost = (blocks - (-len(data) // tarfile.BLOCKSIZE)) * tarfile.BLOCKSIZE
        done = [self.archive()] if self.members and self.size + cost > PART_BYTES else []
        self.members.append((info, data))
        self.size += cost
        return done

    def archive(self) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.members:
                tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        self.members, self.size = [], 0
        return buffer.getvalue()


def _take_out_links(archive: bytes, root: str) -> tuple[bytes, list[Link]]:
    """`archive` without the symlinks the agent's unpack_dir would refuse (the same test as
    ``_agent_fs.unpack_tar``), and those links; EINVAL for members it takes none of."""
    links: list[Link] = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            if not (member.isdir() or member.isfile() or member.issym() or member.islnk()):
                raise _special(posixpath.join(root, member.name))
            if member.issym():
                name = posixpath.normpath(member.name)
                leads = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                if member.linkname.startswith("/") or leads.split("/")[0] == "..":
                    links.append((posixpath.join(root, name), member.linkname))
        if not links:
            return archive, []
        taken = {path for path, _ in links}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as kept:
            for member in members:
                if not (member.issym() and posixpath.join(root, posixpath.normpath(member.name)) in taken):
                    kept.addfile(member, tar.extractfile(member) if member.isfile() else None)
    return buffer.getvalue(), links


def restore(sandbox: LocalSandbox, directory: Path, parts: list[Part], links: list[Link]) -> None:
    """Unpack `parts` from `directory` into the new `sandbox` in order, then make `links`."""
    for name, root in parts:
        archive = (directory / name).read_bytes()
        sandbox._call("unpack_dir", OP_TIMEOUT_S, path=root, tar_b64=b64encode(archive))
    for start in range(0, len(links), LINKS_PER_COMMAND):
        command = " && ".join("ln -sn -- %s %s" % (shlex.quote(target), shlex.quote(path))
                              for path, target in links[start:start + LINKS_PER_COMMAND])
        done = sandbox.commands.run(command)
        if done.exit_code != 0:
            raise OSError(errno.EIO, "could not make the paused sandbox's links again: %s" % done.stderr.strip())


def is_area_path(path: str) -> bool:
    """Whether `path` is one of `AREAS` or below one (what a part may unpack into)."""
    return posixpath.normpath(path) == path and any(
        path == area or path.startswith(area + "/") for _, area in AREAS)

