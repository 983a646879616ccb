"""The routes of the vmpool service's HTTP API (listed in `vmpool._service_http`): each one
validates its request (pydantic models, unknown fields refused) and calls the `SandboxManager`."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ._errors import InvalidArgumentException
from ._service_files import decode_b64, file_call
from ._service_types import SandboxInfo, SandboxQuery, SandboxState

if TYPE_CHECKING:
    from ._service_http import RequestHandler as Handler

__all__ = ["API_VERSION", "ROUTES"]

API_VERSION = 1
LIST_LIMIT = 100


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateRequest(_Body):
    template: str | None = None
    timeout: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    envs: dict[str, str] = Field(default_factory=dict)
    driver: str | None = None
    allow_internet_access: bool = True


class TimeoutRequest(_Body):
    timeout: float


class ConnectRequest(_Body):
    timeout: float | None = None


class CommandRequest(_Body):
    cmd: str
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float = Field(60, ge=0, description="seconds; 0: no limit")
    stdin: bool = False
    background: bool = False


class StdinRequest(_Body):
    data_b64: str


class CodeRequest(_Body):
    code: str
    language: str | None = None
    context_id: str | None = None
    envs: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, ge=0, description="seconds; None: 300; 0: no limit")


class ContextRequest(_Body):
    language: str | None = None
    cwd: str | None = None


def _pid(text: str) -> int:
    return int(text)


def _query(query: dict[str, str]) -> SandboxQuery:
    try:
        metadata = json.loads(query["metadata"]) if query.get("metadata") else None
        states = [SandboxState(state) for state in query["state"].split(",")] if query.get("state") else None
        after = datetime.fromisoformat(query["started_after"]) if query.get("started_after") else None
    except ValueError as exc:
        raise InvalidArgumentException("bad sandbox query: %s" % exc) from None
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(value, str) for value in metadata.values())):
        raise InvalidArgumentException("the metadata query must be a JSON object of strings")
    return SandboxQuery(metadata=metadata, state=states, started_after=after, template=query.get("template"))


def _page(infos: list[SandboxInfo], query: dict[str, str]) -> dict[str, Any]:
    """One page of a listing: the sandboxes after the cursor `next_token` (the start time and id
    of the last one sent), at most `limit` (default and most: 100)."""
    try:
        limit = min(int(query.get("limit") or LIST_LIMIT), LIST_LIMIT)
        cursor = base64.urlsafe_b64decode(query["next_token"]).decode() if query.get("next_token") else ""
    except (ValueError, binascii.Error) as exc:
        raise InvalidArgumentException("bad limit or next_token: %s" % exc) from None
    if limit < 1:
        raise InvalidArgumentException("limit must be at least 1")
    keys = ["%s|%s" % (info.started_at.isoformat(), info.sandbox_id) for info in infos]
    start = next((i for i, key in enumerate(keys) if key > cursor), len(infos)) if cursor else 0
    page = infos[start:start + limit]
    more = start + limit < len(infos)
    token = base64.urlsafe_b64encode(keys[start + limit - 1].encode()).decode() if more else None
    return {"sandboxes": [info.model_dump(mode="json") for info in page], "next_token": token}


def _health(h: Handler, query: dict[str, str]) -> None:
    h.reply({"service": "vmpool", "api_version": API_VERSION, "pid": os.getpid()})


def _create(h: Handler, query: dict[str, str]) -> None:
    request = h.body(CreateRequest)
    h.reply(h.server.manager.create(request.template, request.timeout, request.metadata, request.envs,
                                    request.driver, request.allow_internet_access), 201)


def _list(h: Handler, query: dict[str, str]) -> None:
    h.reply(_page(h.server.manager.list(_query(query)), query))


def _info(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.reply(h.server.manager.get_info(sandbox_id))


def _kill(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.reply({"killed": h.server.manager.kill(sandbox_id)})


def _set_timeout(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.server.manager.set_timeout(sandbox_id, h.body(TimeoutRequest).timeout)
    h.reply({})


def _connect(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.reply(h.server.manager.connect(sandbox_id, h.body(ConnectRequest).timeout))


def _pause(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.body(_Body)
    h.reply({"paused": h.server.manager.pause(sandbox_id)})


def _files(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    length = int(h.headers.get("Content-Length") or 0)
    try:
        request = json.loads(h.rfile.read(length) or b"{}")
    except ValueError as exc:
        raise InvalidArgumentException("the request body is not JSON: %s" % exc) from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise InvalidArgumentException('a files request is a JSON object with an "op"')
    op = request.pop("op")
    h.reply(file_call(h.server.manager.running(sandbox_id).local.files, op, request))


def _commands_list(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    processes = h.server.manager.running(sandbox_id).commands.list()
    h.reply({"processes": [info.model_dump(mode="json") for info in processes]})


def _command_start(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    request = h.body(CommandRequest)
    commands = h.server.manager.running(sandbox_id).commands
    h.stream(commands.start(request.cmd, request.envs, request.cwd, request.timeout, request.stdin,
                            request.background))


def _command_connect(h: Handler, sandbox_id: str, pid: str, query: dict[str, str]) -> None:
    h.body(_Body)
    h.stream(h.server.manager.running(sandbox_id).commands.connect(_pid(pid)))


def _command_kill(h: Handler, sandbox_id: str, pid: str, query: dict[str, str]) -> None:
    h.body(_Body)
    h.reply({"killed": h.server.manager.running(sandbox_id).commands.kill(_pid(pid))})


def _command_stdin(h: Handler, sandbox_id: str, pid: str, query: dict[str, str]) -> None:
    data = decode_b64(h.body(StdinRequest).data_b64)
    h.server.manager.running(sandbox_id).commands.send_stdin(_pid(pid), data)
    h.reply({})


def _command_close_stdin(h: Handler, sandbox_id: str, pid: str, query: dict[str, str]) -> None:
    h.body(_Body)
    h.server.manager.running(sandbox_id).commands.close_stdin(_pid(pid))
    h.reply({})


def _code(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    request = h.body(CodeRequest)
    code = h.server.manager.running(sandbox_id).code
    h.stream(code.run(request.code, request.language, request.context_id, request.envs, request.timeout))


def _contexts_list(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    h.reply({"contexts": h.server.manager.running(sandbox_id).code.list_contexts()})


def _context_create(h: Handler, sandbox_id: str, query: dict[str, str]) -> None:
    request = h.body(ContextRequest)
    h.reply(h.server.manager.running(sandbox_id).code.create_context(request.language, request.cwd))


def _context_remove(h: Handler, sandbox_id: str, context_id: str, query: dict[str, str]) -> None:
    h.server.manager.running(sandbox_id).code.remove_context(context_id)
    h.reply({})


def _context_restart(h: Handler, sandbox_id: str, context_id: str, query: dict[str, str]) -> None:
    h.body(_Body)
    h.server.manager.running(sandbox_id).code.restart_context(context_id)
    h.reply({})


_ID = r"/v1/sandboxes/([A-Za-z0-9_-]+)"
_TABLE: list[tuple[str, str, Callable[..., None]]] = [
    ("GET", r"/v1/health", _health),
    ("POST", r"/v1/sandboxes", _create),
    ("GET", r"/v1/sandboxes", _list),
    ("GET", _ID, _info),
    ("DELETE", _ID, _kill),
    ("POST", _ID + r"/timeout", _set_timeout),
    ("POST", _ID + r"/connect", _connect),
    ("POST", _ID + r"/pause", _pause),
    ("POST", _ID + r"/files", _files),
    ("GET", _ID + r"/commands", _commands_list),
    ("POST", _ID + r"/commands", _command_start),
    ("POST", _ID + r"/commands/(\d+)/connect", _command_connect),
    ("POST", _ID + r"/commands/(\d+)/kill", _command_kill),
    ("POST", _ID + r"/commands/(\d+)/stdin", _command_stdin),
    ("POST", _ID + r"/commands/(\d+)/close_stdin", _command_close_stdin),
    ("POST", _ID + r"/code", _code),
    ("GET", _ID + r"/contexts", _contexts_list),
    ("POST", _ID + r"/contexts", _context_create),
    ("DELETE", _ID + r"/contexts/([A-Za-z0-9_.-]+)", _context_remove),
    ("POST", _ID + r"/contexts/([A-Za-z0-9_.-]+)/restart", _context_restart),
]
ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in _TABLE]
