"""`Sandbox`: the E2B-style SDK. Code written for E2B's Python SDKs (``e2b`` and
``e2b_code_interpreter``) runs against vmpool with only the import changed::

    from vmpool import Sandbox

    with Sandbox.create() as sandbox:
        sandbox.run_code("x = 1")
        print(sandbox.run_code("x += 1; x").text)      # 2
        print(sandbox.commands.run("echo hi").stdout)  # hi

Every call goes to a vmpool service (`vmpool._service_client.service`: a ``vmpool serve``
process, else one started inside this process), which owns the sandboxes; a `Sandbox` object is
only its id and the service it lives in, so any process that can reach that service can
`connect` to it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from ._errors import InvalidArgumentException, SandboxException, SandboxNotFoundException
from ._sdk_code import CodeInterpreter
from ._sdk_commands import SandboxCommands
from ._sdk_files import SandboxFiles
from ._service_client import ServiceClient, sandbox_route, service
from ._service_types import SandboxInfo, SandboxQuery, SandboxState

__all__ = ["Sandbox", "SandboxPaginator"]

SandboxT = TypeVar("SandboxT", bound="Sandbox")
ResultT = TypeVar("ResultT")
LIFECYCLE_TIMEOUT_S = None  # creating may build a template first (minutes): no limit

# E2B options that make no sense for a local service; accepted so that E2B code runs unchanged
_IGNORED_OPTIONS = {"api_key", "access_token", "domain", "debug", "request_timeout", "headers", "proxy",
                    "logger", "secure", "api_url", "sandbox_url"}
# E2B options vmpool cannot honour: refused rather than silently dropped
_UNSUPPORTED_OPTIONS = {"mcp", "network", "lifecycle", "volume_mounts", "iam", "auto_pause"}


def _check_options(options: dict[str, Any]) -> None:
    for name, value in options.items():
        if name in _UNSUPPORTED_OPTIONS and value is not None:
            raise InvalidArgumentException("vmpool does not support the E2B option %s=%r" % (name, value))
        if name not in _IGNORED_OPTIONS | _UNSUPPORTED_OPTIONS:
            raise InvalidArgumentException("unknown option %s for a vmpool Sandbox" % name)


class _ClassOrInstance(Generic[ResultT]):
    """A method callable on a sandbox (``sandbox.kill()``) or on the class with a sandbox id
    first (``Sandbox.kill(sandbox_id)``), as E2B's are. The function gets the class, the service
    client, the sandbox id, then the call's arguments."""

    def __init__(self, function: Callable[..., ResultT]) -> None:
        self._function = function
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type[Sandbox]) -> Callable[..., ResultT]: ...

    @overload
    def __get__(self, obj: Sandbox, owner: type[Sandbox] | None = None) -> Callable[..., ResultT]: ...

    def __get__(self, obj: Sandbox | None, owner: type[Sandbox] | None = None) -> Callable[..., ResultT]:
        function = self._function
        if obj is None:
            cls = owner or Sandbox

            @functools.wraps(function)
            def on_class(sandbox_id: str, *args: Any, **kwargs: Any) -> ResultT:
                return function(cls, service(), sandbox_id, *args, **kwargs)
            return on_class

        @functools.wraps(function)
        def on_instance(*args: Any, **kwargs: Any) -> ResultT:
            return function(type(obj), obj._client, obj.sandbox_id, *args, **kwargs)
        return on_instance


