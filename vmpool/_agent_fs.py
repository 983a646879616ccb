"""The agent's filesystem ops beyond one file's read and write: entry info, listing, removal,
rename, make_dir, several files at once, and the tar archives that move a directory tree in one
message (packed on one side, unpacked on the other by `unpack_tar`, which the host uses too).

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_fs`` on the
host and as the top-level ``_agent_fs`` inside the sandbox. Paths reaching these ops are already
resolved by ``_agent_files.resolve``; where writes succeed is the sandbox's business (only /tmp
is writable). Failures a caller causes (missing paths, a refused archive member, a tree too large
for one message) are OSErrors, which the agent replies as ``os_error``.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from typing import Any, Callable, Dict, List, Tuple

if __package__:
    from . import _agent_files as files
    from . import _protocol as proto
else:
    import _agent_files as files  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

MAX_PAYLOAD_BYTES = proto.MAX_LINE_BYTES // 4 * 3 - 4096  # raw bytes that fit one line as base64
MAX_LIST_ENTRIES = 100_000  # ~300 bytes each as JSON: a listing reply always fits one line


def entry_info(path: str) -> Dict[str, Any]:
    """What `path` is, without following a final symlink (the wire form of `vmpool.EntryInfo`)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        kind, target = "symlink", os.readlink(path)
    else:
        kind, target = ("dir" if stat.S_ISDIR(info.st_mode) else "file"), None
    return {"name": os.path.basename(path), "path": path, "type": kind, "size": info.st_size,
            "mode": stat.S_IMODE(info.st_mode), "permissions": stat.filemode(info.st_mode),
            "modified_time": info.st_mtime, "symlink_target": target}


def list_dir(path: str, depth: int) -> List[Dict[str, Any]]:
    """Entries below `path` down to `depth` levels (1: its children), sorted by path; symlinked
    directories are listed, never entered."""
    entries: List[Dict[str, Any]] = []
    pending: List[Tuple[str, int]] = [(path, 1)]
    while pending:
        directory, level = pending.pop()
        with os.scandir(directory) as scan:
            names = sorted(entry.name for entry in scan)
        for name in names:
            child = os.path.join(directory, name)
            entries.append(entry_info(child))
            if len(entries) > MAX_LIST_ENTRIES:
                raise OSError(errno.EFBIG, "more than %d entries; list with a smaller depth" % MAX_LIST_ENTRIES)
            if level < depth and entries[-1]["type"] == "dir":
                pending.append((child, level + 1))
    entries.sort(key=lambda entry: entry["path"])
    return entries


