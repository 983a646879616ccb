"""Behaviour specific to the bubblewrap driver: how it is started, torn down and reported."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vmpool import DriverUnavailableError, Limits, LocalSandbox
from vmpool._bwrap import BwrapDriver

pytestmark = pytest.mark.sandbox


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path("/proc/%d/stat" % pid).read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return True
        if state == b"Z":
            return True
        time.sleep(0.02)
    return False


def uid_of(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_isolation_names_bubblewrap_version() -> None:
    isolation = BwrapDriver().isolation()
    assert isolation.startswith("namespaces+seccomp (bubblewrap 0.")


def test_missing_bwrap_is_driver_unavailable() -> None:
    driver = BwrapDriver(bwrap="/nonexistent/bwrap")
    assert "apt-get install bubblewrap" in (driver.available() or "")
    with pytest.raises(DriverUnavailableError, match="apt-get install bubblewrap"):
        LocalSandbox.create(driver)


def test_missing_python_is_driver_unavailable() -> None:
    with pytest.raises(DriverUnavailableError, match="apt-get install python3"):
        LocalSandbox.create("bwrap", python="/usr/bin/python-does-not-exist")
    with pytest.raises(DriverUnavailableError, match="outside /usr"):
        LocalSandbox.create("bwrap", python=sys.executable if not os.path.realpath(sys.executable).startswith("/usr/")
                       else "/etc/hostname")


def test_kill_leaves_nothing_running() -> None:
    sandbox = LocalSandbox.create("bwrap")
    outer, agent = sandbox._process.pid, sandbox._process.agent_host_pid()  # type: ignore[attr-defined]
    assert agent is not None
    if os.geteuid() == 0:  # root starts bwrap unprivileged so that RLIMIT_NPROC holds
        assert uid_of(outer) == 65534
    sandbox.kill()
    assert gone(outer, 0.5) and gone(agent, 0.5)


def test_survives_the_thread_that_created_it() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: sandboxes must not die with it
    created: list[LocalSandbox] = []
    worker = threading.Thread(target=lambda: created.append(LocalSandbox.create("bwrap")))
    worker.start()
    worker.join()
    with created[0] as sandbox:
        time.sleep(0.2)
        assert sandbox.run_program("print(1)").status == "ok"


def test_dies_with_a_killed_host() -> None:
    host = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, time
        from vmpool import LocalSandbox
        sandbox = LocalSandbox.create("bwrap")
        print(sandbox._process.agent_host_pid(), flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    agent = int(host.stdout.readline())
    host.send_signal(signal.SIGKILL)
    host.wait()
    assert gone(agent)


def test_ctrl_c_mid_program_leaves_nothing_running() -> None:
    host = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        from vmpool import Limits, LocalSandbox
        sandbox = LocalSandbox.create("bwrap")
        print(sandbox._process.agent_host_pid(), flush=True)
        sandbox.run_program("import time; time.sleep(60)", Limits(wall_time_s=60))
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert host.stdout is not None
    agent = int(host.stdout.readline())
    time.sleep(0.3)  # let run_program start
    host.send_signal(signal.SIGINT)
    _, stderr = host.communicate(timeout=30)
    assert "KeyboardInterrupt" in stderr
    assert gone(agent)


def test_agent_is_shielded_from_programs() -> None:
    with LocalSandbox.create("bwrap") as sandbox:
        result = sandbox.run_program(textwrap.dedent("""
            import os
            agent = os.getppid()
            for path in ["/proc/%d/mem" % agent, "/proc/%d/fd/3" % agent, "/proc/%d/environ" % agent]:
                try:
                    open(path, "rb").read(1)
                    print("READ", path)
                except OSError:
                    pass
            print(sorted(os.listdir("/proc/self/fd")))
            """), Limits())
    assert result.status == "ok", result
    fds = set(eval(result.stdout))  # nothing read above; fds: std streams, status pipe, listdir's
    assert len(fds) == 5 and {"0", "1", "2"} <= fds


def test_tmp_size_is_limited() -> None:
    with LocalSandbox.create("bwrap", tmp_size_mb=8) as sandbox:
        result = sandbox.run_program("open('/tmp/big', 'wb').write(b'x' * (12 * 1024 * 1024))",
                                     Limits(max_file_size_mb=64))
        assert result.status == "error" and result.error is not None
        assert "No space left" in result.error
        assert sandbox.run_program("print(1)").status == "ok"
