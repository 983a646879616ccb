"""The guest agent spoken to directly over pipes, outside any sandbox (never with --exclusive,
which would sweep host processes; the agent refuses that flag here, which is tested too).
Background processes started here are host processes: every test gives them a timeout or
ends them, and the fixture closes the agent's pipes, on which it kills those left."""

import base64
import json
import os
import subprocess
import sys
import time
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
        self.write_raw(line)
        return self.read()

    def write_raw(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, **message: Any) -> dict[str, Any]:
        return self.send_raw(json.dumps(message).encode())

    def write(self, **message: Any) -> None:
        self.write_raw(json.dumps(message).encode())

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def until(self, request_id: int) -> list[dict[str, Any]]:
        """Messages read up to and including the reply to `request_id`."""
        messages = [self.read()]
        while messages[-1].get("id") != request_id or "ok" not in messages[-1]:
            messages.append(self.read())
        return messages

    def close(self) -> None:
        """EOF on both pipes: the agent kills its background processes and exits."""
        for stream in (self.proc.stdout, self.proc.stdin):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = Agent()
    yield running
    running.close()


def test_hello(agent: Agent) -> None:
    assert agent.hello["op"] == "hello" and agent.hello["id"] == 0
    assert agent.hello["protocol"] == vmpool.PROTOCOL_VERSION
    assert agent.hello["pid"] == agent.proc.pid
    assert agent.hello["guest_dir"] == str(AGENT.parent)


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


def test_rebinding_what_the_wrapper_calls_cannot_turn_a_failure_into_ok(agent: Agent) -> None:
    # Without the wrapper's own frames or memory (the known limit above), a program can still
    # rebind public names: os.write (to rewrite the report it fails with), json.dumps, os._exit
    # and the guest modules' EXIT in sys.modules (to exit 0 afterwards). None of them may count.
    rebind = (
        "import json, os, sys\n"
        "_write, _exit = os.write, os._exit\n"
        "def forged_write(fd, data):\n"
        "    n = _write(fd, data.replace(b' error ', b' ok ').replace(b' exited ', b' ok '))\n"
        "    if b' ok ' in data or b' error ' in data or b' exited ' in data:\n"
        "        _exit(0)\n"
        "    return n\n"
        "os.write = forged_write\n"
        "json.dumps = lambda value, **kw: 'null'\n"
        "os._exit = lambda status: _exit(0)\n"
        "for name, module in list(sys.modules.items()):\n"
        "    if name.rpartition('.')[2] in ('_agent_child', '_agent_run'):\n"
        "        module.EXIT = os._exit\n"
    )
    for ending, status in [("raise AssertionError('tests failed')", "error"), ("raise SystemExit(3)", "exited")]:
        reply = agent.send(id=1, op="run_program", code=rebind + ending, limits=LIMITS)
        assert reply["ok"] is True, reply
        assert reply["result"]["status"] == status, reply["result"]
        assert reply["result"]["exit_code"] != 0, reply["result"]


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


# -- protocol v2: concurrency, events and background processes -------------------------------


def start(agent: Agent, request_id: int, cmd: str, **fields: Any) -> int:
    """Start a background process; its pid (from its ``start`` event)."""
    fields.setdefault("timeout_s", 30)
    agent.write(id=request_id, op="process_start", cmd=cmd, **fields)
    event = agent.read()
    assert (event["id"], event["event"]) == (request_id, "start"), event
    pid: int = event["pid"]
    return pid


def output(messages: list[dict[str, Any]], request_id: int, stream: str) -> bytes:
    return b"".join(base64.b64decode(m["data_b64"]) for m in messages
                    if m.get("id") == request_id and m.get("event") == stream)


def gone(pid: int) -> bool:
    try:
        stat = Path("/proc/%d/stat" % pid).read_bytes()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:].startswith(b"Z")


def test_process_events_precede_its_reply(agent: Agent) -> None:
    pid = start(agent, 1, "echo out; echo err >&2; printf 'é' >&2; exit 3", tag="t")
    messages = agent.until(1)
    assert [m.get("event") for m in messages[:-1]] and all(m["id"] == 1 for m in messages)
    assert output(messages, 1, "stdout") == b"out\n"
    assert output(messages, 1, "stderr") == "err\né".encode()
    assert messages[-1]["ok"] is True
    result = messages[-1]["result"]
    assert (result["pid"], result["exit_code"], result["timed_out"]) == (pid, 3, False)
    assert 0 < result["duration_s"] < 20
    assert agent.send(id=2, op="process_list") == {"id": 2, "ok": True, "result": {"processes": []}}