def remove(path: str) -> None:
    """Delete a file, a symlink (not its target) or a directory tree."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def make_dir(path: str) -> bool:
    """Create `path` with its parents; False if it already is a directory."""
    try:
        os.makedirs(path)
    except FileExistsError:
        if os.path.isdir(path):
            return False
        raise
    return True


class _CappedBuffer(io.BytesIO):
    def write(self, data: Any) -> int:
        if self.tell() + len(data) > MAX_PAYLOAD_BYTES:
            raise OSError(errno.EFBIG, "the archive exceeds %d bytes, the most one message carries"
                          % MAX_PAYLOAD_BYTES)
        return super().write(data)


def pack_tar(path: str) -> bytes:
    """An uncompressed tar of the directory `path`'s contents (members relative to it; symlinks
    stored as links). OSError(EFBIG) if it would not fit one protocol message."""
    if not stat.S_ISDIR(os.stat(path).st_mode):  # FileNotFoundError if missing
        raise OSError(errno.ENOTDIR, "not a directory", path)
    buffer = _CappedBuffer()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name)
    return buffer.getvalue()


def _refuse(name: str, why: str) -> OSError:
    return OSError(errno.EINVAL, "refusing archive member %.200r: %s" % (name, why))


def _member_path(name: str) -> str:
    if not name or "\0" in name or name.startswith("/"):
        raise _refuse(name, "absolute or empty path")
    norm = os.path.normpath(name)
    if norm == ".." or norm.startswith("../"):
        raise _refuse(name, "it points outside the directory")
    return norm


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def unpack_tar(data: bytes, dest: str) -> None:
    """Extract a tar made by `pack_tar` into `dest` (created). Only files, directories, symlinks
    and hard links are accepted; a member with an absolute or ``..`` path, a link whose target is
    outside `dest`, or a write through an existing symlink out of `dest` is refused with
    OSError(EINVAL). Symlinks are made last and checked again once all exist, so a chain of
    links cannot lead out either (a refused archive may leave its earlier members behind)."""
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    links: List[Tuple[str, str]] = []
    dir_modes: List[Tuple[str, int]] = []
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except tarfile.TarError as exc:
        raise OSError(errno.EINVAL, "not a tar archive: %s" % exc) from None
    with tar:
        for member in tar:
            name = _member_path(member.name)
            target = os.path.join(root, name)
            if not _inside(root, os.path.dirname(target)):
                raise _refuse(member.name, "its directory leads outside through a symlink")
            if member.isdir():
                if name != ".":
                    os.makedirs(target, exist_ok=True)
                    dir_modes.append((target, member.mode & 0o777))
            elif member.issym():
                if member.linkname.startswith("/") or os.path.normpath(
                        os.path.join(os.path.dirname(name), member.linkname)).split(os.sep)[0] == "..":
                    raise _refuse(member.name, "symlink to %.200r, outside the directory" % member.linkname)
                links.append((target, member.linkname))
            elif member.isfile() or member.islnk():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if member.islnk():
                    source_path = os.path.join(root, _member_path(member.linkname))
                    if (not _inside(root, source_path) or os.path.islink(source_path)
                            or not os.path.isfile(source_path)):
                        raise _refuse(member.name, "hard link to a member that is not a file")
                    with open(source_path, "rb") as source:
                        _write_member(target, source, member)
                else:
                    source_file = tar.extractfile(member)
                    assert source_file is not None  # a regular file member has content
                    _write_member(target, source_file, member)
            else:
                raise _refuse(member.name, "only files, directories and links are accepted")
    for path, link in links:
        os.symlink(link, path)
    for path, link in links:
        if not _inside(root, path):
            for made, _ in links:
                if os.path.islink(made):
                    os.unlink(made)
            raise _refuse(os.path.relpath(path, root), "symlink chain to %.200r leads outside" % link)
    for path, mode in reversed(dir_modes):
        os.chmod(path, mode | stat.S_IRWXU)


def _write_member(target: str, source: Any, member: tarfile.TarInfo) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        shutil.copyfileobj(source, handle)
    os.chmod(target, (member.mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
    os.utime(target, (member.mtime, member.mtime))


# -- op handlers: request fields -> result fields (the ops are documented in _protocol) --

def _path(message: Dict[str, Any], key: str = "path") -> str:
    return files.resolve(proto.field(message, key, str))


def op_write_files(message: Dict[str, Any]) -> Dict[str, Any]:
    items = proto.field(message, "files", list)
    decoded = []
    for item in items:  # all validated before anything is written
        if not isinstance(item, dict):
            raise proto.MessageError("field 'files' must hold objects")
        decoded.append((_path(item), proto.b64decode(proto.field(item, "data_b64", str))))
    return {"sizes": [files.write_file(path, data) for path, data in decoded]}


def op_stat(message: Dict[str, Any]) -> Dict[str, Any]:
    return entry_info(_path(message))


def op_list_dir(message: Dict[str, Any]) -> Dict[str, Any]:
    depth = proto.field(message, "depth", int)
    if depth < 1:
        raise proto.MessageError("field 'depth' must be at least 1")
    return {"entries": list_dir(_path(message), depth)}


def op_remove(message: Dict[str, Any]) -> Dict[str, Any]:
    remove(_path(message))
    return {}


def op_rename(message: Dict[str, Any]) -> Dict[str, Any]:
    new = _path(message, "new_path")
    os.rename(_path(message, "old_path"), new)
    return entry_info(new)


def op_make_dir(message: Dict[str, Any]) -> Dict[str, Any]:
    return {"created": make_dir(_path(message))}


def op_pack_dir(message: Dict[str, Any]) -> Dict[str, Any]:
    return {"tar_b64": proto.b64encode(pack_tar(_path(message)))}


def op_unpack_dir(message: Dict[str, Any]) -> Dict[str, Any]:
    unpack_tar(proto.b64decode(proto.field(message, "tar_b64", str)), _path(message))
    return {}


HANDLERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "write_files": op_write_files, "stat": op_stat, "list_dir": op_list_dir, "remove": op_remove,
    "rename": op_rename, "make_dir": op_make_dir, "pack_dir": op_pack_dir,
    "unpack_dir": op_unpack_dir,
}
