"""Host-side plumbing for drivers whose sandbox is a local process tree: spawning it safely and
talking to the agent over its stdin/stdout pipes.

Why a spawner thread: sandboxes are started with PR_SET_PDEATHSIG (bubblewrap's
``--die-with-parent``) so that they die with the host. The kernel sends that signal when the
*thread* that forked the sandbox exits, not the process; a sandbox created from a short-lived
worker thread would die with that thread. So every sandbox is forked from one long-lived daemon
thread per host process (re-created after os.fork).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import IO, Any

from ._driver import SandboxProcess

__all__ = ["PopenSandboxProcess", "spawn"]

Popen = subprocess.Popen[bytes]
MAX_WAIT_S = 3600.0  # longest single select()/poll(): larger timeouts overflow time_t or int ms


def _deadline(timeout: float) -> float:
    """monotonic() + timeout; nan or a negative timeout means no wait at all, inf no deadline."""
    return time.monotonic() + (timeout if timeout > 0 else 0.0)


def _wait_s(deadline: float) -> float:
    """Seconds until `deadline` as one wait the kernel accepts: in [0, MAX_WAIT_S]; callers
    loop until the deadline, so an enormous (or infinite) timeout is only waited in pieces."""
    remaining = deadline - time.monotonic()
    return min(remaining, MAX_WAIT_S) if remaining > 0 else 0.0


class _Spawner:
    """Runs Popen calls on one long-lived thread (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None
        self._owner = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # the forked child has no spawner thread (and maybe a held lock)
        self._queue = None

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            if self._queue is None or self._owner != os.getpid():
                self._queue = queue.SimpleQueue()
                self._owner = os.getpid()
                threading.Thread(target=self._serve, args=(self._queue,), name="vmpool-spawner",
                                 daemon=True).start()
            future: Future[Any] = Future()
            self._queue.put((call, future))
            return future

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            call, future = jobs.get()
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(argv: Sequence[str], *, pass_fds: Sequence[int] = (), user: int | None = None,
          groups: Sequence[int] = (), env: dict[str, str] | None = None) -> tuple[Popen, IO[bytes]]:
    """Start `argv` from the spawner thread in a new session (so killpg reaches it), with
    stdin/stdout pipes and stderr into an anonymous file. `user`: run as that uid and gid with
    only `groups` as supplementary groups. Returns the process and its stderr file. If the
    caller is interrupted meanwhile (Ctrl-C), the process is killed instead of leaked."""
    stderr_file = tempfile.TemporaryFile(prefix="vmpool-")
    ids: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": list(groups)}

    def start() -> Popen:
        return subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
            pass_fds=tuple(pass_fds), start_new_session=True, cwd="/", env=env or {}, **ids)

    future = _SPAWNER.submit(start)
    try:
        return future.result(), stderr_file
    except BaseException:
        future.add_done_callback(_kill_late)
        stderr_file.close()
        raise


def _kill_late(future: Future[Any]) -> None:
    if future.exception() is None:
        PopenSandboxProcess(future.result(), None).kill()


class PopenSandboxProcess(SandboxProcess):
    """A sandbox that is a host process tree; its stdin/stdout are the agent's channel."""

    def __init__(self, popen: Popen, stderr_file: IO[bytes] | None) -> None:
        assert popen.stdin is not None and popen.stdout is not None
        self._popen = popen
        self._stderr = stderr_file
        self._wfd = popen.stdin.fileno()
        self._rfd = popen.stdout.fileno()
        os.set_blocking(self._wfd, False)  # so a stuck agent cannot block send() forever
        self._killed = False
        self._kill_lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def send(self, data: bytes, timeout: float) -> None:
        deadline = _deadline(timeout)
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._wfd, select.POLLOUT)
        while view:
            wait = _wait_s(deadline)
            if wait <= 0:
                raise TimeoutError("the agent did not read its input for %.0fs" % timeout)
            if poller.poll(wait * 1000):
                try:
                    view = view[os.write(self._wfd, view):]
                except BlockingIOError:
                    continue

    def receive(self, timeout: float) -> bytes:
        deadline = _deadline(timeout)
        while not select.select([self._rfd], [], [], _wait_s(deadline))[0]:
            if time.monotonic() >= deadline:
                raise TimeoutError("no answer from the agent within %.0fs" % timeout)
        return os.read(self._rfd, 1 << 20)

    def alive(self) -> bool:
        return not self._killed and self._popen.poll() is None

    def kill(self) -> None:
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        try:
            self._teardown()
        finally:
            for stream in (self._popen.stdin, self._popen.stdout, self._stderr):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass

    def _teardown(self) -> None:
        """Kill the process group and reap it. Subclasses kill more first (see bwrap)."""
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self._popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # unkillable (D state): nothing more we can do from here

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` for the sandbox's root process to exit; whether it did."""
        try:
            self._popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def diagnostics(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        try:
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - 4096))
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        exit_status = self._popen.poll()
        if exit_status is not None:
            text = ("exit status %d; " % exit_status) + text
        return text
