"""The guest agent spoken to directly over pipes, outside any sandbox (never with --exclusive,
which would sweep host processes; the agent refuses that flag here, which is tested too)."""

import json
import os
import subprocess
import sys
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmpool

AGENT = Path(vmpool.__file__).resolve().parent / "_agent.py"
LIMITS = {"wall_time_s": 5, "cpu_time_s": 5, "memory_mb": 512, "max_processes": 16,
          "max_file_size_mb": 1, "max_output_bytes": 10000}


class Agent:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", str(AGENT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.hello = self.read()

    def send_raw(self, line: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        return self.read()

    def send(self, **message: Any) -> dict[str, Any]:
        return self.send_raw(json.dumps(message).encode())

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = Agent()
    yield running
    running.proc.kill()
    running.proc.wait()


def test_hello(agent: Agent) -> None:
    assert agent.hello["op"] == "hello" and agent.hello["id"] == 0
    assert agent.hello["protocol"] == vmpool.PROTOCOL_VERSION
    assert agent.hello["pid"] == agent.proc.pid


@pytest.mark.parametrize("line", [
    b"garbage", b"[]", b"{}", b'{"id": "1", "op": "ping"}', b'{"id": 0, "op": "ping"}',
    b'{"id": true, "op": "ping"}', b'{"id": 4, "op": "format_disk"}', b'{"id": 5}',
    b'{"id": 6, "op": "run_program"}', b'{"id": 7, "op": "run_program", "code": "1", "limits": {}}',
    b'{"id": 8, "op": "write_file", "path": "x", "data_b64": "!!"}',
    b'{"id": 9, "op": "read_file", "path": ""}', b"\xff\xfe",
    b'{"id": 10, "op": "write_files", "files": [1]}', b'{"id": 11, "op": "write_files", "files": {}}',
    b'{"id": 12, "op": "list_dir", "path": "/", "depth": 0}', b'{"id": 13, "op": "stat"}',
    b'{"id": 14, "op": "rename", "old_path": "a"}', b'{"id": 15, "op": "unpack_dir", "path": "x", "tar_b64": 5}',
])
def test_malformed_requests_get_error_replies(agent: Agent, line: bytes) -> None:
    reply = agent.send_raw(line)
    assert reply["ok"] is False and reply["error"]["kind"] == "bad_request"
    assert agent.send(id=99, op="ping") == {"id": 99, "ok": True, "result": {}}


def test_reply_echoes_id(agent: Agent) -> None:
    assert agent.send(id=12345, op="ping")["id"] == 12345
    assert agent.send(id=3, op="nope")["id"] == 3


def test_file_errors_carry_errno(agent: Agent) -> None:
    reply = agent.send(id=1, op="read_file", path="/nonexistent/vmpool-test")
    assert reply["error"]["kind"] == "os_error" and reply["error"]["errno"] == 2


def test_run_program_without_sandbox(agent: Agent) -> None:
    reply = agent.send(id=1, op="run_program", code="print(6 * 7)", limits=LIMITS)
    assert reply["result"]["status"] == "ok" and reply["result"]["stdout"] == "42\n"
    reply = agent.send(id=2, op="run_program", code="import os; print(os.environ.get('X'))", limits=LIMITS)
    assert reply["result"]["status"] == "ok"


def test_programs_cannot_signal_their_agent(agent: Agent) -> None:
    # the agent filters its children itself: here no sandbox (and no bwrap filter) is involved.
    # Signal 0 to the agent's parent (this test) only checks permission, whatever happens.
    for code in ["import os; os.kill(os.getppid(), 9)",
                 "import os; os.kill(int(open('/proc/%d/stat' % os.getppid()).read().rsplit(')', 1)[1].split()[1]), 0)"]:
        reply = agent.send(id=1, op="run_program", code=code, limits=LIMITS)
        assert reply["ok"] is True, reply
        assert reply["result"]["status"] == "error"
        assert reply["result"]["error"].startswith("PermissionError"), reply
        assert agent.send(id=2, op="ping")["ok"] is True


def test_forged_setup_report_is_not_a_broken_sandbox(agent: Agent) -> None:
    # the program reaches the wrapper's report function through its caller's frame (a known,
    # documented limit) and claims the sandbox failed: that must stay the program's own failure
    code = "import os, sys\nsys._getframe(1).f_locals['report']('setup', 'forged')\nos._exit(0)"
    reply = agent.send(id=1, op="run_program", code=code, limits=LIMITS)
    assert reply["ok"] is True, reply
    assert reply["result"]["status"] == "exited" and reply["result"]["exit_code"] == 0


def test_shutdown(agent: Agent) -> None:
    assert agent.send(id=1, op="shutdown")["ok"] is True
    assert agent.proc.wait(timeout=10) == 0


def test_eof_ends_the_agent(agent: Agent) -> None:
    assert agent.proc.stdin is not None
    agent.proc.stdin.close()
    assert agent.proc.wait(timeout=10) == 0


def test_device_channel() -> None:
    # a raw pty stands in for the virtio-serial port the microVM will use
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([sys.executable, "-I", "-B", str(AGENT), "--channel", os.ttyname(slave)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        with os.fdopen(master, "r+b", buffering=0) as port:
            lines = port_lines(port)
            assert json.loads(next(lines))["op"] == "hello"
            port.write(b'{"id": 1, "op": "run_program", "code": "print(7)", "limits": %s}\n'
                       % json.dumps(LIMITS).encode())
            assert json.loads(next(lines))["result"]["stdout"] == "7\n"
            port.write(b'{"id": 2, "op": "shutdown"}\n')
            assert json.loads(next(lines))["ok"] is True
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(slave)
        proc.kill()
        proc.wait()


def port_lines(port: Any) -> Iterator[bytes]:
    buffer = b""
    while True:
        while b"\n" not in buffer:
            buffer += port.read(65536)
        line, buffer = buffer.split(b"\n", 1)
        yield line


def _ancestor_count() -> int:
    count, pid = 0, os.getpid()
    while pid > 0:
        stat = Path("/proc/%d/stat" % pid).read_bytes()
        pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        count += 1
    return count  # this process and its ancestors: the agent's ancestors


def test_exclusive_is_refused_outside_a_sandbox() -> None:
    if _ancestor_count() <= 2:
        pytest.skip("this test process is too close to PID 1 for the agent to notice")
    done = subprocess.run([sys.executable, "-I", "-B", str(AGENT), "--exclusive"], input=b"",
                          capture_output=True, timeout=30)
    assert done.returncode == 2 and b"refusing --exclusive" in done.stderr


def _peak_rss_kb(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/%d/status" % pid)


def test_output_beyond_the_cap_is_drained_in_bounded_memory(agent: Agent) -> None:
    # 128 MB through the pipes with 10 kB kept: the run ends normally and the agent, which
    # reads it all, keeps no more than the cap (its peak RSS would grow by the flood otherwise)
    code = ("import sys\nchunk = 'x' * 2**20\nfor _ in range(64):\n"
            "    sys.stdout.write(chunk)\n    sys.stderr.write(chunk)\nprint('end')")
    before = _peak_rss_kb(agent.proc.pid)
    reply = agent.send(id=1, op="run_program", code=code, limits=dict(LIMITS, wall_time_s=60, cpu_time_s=60))
    result = reply["result"]
    assert (result["status"], result["error"], result["output_truncated"]) == ("ok", None, True), result["error"]
    head = result["stderr"].partition("\n[vmpool: ")[0]  # then the last 16 KiB of stderr
    assert len(result["stdout"]) + len(head) == LIMITS["max_output_bytes"]
    assert len(result["stderr"]) - len(head) < 16 * 1024 + 100
    assert _peak_rss_kb(agent.proc.pid) - before < 32 * 1024


def test_huge_and_non_finite_time_limits(agent: Agent) -> None:
    # the host refuses such limits (vmpool.Limits), but the agent must not depend on that: a
    # finite but huge wall time is waited in pieces, infinity and NaN are malformed requests
    huge = dict(LIMITS, wall_time_s=1e12, cpu_time_s=1e12)
    reply = agent.send(id=1, op="run_program", code="print(1)", limits=huge)
    assert reply["ok"] is True and reply["result"]["status"] == "ok", reply
    for bad in (float("inf"), float("nan")):
        reply = agent.send(id=2, op="run_program", code="print(1)", limits=dict(LIMITS, wall_time_s=bad))
        assert reply["ok"] is False and reply["error"]["kind"] == "bad_request", reply
        assert "wall_time_s" in reply["error"]["message"]
    assert agent.send(id=3, op="ping")["ok"] is True
