"""Helpers for the service and SDK tests: a real `vmpool serve` subprocess, client processes,
and a private short folder for sockets (unix socket paths are limited to 107 bytes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vmpool._service_client import ServiceClient

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def private_folder() -> Iterator[Path]:
    """A fresh 0700 folder with a short path."""
    folder = Path(tempfile.mkdtemp(prefix="vmp-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def client_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a client process: this one's, with `overrides` (None: unset)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_client(code: str, timeout: float = 120, **env: str | None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python process; fails the test if it fails."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=client_env(**env), cwd=REPO)
    assert done.returncode == 0, "client failed (%d):\n%s\n%s" % (done.returncode, done.stdout, done.stderr)
    return done


def start_client(code: str, **env: str | None) -> subprocess.Popen[str]:
    """Start `code` in a fresh Python process whose stdout is a pipe."""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=client_env(**env), cwd=REPO)


class Serve:
    """A ``vmpool serve --socket PATH`` subprocess, ready once constructed."""

    def __init__(self, socket: Path, **env: str | None) -> None:
        self.socket = socket
        self.log = socket.parent / "serve.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from vmpool._cli import main; main()", "serve", "--socket", str(socket)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=client_env(**env), cwd=REPO)
        deadline = time.monotonic() + 30
        while not ServiceClient(socket).answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("vmpool serve did not come up:\n" + self.log.read_text())
            time.sleep(0.1)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `signum` and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def output(self) -> str:
        """What it logged so far."""
        return self.log.read_text()


def wait_until(condition: object, timeout: float, interval: float = 0.2) -> bool:
    """Poll the callable `condition` until it is true or `timeout` seconds passed."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[Path]:
    """XDG_RUNTIME_DIR of the SDK tests: the in-process service's socket outlives single tests."""
    with private_folder() as folder:
        yield folder


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, runtime_dir: Path) -> None:
    """No `vmpool serve` of the developer's is used: the SDK starts its in-process service."""
    monkeypatch.delenv("VMPOOL_SERVICE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))


@pytest.fixture
def tag(request: pytest.FixtureRequest) -> dict[str, str]:
    """Metadata unique to this test, to list only its sandboxes."""
    return {"test": "%s-%f" % (request.node.name, time.time())}
