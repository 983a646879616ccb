"""The vmpool service: where its socket lives, `vmpool serve` as a real process shared by
client processes, leases enforced by its reaper, and the in-process service that dies with its
process."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpool import Sandbox, SandboxException, SandboxNotFoundException, SandboxQuery
from vmpool._service_client import ServiceClient
from vmpool._service_paths import default_socket, private_dir

from .service_support import Serve, pid_alive, private_folder, run_client, start_client, wait_until


@pytest.fixture
def folder() -> Iterator[Path]:
    with private_folder() as path:
        yield path


@pytest.fixture
def serve(folder: Path, sandboxes: None) -> Iterator[Serve]:
    server = Serve(folder / "s.sock", VMPOOL_DRIVER="bwrap")
    yield server
    server.stop()


def test_default_socket(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.delenv("VMPOOL_SERVICE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    assert default_socket() == folder / "vmpool" / "service.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket() == Path("/tmp/vmpool-%d/service.sock" % os.geteuid())
    monkeypatch.setenv("VMPOOL_SERVICE", str(folder / "x.sock"))
    assert default_socket() == folder / "x.sock"


def test_socket_folder_must_be_private(folder: Path) -> None:
    assert private_dir(folder / "new") == folder / "new"
    assert stat.S_IMODE(os.stat(folder / "new").st_mode) == 0o700
    os.chmod(folder / "new", 0o750)
    with pytest.raises(SandboxException, match="not a private folder .* could be hijacked"):
        private_dir(folder / "new")
    (folder / "link").symlink_to(folder / "elsewhere")
    (folder / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(SandboxException, match="link is not a private folder"):
        private_dir(folder / "link")


def test_an_unreachable_service_is_named(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("VMPOOL_SERVICE", str(folder / "nobody.sock"))
    with pytest.raises(SandboxException, match="vmpool service at %s does not answer .* `vmpool serve`"
                       % (folder / "nobody.sock")):
        Sandbox.create(template="base")
    with pytest.raises(SandboxException, match="nobody.sock"):
        Sandbox.connect("0123")


@pytest.mark.sandbox
def test_sandboxes_outlive_their_client_and_are_shared(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    created = run_client(
        "from vmpool import Sandbox\n"
        "sb = Sandbox.create(template='base', metadata={'owner': 'first'}, timeout=120)\n"
        "sb.files.write('/tmp/note.txt', 'left by the first process')\n"
        "print(sb.sandbox_id)\n", VMPOOL_SERVICE=str(serve.socket))
    sandbox_id = created.stdout.strip()

    second = run_client(
        "import json, sys\n"
        "from vmpool import Sandbox, SandboxQuery\n"
        "sb = Sandbox.connect(sys.argv[1] if len(sys.argv) > 1 else %r, timeout=60)\n"
        "listed = [i.sandbox_id for i in Sandbox.list(SandboxQuery(metadata={'owner': 'first'}))]\n"
        "info = sb.get_info()\n"
        "print(json.dumps({'note': sb.files.read('/tmp/note.txt'), 'listed': listed,\n"
        "                  'driver': info.driver, 'template': info.template_id}))\n" % sandbox_id,
        VMPOOL_SERVICE=str(serve.socket))
    assert json.loads(second.stdout) == {"note": "left by the first process", "listed": [sandbox_id],
                                         "driver": "bwrap", "template": "base"}

    monkeypatch.setenv("VMPOOL_SERVICE", str(serve.socket))
    assert Sandbox.kill(sandbox_id) is True
    with pytest.raises(SandboxNotFoundException, match=sandbox_id):
        Sandbox.get_info(sandbox_id)
    assert list(Sandbox.list(SandboxQuery(metadata={"owner": "first"}))) == []
    assert serve.stop() == 0
    assert "sandbox %s killed" % sandbox_id in serve.output()


@pytest.mark.sandbox
def test_the_sandbox_of_a_killed_client_is_reaped_when_its_timeout_runs_out(
        serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    client = start_client(
        "import time\n"
        "from vmpool import Sandbox\n"
        "sb = Sandbox.create(template='base', timeout=4)\n"
        "print(sb.sandbox_id, flush=True)\n"
        "time.sleep(600)\n", VMPOOL_SERVICE=str(serve.socket))
    assert client.stdout is not None
    sandbox_id = client.stdout.readline().strip()
    client.kill()  # SIGKILL: the client gets no chance to clean up
    client.wait()
    monkeypatch.setenv("VMPOOL_SERVICE", str(serve.socket))
    info = Sandbox.get_info(sandbox_id)
    assert info.state == "running"  # the service holds it, not the client

    def gone() -> bool:
        try:
            Sandbox.get_info(sandbox_id)
        except SandboxNotFoundException:
            return True
        return False

    assert wait_until(gone, timeout=15)
    assert datetime.now(timezone.utc) >= info.end_at  # not before its lease ran out
    assert "sandbox %s expired" % sandbox_id in serve.output()


@pytest.mark.sandbox
def test_serve_stops_on_sigint_and_kills_its_sandboxes(serve: Serve) -> None:
    run_client("from vmpool import Sandbox\nSandbox.create(template='base')\n",
               VMPOOL_SERVICE=str(serve.socket))
    assert serve.stop(signal.SIGINT) == 0
    output = serve.output()
    assert "SIGINT received: stopping" in output and "killed 1 running sandbox(es)" in output
    assert not serve.socket.exists()


@pytest.mark.sandbox
def test_a_second_service_on_the_same_socket_is_refused(serve: Serve) -> None:
    second = subprocess.run([sys.executable, "-c", "from vmpool._cli import main; main()", "serve",
                             "--socket", str(serve.socket)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "already listening on %s" % serve.socket in second.stderr
    assert ServiceClient(serve.socket).answers()  # the first one is untouched


@pytest.mark.sandbox
def test_an_in_process_service_dies_with_its_process(folder: Path, sandboxes: None) -> None:
    client = start_client(
        "import time\n"
        "from vmpool import Sandbox\n"
        "from vmpool import _service_client\n"
        "sb = Sandbox.create(template='base')\n"
        "local = _service_client._inprocess.manager.running(sb.sandbox_id).local\n"
        "print(local._process.agent_host_pid(), _service_client._inprocess.server.path, flush=True)\n"
        "time.sleep(600)\n", VMPOOL_SERVICE=None, XDG_RUNTIME_DIR=str(folder), VMPOOL_DRIVER="bwrap")
    assert client.stdout is not None
    pid_text, socket = client.stdout.readline().split()
    agent = int(pid_text)
    assert pid_alive(agent) and Path(socket).parent == folder / "vmpool"
    client.kill()
    client.wait()
    assert wait_until(lambda: not pid_alive(agent), timeout=10)
