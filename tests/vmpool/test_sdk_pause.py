"""Pause and resume through the E2B-style SDK: paused sandboxes are listed, never expire, resume
on `connect` (keeping files on every driver, and processes and kernel state on microvm), survive
the service that paused them, and are deleted by `kill`."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from vmpool import CommandExitException, Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState
from vmpool._service_paused import default_paused_dir

from .service_support import Serve, in_process, private_folder, runtime_dir, tag  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(params=[pytest.param("bwrap", marks=pytest.mark.sandbox),
                        pytest.param("microvm", marks=pytest.mark.microvm)])
def driver(request: pytest.FixtureRequest, in_process: None, monkeypatch: pytest.MonkeyPatch) -> str:
    request.getfixturevalue("sandboxes" if request.param == "bwrap" else "microvm")
    monkeypatch.setenv("VMPOOL_DRIVER", request.param)
    return str(request.param)


def test_pause_list_and_resume(driver: str, tag: dict[str, str]) -> None:
    sandbox = Sandbox.create(template="base", metadata=tag, timeout=3)
    sandbox.files.write("kept.txt", "across the pause")
    assert sandbox.pause() is True
    assert sandbox.pause() is False  # paused already
    assert not sandbox.is_running()
    info = sandbox.get_info()
    assert info.state == SandboxState.PAUSED and info.metadata == tag
    assert [i.sandbox_id for i in Sandbox.list(SandboxQuery(metadata=tag, state=[SandboxState.PAUSED]))] == [
        sandbox.sandbox_id]
    assert list(Sandbox.list(SandboxQuery(metadata=tag, state=[SandboxState.RUNNING]))) == []
    with pytest.raises(SandboxNotFoundException, match="is paused; connect to it to resume it"):
        sandbox.files.read("kept.txt")
    assert (default_paused_dir() / sandbox.sandbox_id / "sandbox.json").is_file()

    time.sleep(4)  # longer than its timeout: a paused sandbox does not expire
    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=60)
    assert resumed.sandbox_id == sandbox.sandbox_id and resumed.is_running()
    assert resumed.files.read("/home/user/kept.txt") == "across the pause"
    assert resumed.commands.run("cat kept.txt").stdout == "across the pause"
    end_at = resumed.get_info().end_at
    assert timedelta(seconds=50) < end_at - datetime.now(timezone.utc) <= timedelta(seconds=60)
    assert not (default_paused_dir() / sandbox.sandbox_id).exists()
    resumed.kill()


def test_kill_deletes_a_paused_sandbox(driver: str, tag: dict[str, str]) -> None:
    sandbox = Sandbox.create(template="base", metadata=tag)
    sandbox.beta_pause()  # E2B's older name
    assert Sandbox.kill(sandbox.sandbox_id) is True
    assert not (default_paused_dir() / sandbox.sandbox_id).exists()
    assert Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException, match=sandbox.sandbox_id):
        Sandbox.connect(sandbox.sandbox_id)


@pytest.mark.microvm
def test_a_resumed_vm_keeps_its_processes_and_kernel(in_process: None, microvm: None, tag: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_DRIVER", "microvm")
    sandbox = Sandbox.create(metadata=tag)  # code-interpreter
    sandbox.run_code("counter = 41")
    ticker = sandbox.commands.run("i=0; while true; do i=$((i+1)); echo $i; sleep 0.5; done", background=True)
    sandbox.pause()
    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.run_code("counter += 1; counter").text == "42"
    assert ticker.pid in {process.pid for process in resumed.commands.list()}
    follow = resumed.commands.connect(ticker.pid)
    chunks = []
    for stdout, _, _ in follow:
        chunks.append(stdout)
        if len(chunks) == 2:
            break
    assert all(chunk and chunk.strip().isdigit() for chunk in chunks)
    assert resumed.commands.kill(ticker.pid) is True
    resumed.kill()


@pytest.mark.sandbox
def test_paused_sandboxes_outlive_their_service(sandboxes: None, tag: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with private_folder() as folder:
        socket = folder / "s.sock"
        first = Serve(socket, VMPOOL_DRIVER="bwrap")
        monkeypatch.setenv("VMPOOL_SERVICE", str(socket))
        sandbox = Sandbox.create(template="base", metadata=tag)
        sandbox.files.write("note", "written before the service stopped")
        sandbox.pause()
        running = Sandbox.create(template="base", metadata=tag)
        assert first.stop() == 0  # kills the running one, keeps the paused one

        second = Serve(socket, VMPOOL_DRIVER="bwrap")
        try:
            listed = {info.sandbox_id: info.state for info in Sandbox.list(SandboxQuery(metadata=tag))}
            assert listed == {sandbox.sandbox_id: SandboxState.PAUSED}
            assert running.sandbox_id not in listed
            resumed = Sandbox.connect(sandbox.sandbox_id)
            assert resumed.files.read("note") == "written before the service stopped"
            resumed.kill()
        finally:
            second.stop()


PROBE = "python3 -c \"import socket; socket.create_connection(('pypi.org', 443), timeout=5)\""


def test_no_internet_stays_off_across_a_pause(driver: str, tag: dict[str, str]) -> None:
    if reachable():  # the control: the same template does reach the internet when allowed
        with Sandbox.create(metadata=tag) as online:
            assert online.commands.run(PROBE).exit_code == 0
    sandbox = Sandbox.create(metadata=tag, allow_internet_access=False)  # code-interpreter has a network
    with pytest.raises(CommandExitException):
        sandbox.commands.run(PROBE)
    sandbox.pause()
    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.get_info().allow_internet_access is False
    with pytest.raises(CommandExitException):
        resumed.commands.run(PROBE)
    resumed.kill()


def reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True
