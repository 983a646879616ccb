"""The shared driver conformance suite (vmpool.conformance), run on real QEMU microVMs.

On our machines this is QEMU with TCG emulation (no hardware virtualization): every sandbox is
restored from the template's snapshot, so the suite takes minutes, not the hour cold boots
would. scripts/setup.sh installs QEMU and builds the ``base`` template, so CI runs it.
"""

import socket
import time

import pytest

from vmpool import Limits, LocalSandbox, SandboxError
from vmpool import _qemu
from vmpool._sandbox import wire_limits
from vmpool._vm_machine import MicroVMProcess
from vmpool.conformance import *  # noqa: F401,F403  (fixtures and Test* classes)

pytestmark = pytest.mark.microvm


@pytest.fixture(scope="module")
def vmpool_driver(microvm: None) -> str:
    return "microvm"


def test_processes_survive_a_host_reconnect(microvm: None) -> None:
    """The device channel outlives host connections (a VM paused and resumed gets a new host):
    background processes run on and a new host reattaches to them; what the agent still owed
    the old host, and its serial requests not started yet, are dropped."""
    first = LocalSandbox.create("microvm")
    vm = first._process
    assert isinstance(vm, MicroVMProcess) and vm.sock is not None
    try:
        handle = first.processes.start("for i in $(seq 1 15); do echo $i; sleep 0.2; done; echo end")
        assert handle.read_line(120) == "1"
        limits = wire_limits(Limits(wall_time_s=30))
        running = first._client.submit("run_program", 60, code="import time; time.sleep(5)", limits=limits)
        queued = first._client.submit("run_program", 60, limits=limits,
                                      code="open('/tmp/queued-ran', 'w').write('it ran')")
        # the old host goes away: its reader stops, its connection to the agent's port closes
        first._finalizer.detach()  # the VM outlives this LocalSandbox
        first._client.close()
        vm.sock.shutdown(socket.SHUT_RDWR)
        assert first._client._reader is not None
        first._client._reader.join(30)
        vm.sock.close()
        for call in (running, queued):
            with pytest.raises(SandboxError):
                call.result(1)
        time.sleep(1.0)  # the agent notices a disconnect by polling; let it look
        vm.attach(_qemu.connect_unix(vm.run_dir / "agent.sock", time.monotonic() + 60, vm.alive))
        second = LocalSandbox("microvm", first.isolation, vm, 120.0)
        try:
            assert [info.pid for info in second.processes.list()] == [handle.pid]
            again = second.processes.connect(handle.pid)
            result = again.wait(120)
            assert result.exit_code == 0 and result.stdout.endswith("15\nend\n"), result
            # buffered while no host was connected, then live: at most a line written in the
            # moment the old host went away, before the agent noticed, is lost
            numbers = [int(word) for word in result.stdout.split()[:-1]]
            assert numbers == sorted(set(numbers)) and numbers[0] <= 4
            assert len(numbers) >= 16 - numbers[0] - 1
            assert second.run_program("print('new host')").stdout == "new host\n"
            assert not second.files.exists("/tmp/queued-ran")  # dropped with the old host
        finally:
            second.kill()
    finally:
        vm.kill()