class SandboxPaginator:
    """Pages of `Sandbox.list` (E2B's paginator): `has_next`, `next_token`, `next_items()`;
    iterating it yields every remaining sandbox, page by page."""

    def __init__(self, client: ServiceClient, query: SandboxQuery | None, limit: int | None,
                 next_token: str | None) -> None:
        self._client = client
        self.query = query
        self.limit = limit
        self._next_token = next_token
        self._has_next = True

    @property
    def has_next(self) -> bool:
        """Whether `next_items` has more to return."""
        return self._has_next

    @property
    def next_token(self) -> str | None:
        """Where the next page starts (pass it as ``next_token`` to resume a listing)."""
        return self._next_token

    def next_items(self) -> list[SandboxInfo]:
        """The next page of sandboxes (at most `limit`, default 100), oldest first."""
        if not self._has_next:
            raise SandboxException("No more items to fetch")
        query = self.query or SandboxQuery()
        params = {
            "metadata": None if query.metadata is None else json.dumps(query.metadata),
            "state": ",".join(SandboxState(state).value for state in query.state) if query.state else None,
            "started_after": query.started_after.astimezone().isoformat() if query.started_after else None,
            "template": query.template, "limit": self.limit, "next_token": self._next_token,
        }
        answer = self._client.call("GET", "/sandboxes", query=params)
        self._next_token = answer.get("next_token")
        self._has_next = bool(self._next_token)
        return [SandboxInfo.model_validate(info) for info in answer["sandboxes"]]

    def __iter__(self) -> Iterator[SandboxInfo]:
        while self._has_next:
            yield from self.next_items()


