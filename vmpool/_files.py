"""`Files`: the E2B-style filesystem API of a sandbox (`LocalSandbox.files`), plus whole directory
trees moved in one call (`upload_dir`, `download_dir`).

Relative paths are relative to /tmp, the only writable place of a sandbox. Failures raise the
built-in OSError subclass, like open() (FileNotFoundError for a missing path); an archive
member refused on either side is an OSError(EINVAL).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from ._agent_fs import MAX_PAYLOAD_BYTES, pack_tar, unpack_tar
from ._errors import SandboxError
from ._protocol import MessageError, b64decode, b64encode
from ._types import EntryInfo

if TYPE_CHECKING:
    from ._sandbox import LocalSandbox

__all__ = ["Files"]

OP_TIMEOUT_S = 60.0


class WriteEntry(Protocol):
    """Anything with `path` and `data`, like E2B's WriteEntry."""

    @property
    def path(self) -> str: ...

    @property
    def data(self) -> str | bytes: ...


def _payload(data: str | bytes) -> str:
    return b64encode(data.encode("utf-8") if isinstance(data, str) else bytes(data))


class Files:
    """File access inside the sandbox, with the method names of E2B's Python SDK."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self._sandbox = sandbox

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self._sandbox._call(op, OP_TIMEOUT_S, **fields)

    def _bytes(self, reply: dict[str, Any], key: str) -> bytes:
        try:
            return b64decode(str(reply.get(key, "")))
        except MessageError as exc:
            raise SandboxError("malformed file data from the agent: %s" % exc) from None

    def write(self, path: str, data: str | bytes) -> None:
        """Create or replace the file at `path` (parents are created); str is written as UTF-8."""
        self._call("write_file", path=path, data_b64=_payload(data))

    def write_files(self, files: Iterable[Mapping[str, Any] | WriteEntry]) -> None:
        """Write several files in one round trip: dicts with "path" and "data", or objects with
        `.path` and `.data` (str as UTF-8, or bytes). Nothing is written if one path is invalid."""
        wire = []
        for item in files:
            if isinstance(item, Mapping):
                path, data = item["path"], item["data"]
            else:
                path, data = item.path, item.data
            wire.append({"path": path, "data_b64": _payload(data)})
        self._call("write_files", files=wire)

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        """The content of `path`: str decoded as UTF-8 (format="text") or bytes."""
        data = self._bytes(self._call("read_file", path=path), "data_b64")
        return data if format == "bytes" else data.decode("utf-8")

    def list(self, path: str, depth: int = 1) -> list[EntryInfo]:
        """The entries below the directory `path`, `depth` levels deep (1: its children), sorted
        by path; symlinked directories are listed, not entered."""
        if depth < 1:
            raise ValueError("depth must be at least 1, got %r" % depth)
        entries = self._call("list_dir", path=path, depth=depth).get("entries")
        if not isinstance(entries, list):
            raise SandboxError("malformed listing from the agent")
        return [self._sandbox._parse(EntryInfo, entry) for entry in entries]

    def exists(self, path: str) -> bool:
        """Whether `path` exists (a dangling symlink does)."""
        try:
            self._call("stat", path=path)
        except FileNotFoundError:
            return False
        return True

    def get_info(self, path: str) -> EntryInfo:
        """What `path` is (a final symlink is not followed); FileNotFoundError if it is missing."""
        return self._sandbox._parse(EntryInfo, self._call("stat", path=path))

    def remove(self, path: str) -> None:
        """Delete a file, a symlink or a whole directory tree."""
        self._call("remove", path=path)

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        """Move `old_path` to `new_path` (os.rename's rules); the info of the new path."""
        return self._sandbox._parse(EntryInfo, self._call("rename", old_path=old_path, new_path=new_path))

    def make_dir(self, path: str) -> bool:
        """Create the directory `path` with its parents; False if it already existed."""
        return self._call("make_dir", path=path).get("created") is True

    def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        """Copy the tree under `local_dir` into `remote_dir` (created) in one round trip, as one
        tar archive of at most ~48 MiB (OSError(EFBIG) above). Symlinks are copied as links;
        the sandbox refuses links leading outside `remote_dir`."""
        try:
            archive = pack_tar(os.fspath(local_dir))
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                raise OSError(errno.EFBIG, "%s packs to more than %d bytes, the most upload_dir moves "
                              "in one call" % (local_dir, MAX_PAYLOAD_BYTES)) from None
            raise
        self._call("unpack_dir", path=remote_dir, tar_b64=b64encode(archive))

    def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str]) -> None:
        """Copy the tree under `remote_dir` into `local_dir` (created) in one round trip (at most
        ~48 MiB as a tar archive: OSError(EFBIG) above). The archive comes from the sandbox, so
        it is untrusted: absolute or ``..`` members, links leading outside `local_dir` and
        anything but files, directories and links are refused with OSError(EINVAL)."""
        archive = self._bytes(self._call("pack_dir", path=remote_dir), "tar_b64")
        unpack_tar(archive, os.fspath(local_dir))
