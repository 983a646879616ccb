"""What is particular to the microvm driver: accelerator choice, snapshot clones, confinement
of QEMU, discarding VMs, reaping leftovers. Real QEMU (TCG on our machines)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmpool
from vmpool import Limits, LocalSandbox, SandboxError, SandboxPool, get_driver, resolve_driver
from vmpool import _microvm, _qemu, _vm_host, _vm_machine
from vmpool._driver import StartOptions
from vmpool._templates import load_spec

pytestmark = pytest.mark.microvm


def test_accelerator_is_explained() -> None:
    accel = _qemu.detect_accelerator()
    assert accel.name in ("kvm", "tcg") and accel.reason
    if os.path.isdir("/sys/module/kvm_pvm"):  # our machines: PVM is not hardware virtualization
        assert (accel.name, accel.machine) == ("tcg", "q35")
        assert "PVM" in accel.reason
    if accel.name == "tcg":
        assert get_driver("microvm").auto_reason() is not None


def test_auto_picks_microvm_only_with_hardware_virtualization(microvm: None) -> None:
    expected = "microvm" if _qemu.detect_accelerator().hardware else "bwrap"
    assert resolve_driver("auto") == expected
    assert resolve_driver("microvm") == "microvm"  # asked for by name: emulation is fine


def test_vmpool_accel_forces_emulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_ACCEL", "tcg")
    assert _qemu.detect_accelerator().name == "tcg"


def test_clones_of_one_snapshot_do_not_share_randomness_or_a_stale_clock(microvm: None) -> None:
    code = "import os, random, time; print(os.urandom(16).hex(), random.random(), time.time())"
    seen = []
    for _ in range(2):
        with LocalSandbox.create("microvm") as sandbox:
            result = sandbox.run_program(code)
            assert result.status == "ok", result
            urandom, rand, clock = result.stdout.split()
            seen.append((urandom, rand))
            assert abs(float(clock) - time.time()) < 30
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


def test_guest_has_no_network_device_and_programs_are_unprivileged(microvm: None) -> None:
    with LocalSandbox.create("microvm") as sandbox:
        result = sandbox.commands.run("ls /sys/class/net; id -u; cat /proc/1/environ > /dev/null || echo denied")
    assert result.stdout.split() == ["lo", "65534", "denied"], result


def test_qemu_runs_confined(microvm: None) -> None:
    with LocalSandbox.create("microvm") as sandbox:
        qemu = _qemu_pid_of(sandbox)
        status = Path("/proc/%d/status" % qemu).read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Seccomp"].strip() == "2"  # QEMU's own -sandbox filter
        if os.geteuid() == 0:
            assert fields["Uid"].split()[0] == "65534"
        for namespace in ("net", "pid", "mnt", "user"):
            assert os.readlink("/proc/%d/ns/%s" % (qemu, namespace)) != os.readlink("/proc/self/ns/%s" % namespace)


def _qemu_pid_of(sandbox: LocalSandbox) -> int:
    pid = sandbox._process.qemu_pid()  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


def test_a_timed_out_vm_is_discarded(microvm: None) -> None:
    sandbox = LocalSandbox.create("microvm")
    try:
        result = sandbox.run_program("while True: pass", Limits(wall_time_s=2))
        assert result.status == "timeout"
        assert not sandbox.is_running()
        assert not sandbox._process.run_dir.exists()  # type: ignore[attr-defined]
    finally:
        sandbox.kill()


def test_a_vm_whose_agent_died_is_a_sandbox_error(microvm: None) -> None:
    with LocalSandbox.create("microvm") as sandbox:
        with pytest.raises(SandboxError):
            # as root in the guest only init could do this; a program is uid 65534, so it ends
            # the VM the way a kernel crash would: by killing QEMU from the host
            os.kill(_qemu_pid_of(sandbox), 9)
            sandbox.run_program("print(1)")
        assert not sandbox.is_running()


def test_leftover_qemu_of_a_dead_owner_is_reaped() -> None:
    def fake_qemu(owner: str) -> subprocess.Popen[bytes]:  # a process that looks like our QEMU
        return subprocess.Popen(["/usr/bin/qemu-system-x86_64", "-c", "import time; time.sleep(600)",
                                 _vm_host.OWNER_PREFIX + owner], executable=sys.executable)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    leftover, bystander = fake_qemu(dead), fake_qemu(str(os.getpid()))
    try:
        time.sleep(0.2)
        _vm_host.reap_leftovers()  # (another vmpool process starting now may beat it to it)
        assert leftover.wait(timeout=10) == -9
        assert bystander.poll() is None  # its owner (this process) is alive
    finally:
        for process in (leftover, bystander):
            process.kill()
            process.wait()


def test_pool_keeps_ready_vms_and_replaces_a_timed_out_one(microvm: None) -> None:
    with SandboxPool(size=2, driver="microvm") as pool:
        assert len(pool._idle) == 2
        with pool.lease() as sandbox:
            assert sandbox.run_program("while True: pass", Limits(wall_time_s=1)).status == "timeout"
            assert not sandbox.is_running()
        deadline = time.monotonic() + 60
        while len(pool._idle) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pool._idle) == 2 and sandbox not in pool._idle
        with pool.lease() as fresh:
            assert fresh.run_program("print(1)").stdout == "1\n"


@pytest.fixture
def private_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache folder of the test's own that shares the built templates (no rebuild), so that
    tests which damage snapshots or record KVM failures do not disturb other runs."""
    built = vmpool.ensure_template("base")
    folder = Path(tempfile.mkdtemp(prefix="vmpool-test-cache-"))
    os.chmod(folder, 0o755)  # QEMU (uid 65534) reads through it
    (folder / "templates").mkdir(mode=0o755)
    (folder / "templates" / built.dir.name).symlink_to(built.dir)
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_kvm_guest_that_does_not_boot_falls_back_to_tcg_and_says_why(microvm: None, private_cache: Path) -> None:
    if _qemu.detect_accelerator().hardware:
        pytest.skip("this host has hardware virtualization: a forced KVM boot would succeed")
    script = ("from vmpool import LocalSandbox\n"
              "with LocalSandbox.create('microvm') as sb:\n"
              "    print(sb.isolation)\n"
              "    print(sb.run_program('print(6 * 7)').stdout, end='')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, VMPOOL_ACCEL="kvm"))
    assert done.returncode == 0, done.stderr
    isolation, answer = done.stdout.splitlines()
    assert "TCG emulation" in isolation and "a KVM guest did not boot on this host" in isolation
    assert "to try KVM again" in isolation
    assert answer == "42"
    assert (private_cache / "kvm-boot-check.json").exists()  # later processes do not try again


def test_a_corrupt_snapshot_is_replaced(microvm: None, private_cache: Path) -> None:
    with LocalSandbox.create("microvm"):
        pass  # the snapshot exists now
    path = _microvm.snapshot_path(vmpool.ensure_template("base"))
    assert path is not None and path.exists() and path.is_relative_to(private_cache)
    damaged = path.with_suffix(".damaged")
    damaged.write_bytes(path.read_bytes()[: 1 << 20])  # a truncated copy, swapped in atomically
    os.replace(damaged, path)
    with LocalSandbox.create("microvm") as sandbox:  # QEMU rejects it; a new snapshot is made
        assert sandbox.run_program("print(1)").stdout == "1\n"
    assert path.stat().st_size > 1 << 20


def test_a_new_snapshot_replaces_the_templates_older_ones(microvm: None, private_cache: Path) -> None:
    folder = private_cache / "snapshots"
    folder.mkdir()
    older, other = folder / "base-0123456789abcdef.vmstate", folder / "other-0123456789abcdef.vmstate"
    older.write_bytes(b"from an older agent")
    other.write_bytes(b"another template's")
    with LocalSandbox.create("microvm") as sandbox:
        assert sandbox.run_program("print(1)").stdout == "1\n"
    names = sorted(path.name for path in folder.glob("*.vmstate"))
    assert len(names) == 2 and names[0].startswith("base-") and names[1] == other.name
    assert not older.exists()


def test_a_template_that_asks_for_network_gets_one(microvm: None, private_cache: Path) -> None:
    # base's image with vm.network on: QEMU user-mode networking and an eth0 in the guest
    base = vmpool.ensure_template("base")
    networked = dataclasses.replace(base, spec=base.spec.model_copy(
        update={"vm": base.spec.vm.model_copy(update={"network": True})}))
    machine = _vm_machine.Machine(_qemu.qemu_binary() or "", shutil.which("bwrap") or "", networked)
    sandbox = LocalSandbox("microvm", "test", machine.restore(machine.snapshot(), StartOptions()), 30.0)
    try:
        assert sandbox.commands.run("ls /sys/class/net").stdout.split() == ["eth0", "lo"]
        # the package registry is the one place our machines may reach
        result = sandbox.run_program("import socket\nsocket.create_connection(('deb.debian.org', 80), timeout=20).close()\nprint('reached')")
        assert result.stdout == "reached\n", result
    finally:
        sandbox.kill()


def test_run_folders_live_only_in_a_private_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / ("vmpool-microvm-%d" % os.geteuid())
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)  # someone could swap a run folder for a symlink before root chowns it
    with pytest.raises(vmpool.DriverUnavailableError, match="not a private folder"):
        _vm_host.new_run_dir(65534)
    root.rmdir()
    root.symlink_to(tmp_path)
    with pytest.raises(vmpool.DriverUnavailableError, match="not a private folder"):
        _vm_host.run_root()
    root.unlink()
    assert _vm_host.new_run_dir(None).parent == root