def test_replies_come_out_of_order(agent: Agent) -> None:
    # a program occupies the fork-server; ping and the process ops are answered meanwhile
    agent.write(id=1, op="run_program", code="import time; time.sleep(1.5); print('slept')", limits=LIMITS)
    agent.write(id=2, op="ping")
    agent.write(id=3, op="process_list")
    agent.write(id=4, op="read_file", path="/nonexistent/vmpool-test")  # serial: after the program
    replies = [agent.read() for _ in range(4)]
    assert [reply["id"] for reply in replies] == [2, 3, 1, 4]
    assert replies[2]["result"]["stdout"] == "slept\n"
    assert replies[3]["error"]["errno"] == 2


def test_serial_ops_keep_their_order(agent: Agent) -> None:
    agent.write(id=1, op="run_program", code="import time; time.sleep(0.3)", limits=LIMITS)
    agent.write(id=2, op="write_file", path="/tmp/vmpool-test-order-%d" % os.getpid(),
                data_b64=base64.b64encode(b"written").decode())
    agent.write(id=3, op="read_file", path="/tmp/vmpool-test-order-%d" % os.getpid())
    agent.write(id=4, op="remove", path="/tmp/vmpool-test-order-%d" % os.getpid())
    replies = [agent.read() for _ in range(4)]
    assert [reply["id"] for reply in replies] == [1, 2, 3, 4]
    assert base64.b64decode(replies[2]["result"]["data_b64"]) == b"written"


def test_program_runs_while_a_process_streams(agent: Agent) -> None:
    start(agent, 1, "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done")
    reply = agent.send(id=2, op="run_program", code="print('program')", limits=LIMITS)
    while reply.get("id") != 2:  # output events of the process may come first
        reply = agent.read()
    assert reply["result"]["stdout"] == "program\n"
    messages = agent.until(1)
    assert output(messages, 1, "stdout") in {b"1\n2\n3\n4\n5\n"[i:] for i in range(0, 10, 2)}
    assert messages[-1]["result"]["exit_code"] == 0


@pytest.mark.parametrize("fields", [
    {}, {"cmd": 5}, {"cmd": "true", "envs": []}, {"cmd": "true", "envs": {"A=B": "x"}},
    {"cmd": "true", "envs": {"A": 1}}, {"cmd": "true", "timeout_s": -1}, {"cmd": "true", "timeout_s": "1"},
    {"cmd": "true", "timeout_s": float("inf")}, {"cmd": "true", "stdin": "yes"}, {"cmd": "true", "tag": 5},
    {"cmd": "true", "cwd": 7}, {"cmd": "a\0b"},
])
def test_bad_process_starts_are_refused(agent: Agent, fields: dict[str, Any]) -> None:
    reply = agent.send(id=1, op="process_start", **fields)
    assert (reply["id"], reply["ok"], reply["error"]["kind"]) == (1, False, "bad_request"), reply
    assert agent.send(id=2, op="ping") == {"id": 2, "ok": True, "result": {}}


@pytest.mark.parametrize("message", [
    {"op": "process_signal", "pid": "PID", "signal": "SIGFOO"}, {"op": "process_signal", "pid": "PID", "signal": 0},
    {"op": "process_signal", "pid": "1", "signal": "SIGTERM"}, {"op": "process_input", "pid": "PID", "data_b64": "!"},
    {"op": "process_connect"}, {"op": "process_close_stdin", "pid": True},
])
def test_bad_process_requests_are_refused(agent: Agent, message: dict[str, Any]) -> None:
    pid = start(agent, 1, "sleep 30")
    fields = {key: (pid if value == "PID" else value) for key, value in message.items()}
    reply = agent.send(id=2, **fields)
    assert (reply["id"], reply["error"]["kind"]) == (2, "bad_request"), reply
    assert agent.send(id=3, op="process_signal", pid=pid, signal="SIGKILL")["ok"] is True
    assert agent.until(1)[-1]["result"]["exit_code"] == -9


def test_unknown_pids_are_esrch(agent: Agent) -> None:
    for request_id, message in enumerate([
            {"op": "process_connect"}, {"op": "process_input", "data_b64": ""},
            {"op": "process_close_stdin"}, {"op": "process_signal", "signal": 9}], start=1):
        reply = agent.send(id=request_id, pid=2**22 + 1, **message)
        assert (reply["error"]["kind"], reply["error"]["errno"]) == ("os_error", 3), reply


def test_a_missing_cwd_is_enoent(agent: Agent) -> None:
    reply = agent.send(id=1, op="process_start", cmd="true", cwd="/nonexistent/vmpool")
    assert (reply["id"], reply["error"]["kind"], reply["error"]["errno"]) == (1, "os_error", 2), reply