class Sandbox(CodeInterpreter):
    """A sandbox in the vmpool service, with the API of E2B's ``Sandbox`` (``e2b`` and
    ``e2b_code_interpreter``). Create with `Sandbox.create` (or ``Sandbox(...)``), reattach with
    `Sandbox.connect`; a context manager kills it on exit. `files` and `commands` are E2B's
    filesystem and command APIs; `run_code` runs code in a stateful Jupyter kernel.
    """

    default_template = "code-interpreter"

    _client: ServiceClient
    _info: SandboxInfo

    def __init__(self, template: str | None = None, timeout: int | None = None,
                 metadata: dict[str, str] | None = None, envs: dict[str, str] | None = None,
                 driver: str | None = None, allow_internet_access: bool = True, **options: Any) -> None:
        """Create a sandbox: the same as `Sandbox.create` (E2B's older constructor form)."""
        _check_options(options)
        client = service()
        body = {"template": template or self.default_template, "timeout": timeout,
                "metadata": dict(metadata or {}), "envs": dict(envs or {}),
                "driver": driver or os.environ.get("VMPOOL_DRIVER") or None,
                "allow_internet_access": allow_internet_access}
        self._attach(client, SandboxInfo.model_validate(
            client.call("POST", "/sandboxes", body, timeout=LIFECYCLE_TIMEOUT_S)))

    @classmethod
    def create(cls: type[SandboxT], template: str | None = None, timeout: int | None = None,
               metadata: dict[str, str] | None = None, envs: dict[str, str] | None = None,
               driver: str | None = None, allow_internet_access: bool = True, **options: Any) -> SandboxT:
        """Start a sandbox and return once it is usable.

        template: "code-interpreter" (default, as E2B's code-interpreter SDK: Python with
        ipykernel, matplotlib, pandas...; network on) or "base" (Python only; no network).
        timeout: seconds the service keeps it alive (default 300; `set_timeout` changes it).
        metadata: strings to find it by (`Sandbox.list`). envs: the environment of every
        command and code run in it. driver: "auto" (default; $VMPOOL_DRIVER overrides),
        "bwrap" or "microvm". allow_internet_access=False refuses a template with a network.
        E2B's connection options (api_key, domain, request_timeout, ...) are accepted and
        ignored; options vmpool cannot honour (mcp, network, lifecycle, ...) raise
        InvalidArgumentException.
        """
        return cls(template, timeout, metadata, envs, driver, allow_internet_access, **options)

    def _attach(self, client: ServiceClient, info: SandboxInfo) -> None:
        self._client = client
        self._info = info
        self._files = SandboxFiles(client, info.sandbox_id)
        self._commands = SandboxCommands(client, info.sandbox_id)

    @classmethod
    def _from_info(cls: type[SandboxT], client: ServiceClient, info: SandboxInfo) -> SandboxT:
        sandbox = cls.__new__(cls)
        sandbox._attach(client, info)
        return sandbox

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id: any process using the same service can `connect` with it."""
        return self._info.sandbox_id

    @property
    def files(self) -> SandboxFiles:
        """The sandbox's filesystem (E2B's API)."""
        return self._files

    @property
    def commands(self) -> SandboxCommands:
        """Shell commands in the sandbox (E2B's API)."""
        return self._commands

    def __enter__(self: SandboxT) -> SandboxT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    def __repr__(self) -> str:
        return "<vmpool.Sandbox %s (%s)>" % (self.sandbox_id, self._info.isolation)

    def is_running(self, request_timeout: float | None = None) -> bool:
        """Whether the sandbox is running (not killed, expired or paused)."""
        try:
            info = self._client.call("GET", sandbox_route(self.sandbox_id))
        except SandboxNotFoundException:
            return False
        return bool(info.get("state") == SandboxState.RUNNING.value)

    @_ClassOrInstance
    def kill(cls: type[Sandbox], client: ServiceClient, sandbox_id: str, **options: Any) -> bool:
        """Kill the sandbox (a paused one is deleted); False if there was none. Also
        ``Sandbox.kill(sandbox_id)``."""
        return bool(client.call("DELETE", sandbox_route(sandbox_id))["killed"])

    @_ClassOrInstance
    def set_timeout(cls: type[Sandbox], client: ServiceClient, sandbox_id: str, timeout: float,
                    **options: Any) -> None:
        """Have the service kill the sandbox `timeout` seconds from now (sooner or later than it
        was due). Also ``Sandbox.set_timeout(sandbox_id, timeout)``."""
        client.call("POST", sandbox_route(sandbox_id, "/timeout"), {"timeout": timeout})

    @_ClassOrInstance
    def get_info(cls: type[Sandbox], client: ServiceClient, sandbox_id: str, **options: Any) -> SandboxInfo:
        """The sandbox's `SandboxInfo` (template, metadata, started_at, end_at, state, driver,
        ...). Also ``Sandbox.get_info(sandbox_id)``."""
        return SandboxInfo.model_validate(client.call("GET", sandbox_route(sandbox_id)))

    @_ClassOrInstance
    def connect(cls: type[SandboxT], client: ServiceClient, sandbox_id: str, timeout: int | None = None,
                **options: Any) -> SandboxT:
        """A `Sandbox` for a running or paused sandbox (a paused one is resumed); its timeout is
        extended to at least `timeout` seconds from now (default 300). Also
        ``Sandbox.connect(sandbox_id)``."""
        _check_options(options)
        info = client.call("POST", sandbox_route(sandbox_id, "/connect"), {"timeout": timeout},
                           timeout=LIFECYCLE_TIMEOUT_S)
        return cls._from_info(client, SandboxInfo.model_validate(info))

    @_ClassOrInstance
    def pause(cls: type[Sandbox], client: ServiceClient, sandbox_id: str, keep_memory: bool = True,
              **options: Any) -> bool:
        """Save the sandbox to disk and stop it; `connect` resumes it (microvm: memory and disk,
        so running processes and kernel state survive; bwrap: files only). Paused sandboxes
        are kept until killed. False if it was paused already. Also ``Sandbox.pause(sandbox_id)``."""
        answer = client.call("POST", sandbox_route(sandbox_id, "/pause"), {}, timeout=LIFECYCLE_TIMEOUT_S)
        return bool(answer["paused"])

    beta_pause = pause

    @staticmethod
    def list(query: SandboxQuery | None = None, limit: int | None = None, next_token: str | None = None,
             **options: Any) -> SandboxPaginator:
        """The sandboxes of the service, running and paused, matching `query` (metadata, state,
        started_after, template), oldest first, as a paginator (`next_items`, `has_next`; or
        iterate over it). Paused sandboxes on disk are listed by every service."""
        _check_options(options)
        return SandboxPaginator(service(), query, limit, next_token)
