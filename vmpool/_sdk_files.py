"""`SandboxFiles`: `Sandbox.files`, E2B's filesystem methods, each one call to the service
(which runs it with `LocalSandbox.files`; see `vmpool._service_files`)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Literal, overload

from ._errors import InvalidArgumentException
from ._service_client import ServiceClient, sandbox_route
from ._types import EntryInfo

__all__ = ["SandboxFiles"]

Data = str | bytes | IO[bytes] | IO[str]


def _encode(data: Data) -> str:
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        data = data.read()  # a file-like object, as E2B accepts
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return base64.b64encode(raw).decode()


def _user(user: str | None) -> None:
    if user not in (None, "user"):
        raise InvalidArgumentException("vmpool sandboxes have one user; user=%r is not supported" % user)


class SandboxFiles:
    """Files inside the sandbox, with E2B's method names (and vmpool's `upload_dir` and
    `download_dir`). Relative paths are resolved by the sandbox like `LocalSandbox.files` does.
    A missing path raises `FileNotFoundException` (also a FileNotFoundError); other failures
    the built-in OSError subclass of their errno. `user` and `request_timeout` are accepted
    for E2B compatibility (vmpool sandboxes have one user)."""

    def __init__(self, client: ServiceClient, sandbox_id: str) -> None:
        self._client = client
        self._route = sandbox_route(sandbox_id, "/files")

    def _call(self, op: str, **arguments: Any) -> Any:
        return self._client.call("POST", self._route, {"op": op, **arguments})

    @overload
    def read(self, path: str, format: Literal["text"] = "text", user: str | None = None,
             request_timeout: float | None = None) -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"], user: str | None = None,
             request_timeout: float | None = None) -> bytearray: ...

    @overload
    def read(self, path: str, format: Literal["stream"], user: str | None = None,
             request_timeout: float | None = None) -> Iterator[bytes]: ...

    def read(self, path: str, format: Literal["text", "bytes", "stream"] = "text", user: str | None = None,
             request_timeout: float | None = None) -> str | bytearray | Iterator[bytes]:
        """The content of `path`: str (UTF-8), a bytearray (format="bytes", as E2B) or an
        iterator of bytes chunks (format="stream")."""
        _user(user)
        data = base64.b64decode(self._call("read", path=path)["data_b64"])
        if format == "bytes":
            return bytearray(data)
        if format == "stream":
            return iter([data])
        return data.decode("utf-8")

    def write(self, path: str, data: Data, user: str | None = None,
              request_timeout: float | None = None) -> EntryInfo:
        """Create or replace the file `path` (parents are created) with `data` (str as UTF-8,
        bytes, or a file-like object); the info of the file written."""
        _user(user)
        return EntryInfo.model_validate(self._call("write", path=path, data_b64=_encode(data)))

    def write_files(self, files: Iterable[Mapping[str, Any] | Any], user: str | None = None,
                    request_timeout: float | None = None) -> list[EntryInfo]:
        """Write several files in one call: dicts with "path" and "data", or objects with
        `.path` and `.data` (E2B's WriteEntry); nothing is written if one path is invalid."""
        _user(user)
        wire = []
        for item in files:
            path, data = (item["path"], item["data"]) if isinstance(item, Mapping) else (item.path, item.data)
            wire.append({"path": path, "data_b64": _encode(data)})
        return [EntryInfo.model_validate(entry) for entry in self._call("write_files", files=wire)["entries"]]

    def list(self, path: str, depth: int | None = 1, user: str | None = None,
             request_timeout: float | None = None) -> list[EntryInfo]:
        """The entries below the directory `path`, `depth` levels deep (1: its children)."""
        _user(user)
        entries = self._call("list", path=path, depth=1 if depth is None else depth)["entries"]
        return [EntryInfo.model_validate(entry) for entry in entries]

    def exists(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        _user(user)
        return bool(self._call("exists", path=path)["exists"])

    def get_info(self, path: str, user: str | None = None, request_timeout: float | None = None) -> EntryInfo:
        """What `path` is (a final symlink is not followed)."""
        _user(user)
        return EntryInfo.model_validate(self._call("get_info", path=path))

    def remove(self, path: str, user: str | None = None, request_timeout: float | None = None) -> None:
        """Delete a file, a symlink or a whole directory tree."""
        _user(user)
        self._call("remove", path=path)

    def rename(self, old_path: str, new_path: str, user: str | None = None,
               request_timeout: float | None = None) -> EntryInfo:
        """Move `old_path` to `new_path`; the info of the new path."""
        _user(user)
        return EntryInfo.model_validate(self._call("rename", old_path=old_path, new_path=new_path))

    def make_dir(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        """Create the directory `path` with its parents; False if it existed."""
        _user(user)
        return bool(self._call("make_dir", path=path)["created"])

    def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        """Copy the tree under `local_dir` into `remote_dir` (see `LocalSandbox.files.upload_dir`)."""
        self._call("upload_dir", local_dir=os.path.abspath(local_dir), remote_dir=remote_dir)

    def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str]) -> None:
        """Copy the tree under `remote_dir` into `local_dir` (see `LocalSandbox.files.download_dir`)."""
        self._call("download_dir", remote_dir=remote_dir, local_dir=os.path.abspath(local_dir))
