"""`Sandbox.commands` of the E2B-style SDK: results and CommandExitException, live callbacks,
environments, background handles (wait, kill, stdin, connect), listing, timeouts that kill, and
what happens to a command when its client process goes away (through `vmpool serve`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from vmpool import (
    CommandExitException, CommandResult, NotFoundException, Sandbox, SandboxException, TimeoutException,
)

from .service_support import (  # noqa: F401 (fixtures)
    Serve, in_process, private_folder, run_client, runtime_dir, start_client, tag, wait_until,
)

pytestmark = pytest.mark.sandbox


@pytest.fixture
def sandbox(in_process: None, tag: dict[str, str], sandboxes: None,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("VMPOOL_DRIVER", "bwrap")
    with Sandbox.create(template="base", metadata=tag, envs={"GLOBAL": "from-create", "SHADOWED": "create"}) as sb:
        yield sb


def test_result_and_exit_exception(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo hi; echo warn >&2")
    assert isinstance(result, CommandResult)
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hi\n", "warn\n", 0, None)

    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (raised.value.stdout, raised.value.stderr, raised.value.exit_code, raised.value.error) == (
        "out\n", "err\n", 3, "exit status 3")
    assert isinstance(raised.value, SandboxException)


def test_callbacks_are_live(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str, float]] = []
    result = sandbox.commands.run(
        "echo first; sleep 1.5; echo second >&2",
        on_stdout=lambda text: seen.append(("out", text, time.monotonic())),
        on_stderr=lambda text: seen.append(("err", text, time.monotonic())))
    done = time.monotonic()
    assert [(kind, text) for kind, text, _ in seen] == [("out", "first\n"), ("err", "second\n")]
    assert done - seen[0][2] > 1.0  # the first line came while the command still ran
    assert (result.stdout, result.stderr) == ("first\n", "second\n")


def test_environment_and_cwd(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("echo $GLOBAL $SHADOWED", envs={"SHADOWED": "call"}).stdout == "from-create call\n"
    assert sandbox.commands.run("echo $SHADOWED").stdout == "create\n"  # the call's envs were its own
    assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout == sandbox.sandbox_id + "\n"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sandbox.commands.run("pwd").stdout == "/home/user\n"  # E2B's default working directory


def test_background_handles(sandbox: Sandbox) -> None:
    started = time.monotonic()
    handle = sandbox.commands.run("sleep 1; echo done", background=True)
    assert time.monotonic() - started < 1 and handle.pid > 0
    result = handle.wait()
    assert result.stdout == "done\n" and result.exit_code == 0

    cat = sandbox.commands.run("cat; echo eof", background=True, stdin=True)
    cat.send_stdin("hello\n")
    sandbox.commands.send_stdin(cat.pid, b"bytes too\n")
    cat.close_stdin()
    assert cat.wait().stdout == "hello\nbytes too\neof\n"

    sleeper = sandbox.commands.run("sleep 60", background=True)
    assert sleeper.kill() is True
    with pytest.raises(CommandExitException) as raised:
        sleeper.wait()
    assert raised.value.exit_code == -9 and raised.value.error == "signal: SIGKILL"
    assert sleeper.kill() is False  # gone already


def test_iterating_a_handle(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("echo a; echo b >&2; echo c", background=True)
    chunks = list(handle)
    assert "".join(out for out, _, _ in chunks if out) == "a\nc\n"
    assert "".join(err for _, err, _ in chunks if err) == "b\n"
    assert all(pty is None for _, _, pty in chunks)
    assert handle.wait().stdout == "a\nc\n"  # the result of what was iterated


def test_list_kill_and_connect(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("for i in 1 2 3 4; do echo $i; sleep 0.7; done", background=True)
    listed = {process.pid: process for process in sandbox.commands.list()}
    assert listed[handle.pid].cmd == "for i in 1 2 3 4; do echo $i; sleep 0.7; done"

    handle.disconnect()  # stop following it: it keeps running
    again = sandbox.commands.connect(handle.pid)
    result = again.wait()
    assert result.stdout.endswith("4\n")  # what came after the connect
    with pytest.raises(NotFoundException, match="pid 999999"):
        sandbox.commands.connect(999999)

    sleeper = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.commands.kill(sleeper.pid) is True
    assert wait_until(lambda: sleeper.pid not in {p.pid for p in sandbox.commands.list()}, timeout=10)
    assert sandbox.commands.kill(sleeper.pid) is False


def test_timeouts_kill(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException, match="timeout of 1 s"):
        sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert not [p for p in sandbox.commands.list() if p.cmd == "sleep 30"]

    handle = sandbox.commands.run("sleep 30", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        handle.wait()
    assert sandbox.commands.run("sleep 1.5; echo slow", timeout=0).stdout == "slow\n"  # 0: no limit


@pytest.fixture
def serve(sandboxes: None) -> Iterator[Serve]:
    with private_folder() as folder:
        server = Serve(folder / "s.sock", VMPOOL_DRIVER="bwrap")
        yield server
        server.stop()


def test_background_commands_outlive_their_client(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    created = run_client(
        "from vmpool import Sandbox\n"
        "sb = Sandbox.create(template='base')\n"
        "handle = sb.commands.run('sleep 1000', background=True)\n"
        "print(sb.sandbox_id, handle.pid)\n", VMPOOL_SERVICE=str(serve.socket))
    sandbox_id, pid = created.stdout.split()
    monkeypatch.setenv("VMPOOL_SERVICE", str(serve.socket))
    sandbox = Sandbox.connect(sandbox_id)
    assert int(pid) in {process.pid for process in sandbox.commands.list()}
    sandbox.kill()


def test_a_foreground_command_dies_with_its_client(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_SERVICE", str(serve.socket))
    sandbox = Sandbox.create(template="base")
    client = start_client(
        "from vmpool import Sandbox\n"
        "Sandbox.connect(%r).commands.run('sleep 1000', timeout=0)\n" % sandbox.sandbox_id,
        VMPOOL_SERVICE=str(serve.socket))
    assert wait_until(lambda: any(p.cmd == "sleep 1000" for p in sandbox.commands.list()), timeout=20)
    client.kill()  # SIGKILL: the connection drops, the service sees it
    client.wait()
    assert wait_until(lambda: not sandbox.commands.list(), timeout=10)
    sandbox.kill()


def test_a_missing_cwd_is_an_error(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundError):
        sandbox.commands.run("true", cwd="/no/such/dir")
