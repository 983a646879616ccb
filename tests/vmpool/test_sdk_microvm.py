"""The E2B-style SDK on the microvm driver: the same service, sandboxes that are VMs (QEMU under
TCG here, so these are slow)."""

from __future__ import annotations

import pytest

from vmpool import CommandExitException, Sandbox, SandboxQuery, SandboxState

from .service_support import in_process, runtime_dir, tag  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.microvm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def microvm_sdk(in_process: None, microvm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_DRIVER", "microvm")


def test_lifecycle_files_and_commands(tag: dict[str, str]) -> None:
    with Sandbox.create(template="base", metadata=tag, timeout=120) as sandbox:
        info = sandbox.get_info()
        assert (info.driver, info.template_id, info.cpu_count, info.memory_mb) == ("microvm", "base", 1, 512)
        assert info.isolation.startswith("microVM")
        assert [found.sandbox_id for found in Sandbox.list(SandboxQuery(metadata=tag))] == [sandbox.sandbox_id]

        sandbox.files.write("/tmp/data/x.txt", "in a VM\n")
        assert sandbox.files.read("/tmp/data/x.txt") == "in a VM\n"
        assert [entry.name for entry in sandbox.files.list("/tmp/data")] == ["x.txt"]

        assert sandbox.commands.run("cat /tmp/data/x.txt; uname -s").stdout == "in a VM\nLinux\n"
        with pytest.raises(CommandExitException) as raised:
            sandbox.commands.run("exit 4")
        assert raised.value.exit_code == 4
        handle = sandbox.commands.run("sleep 60", background=True)
        assert handle.pid in {process.pid for process in sandbox.commands.list()}
        assert handle.kill() is True
    assert not sandbox.is_running()
    assert list(Sandbox.list(SandboxQuery(metadata=tag, state=[SandboxState.RUNNING]))) == []
