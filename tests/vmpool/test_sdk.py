"""`vmpool.Sandbox`, the E2B-style SDK: lifecycle, listing and files, through the in-process
service, on the bwrap driver (test_sdk_microvm.py runs the same on microVMs)."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vmpool import (
    CommandExitException, EntryInfo, FileNotFoundException, InvalidArgumentException, NotFoundException, Sandbox,
    SandboxException, SandboxInfo, SandboxNotFoundException, SandboxQuery, SandboxState,
)

from .service_support import in_process, runtime_dir, tag  # noqa: F401 (fixtures)

pytestmark = pytest.mark.sandbox


@pytest.fixture(autouse=True)
def bwrap(in_process: None, monkeypatch: pytest.MonkeyPatch, sandboxes: None) -> None:
    monkeypatch.setenv("VMPOOL_DRIVER", "bwrap")


def test_lifecycle(tag: dict[str, str]) -> None:
    before = datetime.now(timezone.utc)
    sandbox = Sandbox.create(template="base", timeout=120, metadata=tag)
    info = sandbox.get_info()
    assert isinstance(info, SandboxInfo)
    assert (info.sandbox_id, info.template_id, info.state, info.metadata, info.driver) == (
        sandbox.sandbox_id, "base", SandboxState.RUNNING, tag, "bwrap")
    assert before <= info.started_at <= datetime.now(timezone.utc)
    assert abs((info.end_at - info.started_at) - timedelta(seconds=120)) < timedelta(seconds=2)
    assert info.envd_version and info.cpu_count >= 1 and info.memory_mb > 0
    assert "bubblewrap" in info.isolation
    assert sandbox.is_running()
    assert Sandbox.get_info(sandbox.sandbox_id) == sandbox.get_info()

    assert [found.sandbox_id for found in Sandbox.list(SandboxQuery(metadata=tag))] == [sandbox.sandbox_id]
    assert list(Sandbox.list(query=SandboxQuery(metadata=tag, state=[SandboxState.PAUSED]))) == []
    assert list(Sandbox.list(query=SandboxQuery(metadata={**tag, "other": "x"}))) == []

    assert sandbox.kill() is True
    assert not sandbox.is_running()
    assert sandbox.kill() is False and Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException, match=sandbox.sandbox_id):
        sandbox.get_info()
    with pytest.raises(NotFoundException, match="sandbox %s not found" % sandbox.sandbox_id):
        sandbox.files.read("/tmp/x")


def test_context_manager_and_class_level_calls(tag: dict[str, str]) -> None:
    with Sandbox(template="base", metadata=tag) as sandbox:  # E2B's older constructor form
        Sandbox.set_timeout(sandbox.sandbox_id, 30)
        end_at = Sandbox.get_info(sandbox.sandbox_id).end_at
        assert timedelta(seconds=28) < end_at - datetime.now(timezone.utc) <= timedelta(seconds=30)
    assert not sandbox.is_running()


def test_timeouts_are_leases(tag: dict[str, str]) -> None:
    sandbox = Sandbox.create(template="base", timeout=60, metadata=tag)
    sandbox.set_timeout(1)  # shorter than before: E2B's set_timeout resets the lease to now + t
    time.sleep(2.5)
    assert not sandbox.is_running()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id)

    sandbox = Sandbox.create(template="base", timeout=2, metadata=tag)
    same = Sandbox.connect(sandbox.sandbox_id, timeout=100)  # connecting extends the lease
    assert same.sandbox_id == sandbox.sandbox_id
    assert same.get_info().end_at - datetime.now(timezone.utc) > timedelta(seconds=95)
    time.sleep(3)
    assert same.is_running()
    again = sandbox.connect(timeout=10)  # never shortens it
    assert again.get_info().end_at - datetime.now(timezone.utc) > timedelta(seconds=90)
    same.kill()


def test_bad_timeouts_and_templates_are_refused(tag: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentException, match="template 'no-such-template'"):
        Sandbox.create(template="no-such-template")
    with pytest.raises(InvalidArgumentException, match="more than 0 and at most 86400"):
        Sandbox.create(template="base", timeout=0)
    with Sandbox.create(template="base", metadata=tag) as sandbox:
        with pytest.raises(InvalidArgumentException, match="timeout"):
            sandbox.set_timeout(-5)


def test_e2b_options(tag: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentException, match="does not support the E2B option mcp"):
        Sandbox.create(template="base", mcp={"exa": {"apiKey": "x"}})
    with pytest.raises(InvalidArgumentException, match="unknown option colour"):
        Sandbox.create(template="base", colour="blue")
    with Sandbox.create(template="base", metadata=tag, api_key="e2b_unused", request_timeout=5) as sandbox:
        assert sandbox.is_running()  # connection options of E2B's cloud are accepted and ignored


def test_pagination(tag: dict[str, str]) -> None:
    created = [Sandbox.create(template="base", metadata=tag) for _ in range(3)]
    try:
        paginator = Sandbox.list(SandboxQuery(metadata=tag), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next and paginator.next_token
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        with pytest.raises(SandboxException, match="No more items"):
            paginator.next_items()
        listed = [info.sandbox_id for info in first + second]
        assert listed == [sandbox.sandbox_id for sandbox in created]  # oldest first
        assert [info.sandbox_id for info in Sandbox.list(SandboxQuery(metadata=tag), limit=1)] == listed
        resumed = Sandbox.list(SandboxQuery(metadata=tag), next_token=paginator.next_token)
        assert resumed.next_token is None
    finally:
        for sandbox in created:
            sandbox.kill()


def test_files(tag: dict[str, str], tmp_path: Path) -> None:
    with Sandbox.create(template="base", metadata=tag) as sandbox:
        files = sandbox.files
        written = files.write("/tmp/dir/hello.txt", "héllo")
        assert isinstance(written, EntryInfo) and (written.name, written.type, written.size) == (
            "hello.txt", "file", 6)
        assert files.read("/tmp/dir/hello.txt") == "héllo"
        blob = bytes(range(256))
        files.write("/tmp/dir/blob.bin", blob)
        assert files.read("/tmp/dir/blob.bin", format="bytes") == bytearray(blob)
        assert b"".join(files.read("/tmp/dir/blob.bin", format="stream")) == blob

        entries = files.write_files([{"path": "/tmp/many/a", "data": "A"}, {"path": "/tmp/many/b", "data": b"B"}])
        assert [entry.path for entry in entries] == ["/tmp/many/a", "/tmp/many/b"]
        assert [entry.name for entry in files.list("/tmp/many")] == ["a", "b"]
        assert files.exists("/tmp/many/a") and not files.exists("/tmp/many/c")
        assert files.get_info("/tmp/many").type == "dir"
        assert files.rename("/tmp/many/a", "/tmp/many/c").path == "/tmp/many/c"
        assert files.make_dir("/tmp/many/sub") is True and files.make_dir("/tmp/many/sub") is False
        files.remove("/tmp/many")
        assert not files.exists("/tmp/many")

        with pytest.raises(FileNotFoundException) as caught:
            files.read("/tmp/missing")
        assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, NotFoundException)
        with pytest.raises(IsADirectoryError):
            files.read("/tmp/dir")

        (tmp_path / "tree" / "deep").mkdir(parents=True)
        (tmp_path / "tree" / "deep" / "x.txt").write_text("x")
        files.upload_dir(tmp_path / "tree", "/tmp/tree")
        assert files.read("/tmp/tree/deep/x.txt") == "x"
        files.download_dir("/tmp/tree", tmp_path / "back")
        assert (tmp_path / "back" / "deep" / "x.txt").read_text() == "x"


def test_one_user(tag: dict[str, str]) -> None:
    with Sandbox.create(template="base", metadata=tag) as sandbox:
        with pytest.raises(InvalidArgumentException, match="user='root' is not supported"):
            sandbox.files.read("/etc/passwd", user="root")


def test_internet_access_can_be_refused(tag: dict[str, str]) -> None:
    probe = "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\""
    with Sandbox.create(template="code-interpreter", metadata=tag, allow_internet_access=False) as sandbox:
        assert sandbox.get_info().allow_internet_access is False
        with pytest.raises(CommandExitException):
            sandbox.commands.run(probe)
    with Sandbox.create(template="code-interpreter", metadata=tag) as sandbox:
        assert sandbox.get_info().allow_internet_access is True
        if reachable(("1.1.1.1", 53)):  # the control: the same probe gets out when allowed
            assert sandbox.commands.run(probe).exit_code == 0
    with Sandbox.create(template="base", metadata=tag) as sandbox:
        assert sandbox.get_info().allow_internet_access is False  # base has no network at all
        with pytest.raises(CommandExitException):
            sandbox.commands.run(probe)


def reachable(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=3).close()
    except OSError:
        return False
    return True
