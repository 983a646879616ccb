"""The host side of process-tree sandboxes (vmpool._process), on a plain `cat` standing in for
an agent: it echoes what it is sent."""

import math
import time
from collections.abc import Iterator

import pytest

from vmpool._process import PopenSandboxProcess, spawn


@pytest.fixture
def echo() -> Iterator[PopenSandboxProcess]:
    popen, stderr_file = spawn(["/bin/cat"])
    process = PopenSandboxProcess(popen, stderr_file)
    yield process
    process.kill()


@pytest.mark.parametrize("timeout", [1e12, math.inf, 1e300])
def test_enormous_timeouts_are_waited_not_overflowed(echo: PopenSandboxProcess, timeout: float) -> None:
    # select()/poll() refuse timeouts beyond time_t or int milliseconds (OverflowError)
    echo.send(b"ping\n", timeout)
    received = b""
    while not received.endswith(b"\n"):
        received += echo.receive(timeout)
    assert received == b"ping\n"


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan])
def test_no_timeout_left_means_no_wait(echo: PopenSandboxProcess, timeout: float) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        echo.receive(timeout)
    assert time.monotonic() - started < 5


def test_receive_times_out(echo: PopenSandboxProcess) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        echo.receive(0.2)
    assert 0.15 <= time.monotonic() - started < 10
