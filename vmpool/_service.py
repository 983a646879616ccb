"""The vmpool service core: `SandboxManager` owns `LocalSandbox`es by id, with E2B's lifecycle.

It knows nothing of HTTP (`vmpool._service_http` serves it over a unix socket) so that another
front end, such as one speaking E2B's own wire protocol, can sit on the same manager.

Lifecycle, as E2B's:

- `create` starts a sandbox and returns once it is usable. Its timeout is a lease: the service
  kills it ``timeout`` seconds from now (a reaper thread checks twice a second); `set_timeout`
  resets the lease to now + timeout (shorter or longer); `connect` extends it to at least now +
  timeout (default 300 s) and resumes a paused sandbox.
- `pause` saves a sandbox to disk (`vmpool._service_paused`) and ends it; paused sandboxes never
  expire and any later service process can list, resume or kill them.
- `kill` ends a running sandbox, or deletes a paused one. A sandbox that dies on its own
  (its agent crashed) is forgotten by the reaper.
- `close` kills every running sandbox of this manager; paused ones stay on disk.

Unknown ids raise `SandboxNotFoundException` naming the id.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from ._driver import resolve_driver
from ._errors import (
    InvalidArgumentException, SandboxException, SandboxNotFoundException, TemplateSpecError,
)
from ._sandbox import LocalSandbox
from ._service_code import CodeRunner
from ._service_commands import CommandTable
from ._service_paused import PausedSandbox, PausedStore
from ._service_types import SandboxInfo, SandboxQuery, SandboxState
from ._templates import load_spec
from ._types import MAX_TIME_S

__all__ = ["DEFAULT_TEMPLATE", "DEFAULT_TIMEOUT_S", "ManagedSandbox", "SandboxManager"]

log = logging.getLogger("vmpool.service")

DEFAULT_TEMPLATE = "code-interpreter"  # as E2B's code-interpreter SDK
DEFAULT_TIMEOUT_S = 300
REAP_INTERVAL_S = 0.5
DRIVER_ENV = "VMPOOL_DRIVER"
CODE_TEMPLATES = ("code-interpreter",)  # their kernel starts with the sandbox, so run_code is warm


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _lease(timeout: float | None, default: float = DEFAULT_TIMEOUT_S) -> timedelta:
    seconds = default if timeout is None else timeout
    if not 0 < seconds <= MAX_TIME_S:
        raise InvalidArgumentException("a sandbox timeout must be more than 0 and at most %d seconds "
                                       "(a day), got %r" % (MAX_TIME_S, timeout))
    return timedelta(seconds=seconds)


def _resources(driver: str, template: str) -> tuple[int, int]:
    """(cpu_count, memory_mb) of a sandbox: a VM's from its template; otherwise the host's,
    which a namespace sandbox shares."""
    if driver == "microvm":
        vm = load_spec(template).vm
        return vm.vcpus, vm.memory_mib
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return os.cpu_count() or 1, pages // 2**20


class ManagedSandbox:
    """A running sandbox of the service: its `LocalSandbox`, its lease and what E2B's API keeps
    about it (metadata, environment), plus the commands and the code kernel running in it."""

    def __init__(self, sandbox_id: str, local: LocalSandbox, template: str, metadata: dict[str, str],
                 envs: dict[str, str], started_at: datetime, lease: timedelta, network: bool,
                 kernel: dict[str, Any] | None = None) -> None:
        self.sandbox_id = sandbox_id
        self.network = network
        self.local = local
        self.template = template
        self.metadata = metadata
        self.started_at = started_at
        self.end_at = _now() + lease
        self.lock = threading.RLock()
        self.envs = {"E2B_SANDBOX": "true", "E2B_SANDBOX_ID": sandbox_id, "E2B_TEMPLATE_ID": template,
                     "VMPOOL_SANDBOX_ID": sandbox_id, **envs}
        self.user_envs = dict(envs)
        self.cpu_count, self.memory_mb = _resources(local.driver, template)
        self.commands = CommandTable(local, self.envs)
        self.code = CodeRunner(local, self.envs, kernel)

    def info(self, state: SandboxState = SandboxState.RUNNING) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=self.sandbox_id, template_id=self.template, name=self.template,
            metadata=self.metadata, started_at=self.started_at, end_at=self.end_at, state=state,
            cpu_count=self.cpu_count, memory_mb=self.memory_mb, envd_version=self.local.agent_version,
            allow_internet_access=self.network, driver=self.local.driver, isolation=self.local.isolation)

    def follow_again(self, kernel: dict[str, Any] | None) -> None:
        """After a pause that failed (and left the sandbox running): new followers for its
        commands and its code kernel, whose old ones the pause ended."""
        self.commands = CommandTable(self.local, self.envs)
        self.code = CodeRunner(self.local, self.envs, kernel)

    def kill(self) -> None:
        """End the sandbox with everything in it. Idempotent."""
        self.code.close()
        self.commands.close("the sandbox was killed")
        self.local.kill()


def _matches(info: SandboxInfo, query: SandboxQuery) -> bool:
    if query.state and info.state not in [SandboxState(state) for state in query.state]:
        return False
    if query.metadata and any(info.metadata.get(key) != value for key, value in query.metadata.items()):
        return False
    if query.started_after is not None:
        after = query.started_after if query.started_after.tzinfo else query.started_after.astimezone()
        if info.started_at < after:
            return False
    return not query.template or query.template in (info.template_id, info.name)


class SandboxManager:
    """The sandboxes of one service, by id (see module docstring). Thread-safe.

    `start_sandbox` is how a sandbox is started (default `LocalSandbox.create`), so that tests
    and other front ends can pass driver options.
    """

    def __init__(self, paused: PausedStore | None = None,
                 start_sandbox: Callable[..., LocalSandbox] = LocalSandbox.create) -> None:
        self._paused = paused or PausedStore()
        self._start_sandbox = start_sandbox
        self._sandboxes: dict[str, ManagedSandbox] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="vmpool-service-reaper", daemon=True)
        self._reaper.start()

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, template: str | None = None, timeout: float | None = None,
               metadata: dict[str, str] | None = None, envs: dict[str, str] | None = None,
               driver: str | None = None, allow_internet_access: bool = True) -> SandboxInfo:
        """Start a sandbox from `template` (default "code-interpreter") on `driver` (default:
        $VMPOOL_DRIVER, else "auto") that the service kills `timeout` seconds from now (default
        300). Returns once it is usable. It has a network if its template has one, unless
        `allow_internet_access` is False."""
        template = template or DEFAULT_TEMPLATE
        lease = _lease(timeout)
        try:
            spec = load_spec(template)
        except TemplateSpecError as exc:
            raise InvalidArgumentException("cannot create a sandbox from template %r: %s" % (template, exc)) from None
        driver_name = resolve_driver(driver or os.environ.get(DRIVER_ENV) or "auto")
        network = spec.vm.network and allow_internet_access
        local = self._start_sandbox(driver_name, template=template, network=None if network else False)
        sandbox_id = secrets.token_hex(10)
        try:
            managed = ManagedSandbox(sandbox_id, local, template, dict(metadata or {}), dict(envs or {}),
                                     _now(), lease, network)
        except BaseException:
            local.kill()
            raise
        if template in CODE_TEMPLATES:
            self._warm(managed)
        self._adopt(managed)
        log.info("sandbox %s created from template %s on %s, expires at %s", sandbox_id, template,
                 local.isolation, managed.end_at.isoformat(timespec="seconds"))
        return managed.info()

    @staticmethod
    def _warm(managed: ManagedSandbox) -> None:
        """Start the code kernel of a code template now, so that the first run_code is warm."""
        try:
            managed.code.start()
        except Exception as exc:  # run_code retries, and says why if it fails again
            log.warning("sandbox %s: the code kernel did not start: %s", managed.sandbox_id, exc)

    def _adopt(self, managed: ManagedSandbox) -> None:
        with self._lock:
            if not self._closed.is_set():
                self._sandboxes[managed.sandbox_id] = managed
                return
        managed.kill()
        raise SandboxException("the vmpool service is shutting down")

    def running(self, sandbox_id: str) -> ManagedSandbox:
        """The running sandbox `sandbox_id`; SandboxNotFoundException naming the id otherwise
        (saying so if it is paused)."""
        with self._lock:
            managed = self._sandboxes.get(sandbox_id)
        if managed is not None and managed.local.is_running():
            return managed
        if managed is not None:
            self._forget(managed, "died")
        if self._paused_or_none(sandbox_id) is not None:
            raise SandboxNotFoundException("sandbox %s is paused; connect to it to resume it" % sandbox_id)
        raise SandboxNotFoundException("sandbox %s not found (killed, expired, or never created)" % sandbox_id)

    def _paused_or_none(self, sandbox_id: str) -> PausedSandbox | None:
        try:
            return self._paused.get(sandbox_id)
        except SandboxException as exc:
            log.warning("%s", exc)
            return None

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        """The info of a running or paused sandbox."""
        try:
            return self.running(sandbox_id).info()
        except SandboxNotFoundException:
            paused = self._paused_or_none(sandbox_id)
            if paused is None:
                raise
            return paused.info

    def list(self, query: SandboxQuery | None = None) -> list[SandboxInfo]:
        """Running and paused sandboxes matching `query`, oldest first."""
        query = query or SandboxQuery()
        with self._lock:
            running = [managed for managed in self._sandboxes.values() if managed.local.is_running()]
        infos = [managed.info() for managed in running]
        seen = {info.sandbox_id for info in infos}
        infos += [paused.info for paused in self._paused.all() if paused.info.sandbox_id not in seen]
        return sorted((info for info in infos if _matches(info, query)),
                      key=lambda info: (info.started_at, info.sandbox_id))

    def set_timeout(self, sandbox_id: str, timeout: float) -> None:
        """Kill the running sandbox `timeout` seconds from now instead of when it was due."""
        lease = _lease(timeout, default=0)
        managed = self.running(sandbox_id)
        with managed.lock:
            managed.end_at = _now() + lease

    def kill(self, sandbox_id: str) -> bool:
        """Kill a running sandbox or delete a paused one; False if there was none."""
        with self._lock:
            managed = self._sandboxes.pop(sandbox_id, None)
        if managed is not None:
            managed.kill()
            log.info("sandbox %s killed", sandbox_id)
            return True
        if self._paused_or_none(sandbox_id) is None:
            return False
        with self._paused.locked(sandbox_id) as folder:
            if folder is None:
                return False
            self._paused.delete(folder)
        log.info("paused sandbox %s deleted", sandbox_id)
        return True

    def connect(self, sandbox_id: str, timeout: float | None = None) -> SandboxInfo:
        """A running sandbox's info, its lease extended to at least now + `timeout` (default
        300 s); a paused one is resumed first (its lease then starts anew)."""
        lease = _lease(timeout)
        try:
            managed = self.running(sandbox_id)
        except SandboxNotFoundException:
            managed = self._resume(sandbox_id, lease)
        with managed.lock:
            managed.end_at = max(managed.end_at, _now() + lease)
            return managed.info()

    def pause(self, sandbox_id: str) -> bool:
        """Save the running sandbox to disk and end it; False if it is paused already. If its
        state cannot be saved (OSError: a full disk, a file too large), it keeps running."""
        try:
            managed = self.running(sandbox_id)
        except SandboxNotFoundException:
            if self._paused_or_none(sandbox_id) is not None:
                return False
            raise
        with managed.lock, self._paused.locked(sandbox_id, create=True) as folder:
            assert folder is not None
            with self._lock:
                self._sandboxes.pop(sandbox_id, None)
            kernel = managed.code.suspend()
            managed.commands.suspend("the sandbox was paused")
            try:
                managed.local.pause(self._paused.state_dir(folder))
            except OSError:
                self._paused.delete(folder)
                managed.follow_again(kernel)  # nothing was saved and it runs on (LocalSandbox.pause)
                self._adopt(managed)
                raise
            except BaseException:
                managed.kill()
                self._paused.delete(folder)
                raise
            info = managed.info(SandboxState.PAUSED).model_copy(update={"end_at": _now()})
            self._paused.commit(folder, info, managed.user_envs, kernel)
        log.info("sandbox %s paused", sandbox_id)
        return True

    def _resume(self, sandbox_id: str, lease: timedelta) -> ManagedSandbox:
        with self._paused.locked(sandbox_id) as folder:
            paused = self._paused.read(folder) if folder is not None else None
            if folder is None or paused is None:
                raise SandboxNotFoundException("sandbox %s not found (killed, expired, or never created)"
                                               % sandbox_id)
            local = LocalSandbox.resume(paused.state_dir)  # deletes the state once it runs
            try:
                info = paused.info
                managed = ManagedSandbox(sandbox_id, local, info.template_id, dict(info.metadata),
                                         paused.envs, info.started_at, lease, bool(info.allow_internet_access),
                                         paused.kernel)
                self._adopt(managed)
            except BaseException:
                local.kill()
                raise
            self._paused.delete(folder)
        if managed.template in CODE_TEMPLATES:
            self._warm(managed)
        log.info("sandbox %s resumed", sandbox_id)
        return managed

    # -- housekeeping -----------------------------------------------------------------------

    def _forget(self, managed: ManagedSandbox, why: str) -> None:
        with self._lock:
            if self._sandboxes.get(managed.sandbox_id) is not managed:
                return
            del self._sandboxes[managed.sandbox_id]
        managed.kill()
        log.info("sandbox %s %s", managed.sandbox_id, why)

    def reap(self) -> None:
        """Kill the sandboxes whose lease ran out and forget those that died."""
        now = _now()
        with self._lock:
            candidates = list(self._sandboxes.values())
        for managed in candidates:
            if managed.end_at <= now:
                self._forget(managed, "expired (its timeout ran out) and was killed")
            elif not managed.local.is_running():
                self._forget(managed, "died")

    def _reap_loop(self) -> None:
        while not self._closed.wait(REAP_INTERVAL_S):
            try:
                self.reap()
            except Exception:  # never let the reaper die: leases would stop being enforced
                log.exception("reaping sandboxes failed")

    def close(self) -> None:
        """Kill every running sandbox (paused ones stay on disk) and stop the reaper. Idempotent."""
        self._closed.set()
        with self._lock:
            doomed = list(self._sandboxes.values())
            self._sandboxes.clear()
        for managed in doomed:
            managed.kill()
        if doomed:
            log.info("killed %d running sandbox(es)", len(doomed))

    def __enter__(self) -> SandboxManager:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