def test_stdin_signals_and_timeouts(agent: Agent) -> None:
    cat = start(agent, 1, "cat", stdin=True)
    assert agent.send(id=2, op="process_input", pid=cat, data_b64=base64.b64encode(b"hello\n").decode())["ok"]
    echoed = agent.read()
    assert (echoed["id"], echoed["event"], base64.b64decode(echoed["data_b64"])) == (1, "stdout", b"hello\n")
    assert agent.send(id=3, op="process_close_stdin", pid=cat)["ok"] is True
    assert agent.until(1)[-1]["result"]["exit_code"] == 0

    sleeper = start(agent, 4, "sleep 30")
    reply = agent.send(id=5, op="process_input", pid=sleeper, data_b64="")
    assert reply["error"]["errno"] == 32  # EPIPE: started without stdin
    assert agent.send(id=6, op="process_signal", pid=sleeper, signal="SIGTERM")["ok"] is True
    assert agent.until(4)[-1]["result"]["exit_code"] == -15

    # the timeout kills the whole group, not just the shell
    start(agent, 7, "sleep 30 & echo $!; wait", timeout_s=0.5)
    messages = agent.until(7)
    result = messages[-1]["result"]
    assert (result["timed_out"], result["exit_code"]) == (True, -9)
    assert 0.4 < result["duration_s"] < 10
    background = int(output(messages, 7, "stdout"))
    deadline = time.monotonic() + 5
    while not gone(background) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(background)


def test_envs_cwd_and_list(agent: Agent, tmp_path: Path) -> None:
    pid = start(agent, 1, 'echo "$GREETING $HOME"; pwd; sleep 30', envs={"GREETING": "hi"},
                cwd=str(tmp_path), tag="mine")
    expected = "hi %s\n%s\n" % (os.environ["HOME"], tmp_path)
    messages: list[dict[str, Any]] = []
    while len(output(messages, 1, "stdout")) < len(expected.encode()):
        messages.append(agent.read())
    assert output(messages, 1, "stdout") == expected.encode()
    assert agent.send(id=2, op="process_list")["result"]["processes"] == [{
        "pid": pid, "cmd": 'echo "$GREETING $HOME"; pwd; sleep 30', "tag": "mine", "cwd": str(tmp_path),
        "running": True}]
    agent.write(id=3, op="process_signal", pid=pid, signal="SIGKILL")
    assert agent.until(1)[-1]["result"]["exit_code"] == -9


def test_connect_subscribes_a_second_listener(agent: Agent) -> None:
    pid = start(agent, 1, "cat", stdin=True)
    agent.write(id=2, op="process_connect", pid=pid)
    assert agent.read() == {"id": 2, "event": "start", "pid": pid}
    agent.send(id=3, op="process_input", pid=pid, data_b64=base64.b64encode(b"both\n").decode())
    agent.send(id=4, op="process_close_stdin", pid=pid)
    messages = agent.until(1)
    messages += agent.until(2) if not any(m.get("id") == 2 and "ok" in m for m in messages) else []
    for request_id in (1, 2):
        assert output(messages, request_id, "stdout") == b"both\n"
        assert [m["result"]["exit_code"] for m in messages if m.get("id") == request_id and "ok" in m] == [0]
    assert agent.send(id=5, op="process_list")["result"]["processes"] == []  # its exit was collected


def _peak_rss_kb_of(pid: int) -> int:
    return _peak_rss_kb(pid)


def test_a_flood_neither_blocks_requests_nor_grows_the_agent(agent: Agent) -> None:
    # 100 MB of output: while the host does not read, the agent stops reading the process
    # (backpressure) instead of buffering; a ping is answered in the middle of the flood
    before = _peak_rss_kb_of(agent.proc.pid)
    start(agent, 1, "head -c 100000000 /dev/zero", timeout_s=120)
    time.sleep(1.0)
    assert _peak_rss_kb_of(agent.proc.pid) - before < 16 * 1024
    agent.write(id=2, op="ping")
    received, ping_seen, messages = 0, False, 0
    while True:
        message = agent.read()
        messages += 1
        if message.get("id") == 2:
            ping_seen = True
            assert message["ok"] is True
        elif message.get("event") == "stdout":
            chunk = base64.b64decode(message["data_b64"])
            assert len(chunk) <= 64 * 1024
            received += len(chunk)
        elif "ok" in message:
            assert ping_seen, "the ping waited for the whole flood"
            assert message["result"]["exit_code"] == 0
            break
    assert received == 100_000_000
    assert _peak_rss_kb_of(agent.proc.pid) - before < 32 * 1024


def test_shutdown_kills_background_processes(agent: Agent) -> None:
    pid = start(agent, 1, "sleep 30")
    agent.write(id=2, op="shutdown")
    assert agent.proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)
