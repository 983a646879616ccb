"""`SandboxPool`: a bounded set of warm sandboxes shared by threads.

A sandbox is leased with `acquire` and handed back with `release(sb, healthy)`. Healthy ones
go back to the idle list; an unhealthy, dead or killed one (a microVM whose program timed out
kills itself) is killed and its slot refilled with a brand-new sandbox, started in the
background right away (``refill=True``, the default) or by the next `acquire`, so a sandbox
that misbehaved is never reused and the pool stays warm. Idle sandboxes are pinged before they
are handed out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from ._driver import resolve_driver
from ._errors import SandboxError, VmpoolError
from ._sandbox import LocalSandbox

__all__ = ["SandboxPool"]

_log = logging.getLogger("vmpool.pool")

_MAX_WAIT_S = 3600.0  # longest single Condition.wait: larger timeouts overflow


class SandboxPool:
    """At most `size` sandboxes of one driver; a context manager (entering pre-starts them).

    `create_options` are passed to `LocalSandbox.create` (python=, tmp_size_mb=, ...). The driver is
    resolved once, here, so "auto" cannot change meaning halfway through a run.
    """

    def __init__(self, size: int = 2, driver: str = "auto", refill: bool = True,
                 **create_options: Any) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1, got %d" % size)
        self.size = size
        self.refill = refill
        self.driver = resolve_driver(driver)
        self._options = create_options
        self._cond = threading.Condition()
        self._idle: list[LocalSandbox] = []
        self._leased: set[LocalSandbox] = set()
        self._slots = 0  # sandboxes alive or being created
        self._closed = False

    def start(self) -> SandboxPool:
        """Start sandboxes until the pool is full, so the first leases are fast."""
        started: list[LocalSandbox] = []
        try:
            while True:
                with self._cond:
                    if self._closed or self._slots >= self.size:
                        return self
                    self._slots += 1
                started.append(self._create())
        finally:
            with self._cond:
                closed = self._closed
                if not closed:
                    self._idle.extend(started)
                    self._cond.notify_all()
            for sandbox in started if closed else []:
                sandbox.kill()  # closed meanwhile (another thread)

    def acquire(self, timeout: float | None = None) -> LocalSandbox:
        """Lease a sandbox, starting one if the pool is not full; wait up to `timeout` seconds
        (None: forever) for one to be released. VmpoolError if the pool is closed or times out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sandbox = self._take(deadline)
            if sandbox is None:
                sandbox = self._create()
            elif not self._healthy(sandbox):
                self._discard(sandbox)
                continue
            with self._cond:
                if not self._closed:
                    self._leased.add(sandbox)
                    return sandbox
            sandbox.kill()
            raise VmpoolError("the sandbox pool was closed")

    def release(self, sandbox: LocalSandbox, healthy: bool = True) -> None:
        """Give a leased sandbox back. healthy=False (or a dead sandbox): it is killed, and a
        fresh one is started in its place (in the background with refill=True, else by the next
        `acquire`)."""
        with self._cond:
            if self._closed:
                sandbox.kill()  # close() already killed it; nothing else to do
                return
            if sandbox not in self._leased:
                raise ValueError("%r is not leased from this pool" % (sandbox,))
            self._leased.discard(sandbox)
            if healthy and not self._closed and sandbox.is_running():
                self._idle.append(sandbox)
                self._cond.notify()
                return
        self._discard(sandbox)

    @contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[LocalSandbox]:
        """``with pool.lease() as sb:`` acquire, then release; unhealthy if an exception escaped."""
        sandbox = self.acquire(timeout)
        healthy = False
        try:
            yield sandbox
            healthy = True
        finally:
            self.release(sandbox, healthy=healthy)

    def close(self) -> None:
        """Kill every sandbox, idle or leased. Idempotent."""
        with self._cond:
            self._closed = True
            doomed = self._idle + list(self._leased)
            self._idle.clear()
            self._leased.clear()
            self._slots = 0
            self._cond.notify_all()
        for sandbox in doomed:
            sandbox.kill()

    def __enter__(self) -> SandboxPool:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _take(self, deadline: float | None) -> LocalSandbox | None:
        """An idle sandbox, or None after reserving a slot for a new one."""
        with self._cond:
            while True:
                if self._closed:
                    raise VmpoolError("the sandbox pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._slots < self.size:
                    self._slots += 1
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and not remaining > 0:  # nan too: never a busy loop
                    raise VmpoolError("no sandbox became free in time (pool size %d)" % self.size)
                # in pieces: Condition.wait overflows on enormous timeouts; the loop re-checks
                self._cond.wait(None if remaining is None else min(remaining, _MAX_WAIT_S))

    def _create(self) -> LocalSandbox:
        try:
            return LocalSandbox.create(self.driver, **self._options)
        except BaseException:
            with self._cond:
                self._slots -= 1
                self._cond.notify()
            raise

    def _healthy(self, sandbox: LocalSandbox) -> bool:
        try:
            sandbox.ping(timeout=10.0)
        except SandboxError:
            return False
        return True

    def _discard(self, sandbox: LocalSandbox) -> None:
        sandbox.kill()
        with self._cond:
            if not self._closed:
                self._slots -= 1
            self._cond.notify()
            refill = self.refill and not self._closed
        if refill:
            threading.Thread(target=self._refill_one, name="vmpool-refill", daemon=True).start()

    def _refill_one(self) -> None:
        """Start one sandbox into the idle list if a slot is free (a failure is left to the
        next `acquire`, which will try again and raise)."""
        with self._cond:
            if self._closed or self._slots >= self.size:
                return
            self._slots += 1
        try:
            sandbox = self._create()
        except Exception as exc:  # left to the next acquire, which raises it to its caller
            _log.warning("could not refill the %s sandbox pool: %s: %s", self.driver, type(exc).__name__, exc)
            return
        with self._cond:
            if not self._closed:
                self._idle.append(sandbox)
                self._cond.notify()
                return
        sandbox.kill()