def test_a_temp_folder_too_long_for_unix_sockets_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(vmpool.DriverUnavailableError, match="set TMPDIR to a shorter folder"):
        _vm_host.new_run_dir(None)


def test_tmp_must_fit_the_vm(microvm: None) -> None:
    with pytest.raises(vmpool.DriverUnavailableError, match="tmp_size_mb=4096 does not fit"):
        LocalSandbox.create("microvm", tmp_size_mb=4096)
    with LocalSandbox.create("microvm", tmp_size_mb=64) as sandbox:
        assert sandbox.commands.run("df -m /tmp | tail -1").stdout.split()[1] == "64"


FILL_THEN_EXHAUST = """
import os
for folder in ("/tmp", os.environ["HOME"]):
    try:
        for index in range(100000):
            with open(os.path.join(folder, "fill-%d" % index), "wb") as handle:
                for _ in range(8):
                    handle.write(b"x" * (1 << 20))  # small writes: the program itself stays small
    except OSError as exc:
        print(folder, "full:", exc.strerror, flush=True)
blocks = []
while True:
    blocks.append(b"y" * (8 << 20))
"""


def test_filling_tmp_and_the_home_leaves_the_agent_its_memory(microvm: None) -> None:
    # Both are tmpfs, in RAM, and ending the program frees none of it: were they together as
    # large as the memory the agent has, the OOM killer would end the agent after the program,
    # and the VM with it (a program turning its own failure into a broken sandbox).
    memory = load_spec("base").vm.memory_mib
    with LocalSandbox.create("microvm", tmp_size_mb=memory // 2) as sandbox:
        result = sandbox.run_program(FILL_THEN_EXHAUST, Limits(wall_time_s=120, memory_mb=8192))
        assert result.status == "oom", result
        assert "/tmp full: No space left on device" in result.stdout
        assert "/home/user full: No space left on device" in result.stdout
        after = sandbox.run_program("import os; print(sorted(os.listdir('/tmp')), os.listdir(os.environ['HOME']))")
        assert after.status == "ok" and after.stdout == "['run-2'] ['.local']\n", after


@pytest.mark.slow
def test_a_template_with_files_env_and_a_start_command(microvm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # built for real (debootstrap, ~40 s) into a cache of its own, then deleted
    folder = Path(tempfile.mkdtemp(prefix="vmpool-test-cache-"))
    os.chmod(folder, 0o755)  # QEMU (uid 65534) reads through it
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(folder))
    spec = folder / "features.yaml"
    spec.write_text(
        "name: features\n"
        "description: a test template\n"
        "apt: [python3]\n"
        "files:\n"
        "  - {path: /etc/vmpool-test.txt, content: \"from the spec\\n\"}\n"
        "env: {GREETING: hello}\n"
        "start: exec sleep 100000\n")
    try:
        with LocalSandbox.create("microvm", template=str(spec)) as sandbox:
            probe = ("import os\n"
                     "print(open('/etc/vmpool-test.txt').read().strip(), os.environ['GREETING'])\n"
                     "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
                     "    argv = open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\\0')\n"
                     "    if argv[0] == b'sleep':\n"
                     "        print(os.stat('/proc/' + pid).st_uid, b' '.join(argv).decode().strip())\n")
            for _ in range(2):  # the root-owned start command survives the sweep after each program
                result = sandbox.run_program(probe)
                assert result.status == "ok", result
                assert result.stdout.splitlines() == ["from the spec hello", "0 sleep 100000"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
