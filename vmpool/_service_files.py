"""The service's file calls: one request names an E2B filesystem method of `LocalSandbox.files`
and its arguments (bytes as base64), the answer is its result as JSON.

Ops (arguments -> answer):

- ``read``: {path} -> {data_b64}
- ``write``: {path, data_b64} -> EntryInfo of the file written
- ``write_files``: {files: [{path, data_b64}]} -> {entries: [EntryInfo]}
- ``list``: {path, depth=1} -> {entries: [EntryInfo]}
- ``exists``: {path} -> {exists}
- ``get_info``: {path} -> EntryInfo
- ``remove``: {path} -> {}
- ``rename``: {old_path, new_path} -> EntryInfo
- ``make_dir``: {path} -> {created}
- ``upload_dir``: {local_dir, remote_dir} -> {}; ``download_dir``: {remote_dir, local_dir} -> {}.
  The local folder is read or written by the service, which runs as the same user on the same
  host as its clients (its socket is private to that user), so paths must be absolute.

Relative paths in the sandbox are relative to the sandbox user's home, `HOME` (/home/user), as
in E2B.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._errors import InvalidArgumentException
from ._files import Files

__all__ = ["FILE_OPS", "HOME", "decode_b64", "file_call"]

HOME = "/home/user"  # the sandbox user's home in every template, as E2B's
_PATH_FIELDS = ("path", "old_path", "new_path", "remote_dir")


def _in_home(arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with their sandbox paths made absolute (relative to HOME)."""
    fixed = dict(arguments)
    for name in _PATH_FIELDS:
        if isinstance(fixed.get(name), str):
            fixed[name] = posixpath.join(HOME, fixed[name])
    if isinstance(fixed.get("files"), list):
        fixed["files"] = [_in_home(entry) if isinstance(entry, dict) else entry for entry in fixed["files"]]
    return fixed


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Path(_Args):
    path: str


class _Write(_Args):
    path: str
    data_b64: str


class _WriteFiles(_Args):
    files: list[_Write]


class _List(_Args):
    path: str
    depth: int = Field(1, ge=1)


class _Rename(_Args):
    old_path: str
    new_path: str


class _Dirs(_Args):
    local_dir: str
    remote_dir: str


def decode_b64(text: str) -> bytes:
    """A request's base64 payload; InvalidArgumentException (400) if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentException("data_b64 is not base64: %s" % exc) from None


def _local(path: str) -> str:
    if not os.path.isabs(path):
        raise InvalidArgumentException("the local folder %r must be an absolute path: the service "
                                       "does not share the client's working directory" % path)
    return path


def _read(files: Files, a: _Path) -> dict[str, Any]:
    return {"data_b64": base64.b64encode(files.read(a.path, format="bytes")).decode()}


def _write(files: Files, a: _Write) -> dict[str, Any]:
    files.write(a.path, decode_b64(a.data_b64))
    return files.get_info(a.path).model_dump(mode="json")


def _write_files(files: Files, a: _WriteFiles) -> dict[str, Any]:
    files.write_files([{"path": entry.path, "data": decode_b64(entry.data_b64)} for entry in a.files])
    return {"entries": [files.get_info(entry.path).model_dump(mode="json") for entry in a.files]}


def _list(files: Files, a: _List) -> dict[str, Any]:
    return {"entries": [entry.model_dump(mode="json") for entry in files.list(a.path, a.depth)]}


def _exists(files: Files, a: _Path) -> dict[str, Any]:
    return {"exists": files.exists(a.path)}


def _get_info(files: Files, a: _Path) -> dict[str, Any]:
    return files.get_info(a.path).model_dump(mode="json")


def _remove(files: Files, a: _Path) -> dict[str, Any]:
    files.remove(a.path)
    return {}


def _rename(files: Files, a: _Rename) -> dict[str, Any]:
    return files.rename(a.old_path, a.new_path).model_dump(mode="json")


def _make_dir(files: Files, a: _Path) -> dict[str, Any]:
    return {"created": files.make_dir(a.path)}


def _upload_dir(files: Files, a: _Dirs) -> dict[str, Any]:
    files.upload_dir(_local(a.local_dir), a.remote_dir)
    return {}


def _download_dir(files: Files, a: _Dirs) -> dict[str, Any]:
    files.download_dir(a.remote_dir, _local(a.local_dir))
    return {}


FILE_OPS: dict[str, tuple[type[_Args], Callable[[Files, Any], dict[str, Any]]]] = {
    "read": (_Path, _read), "write": (_Write, _write), "write_files": (_WriteFiles, _write_files),
    "list": (_List, _list), "exists": (_Path, _exists), "get_info": (_Path, _get_info),
    "remove": (_Path, _remove), "rename": (_Rename, _rename), "make_dir": (_Path, _make_dir),
    "upload_dir": (_Dirs, _upload_dir), "download_dir": (_Dirs, _download_dir),
}


def file_call(files: Files, op: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run file op `op` with `arguments` (see module docstring) on `files`. Errors are the
    built-in OSError subclasses `Files` raises, or InvalidArgumentException for a bad request."""
    if op not in FILE_OPS:
        raise InvalidArgumentException("unknown file op %r (known: %s)" % (op, ", ".join(FILE_OPS)))
    model, function = FILE_OPS[op]
    return function(files, model.model_validate(_in_home(arguments)))
