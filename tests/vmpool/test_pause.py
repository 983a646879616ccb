"""LocalSandbox.pause and LocalSandbox.resume on both drivers: the microvm driver keeps the whole
VM (processes, their memory, files), bwrap keeps the files; what resume refuses. Real sandboxes
(QEMU under TCG on our machines)."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vmpool
from vmpool import LocalSandbox, PausedStateError, SandboxError, _vm_pause

CWD = "import os; print(os.getcwd())"  # a program runs in /tmp/run-<n>, n counted by the agent


def _state(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((directory / "state.json").read_text())
    return state


def _tamper(directory: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to state.json; the original, to put back."""
    original = _state(directory)
    state = json.loads(json.dumps(original))
    change(state)
    (directory / "state.json").write_text(json.dumps(state))
    return original


def _refused(directory: Path, match: str) -> None:
    def content() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in directory.iterdir()}

    before = content()
    with pytest.raises(PausedStateError, match=match):
        LocalSandbox.resume(directory)
    assert content() == before  # kept as it was, for another try


# -- bwrap: files only --------------------------------------------------------------------------

@pytest.mark.sandbox
def test_bwrap_keeps_the_files_and_starts_new_processes(sandboxes: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused" / "sandbox"
    with LocalSandbox.create("bwrap", tmp_size_mb=64) as sandbox:
        sandbox.files.write("/tmp/notes/a.txt", "kept\n")
        sandbox.commands.run("chmod 700 /tmp/notes && printf x > /tmp/script && chmod 755 /tmp/script "
                             "&& ln -s notes/a.txt /tmp/link && ln -s /usr/bin/python3 /tmp/python")
        assert sandbox.run_program(CWD).stdout == "/tmp/run-1\n"
        sandbox.pause(paused)
        assert not sandbox.is_running()
    assert stat.S_IMODE(paused.stat().st_mode) == 0o700
    state = _state(paused)
    assert (state["format"], state["driver"], state["saved"], state["template"]) == (1, "bwrap", "files", None)
    assert state["files"] == [{"name": "tmp.0.tar", "bytes": (paused / "tmp.0.tar").stat().st_size,
                               "restores": "/tmp"}]
    assert state["links"] == [{"path": "/tmp/python", "target": "/usr/bin/python3"}]  # unpack_dir refuses it
    assert state["options"]["tmp_size_mb"] == 64 and state["pause_s"] >= 0
    assert state["started_at"] <= state["paused_at"] and state["vmpool_version"]

    with LocalSandbox.resume(paused) as resumed:
        assert not paused.exists()
        assert resumed.files.read("/tmp/link") == "kept\n"
        assert resumed.files.get_info("/tmp/notes").mode == 0o700
        assert resumed.files.get_info("/tmp/script").mode == 0o755
        assert resumed.files.get_info("/tmp/python").symlink_target == "/usr/bin/python3"
        assert resumed.run_program(CWD).stdout == "/tmp/run-1\n"  # a new agent: processes are not kept
        assert resumed.commands.run("df -m /tmp | tail -1").stdout.split()[1] == "64"


@pytest.mark.sandbox
def test_bwrap_keeps_the_home_of_a_template_sandbox(sandboxes: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        sandbox.files.write("/home/user/.local/lib/note.txt", "home")
        sandbox.files.write("/tmp/scratch.txt", "tmp")
        sandbox.pause(paused)
    state = _state(paused)
    built = vmpool.ensure_template("base")
    assert state["template"] == {"name": "base", "hash": built.hash}
    assert [(file["name"], file["restores"]) for file in state["files"]] == [("tmp.0.tar", "/tmp"),
                                                                             ("home.0.tar", "/home/user")]
    with LocalSandbox.resume(paused) as resumed:
        assert resumed.files.read("/home/user/.local/lib/note.txt") == "home"
        assert resumed.files.read("/tmp/scratch.txt") == "tmp"
        assert resumed.commands.run("echo $HOME; stat -c %U /home/user/.local").stdout.split() == ["/home/user",
                                                                                                  "nobody"]


@pytest.mark.sandbox
def test_bwrap_splits_a_tree_too_large_for_one_message(sandboxes: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    listing = ("cd /home/user && find . -type d -printf '%p %m\\n' | sort && find . -type l -printf '%p %l\\n' "
               "| sort && find . -type f -exec stat -c '%n %a %Y %s' {} + | sort && find . -type f | sort | xargs sha256sum")
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        made = sandbox.commands.run(
            "cd /home/user && mkdir -p big/sub venv/bin && head -c 30000000 /dev/urandom > big/a.bin "
            "&& head -c 30000000 /dev/urandom > big/b.bin && echo small > big/sub/c.txt && chmod 751 big/a.bin "
            "&& touch -d @1000000000 big/b.bin && chmod 711 big/sub && ln -s ../a.bin big/sub/up "
            "&& ln -s /usr/bin/python3 venv/bin/python && ln -s big/sub/c.txt relative")
        assert made.exit_code == 0, made.stderr
        before = sandbox.commands.run(listing).stdout
        sandbox.pause(paused)
    state = _state(paused)
    roots = [file["restores"] for file in state["files"]]
    assert roots[0] == "/tmp" and roots.count("/home/user/big") == 2  # a.bin and b.bin apart
    assert roots[1] == "/home/user" and set(roots) >= {"/home/user/big/sub", "/home/user/venv"}
    assert all(file["bytes"] < 48 * 2**20 for file in state["files"])
    assert sorted((link["path"], link["target"]) for link in state["links"]) == [
        ("/home/user/big/sub/up", "../a.bin"), ("/home/user/venv/bin/python", "/usr/bin/python3")]
    with LocalSandbox.resume(paused) as resumed:
        assert resumed.commands.run(listing).stdout == before  # modes, files' times, links, contents


@pytest.mark.sandbox
def test_a_dead_sandbox_cannot_be_paused(sandboxes: None, tmp_path: Path) -> None:
    sandbox = LocalSandbox.create("bwrap")
    sandbox.kill()
    with pytest.raises(SandboxError, match="not running"):
        sandbox.pause(tmp_path / "paused")
    assert not (tmp_path / "paused").exists()


@pytest.mark.sandbox
def test_a_failed_bwrap_pause_leaves_the_sandbox_running(sandboxes: None, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with LocalSandbox.create("bwrap", tmp_size_mb=80) as sandbox:
        with pytest.raises(FileExistsError):
            sandbox.pause(tmp_path / "taken")
        sandbox.commands.run("mkfifo /tmp/fifo")
        with pytest.raises(OSError, match="/tmp/fifo is neither a file") as refused:
            sandbox.pause(tmp_path / "fifo")
        assert refused.value.errno == errno.EINVAL
        sandbox.commands.run("rm /tmp/fifo && head -c 51000000 /dev/urandom > /tmp/big")
        with pytest.raises(OSError, match="/tmp/big has 51000000 bytes, .* keeps running") as too_big:
            sandbox.pause(tmp_path / "big")
        assert too_big.value.errno == errno.EFBIG
        assert not (tmp_path / "fifo").exists() and not (tmp_path / "big").exists()
        assert sandbox.run_program("print(1)").stdout == "1\n"


@pytest.mark.sandbox
def test_resume_refuses_what_it_cannot_resume(sandboxes: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    with LocalSandbox.create("bwrap") as sandbox:
        sandbox.files.write("kept.txt", "yes")
        sandbox.pause(paused)

    original = _tamper(paused, lambda state: state.update(format=99, vmpool_version="9.9"))
    _refused(paused, "state format 99, and this vmpool .* reads format 1: resume it with the vmpool "
                     "version that paused it \\(9.9\\)")
    _tamper(paused, lambda state: state.update(original, template={"name": "base", "hash": "0" * 64}))
    _refused(paused, "template 'base' build 0000000000000000, which is not built here any more")
    _tamper(paused, lambda state: state.update(original, driver_state={"smuggled": 1}, saved="memory",
                                               files=[{**original["files"][0], "restores": None}]))
    _refused(paused, "the bwrap driver cannot resume a saved memory")
    _tamper(paused, lambda state: state.update(original, files=[{"name": "../x", "bytes": 1}]))
    _refused(paused, "outside its directory")
    _tamper(paused, lambda state: state.update(original, options={"python": None}))
    _refused(paused, "malformed")
    _tamper(paused, lambda state: state.update(original, files=[{**original["files"][0], "restores": "/etc"}]))
    _refused(paused, "tmp.0.tar cannot restore '/etc'")
    _tamper(paused, lambda state: state.update(original, links=[{"path": "/etc/x", "target": "/"}]))
    _refused(paused, "cannot make a link at '/etc/x'")
    (paused / "state.json").write_text(json.dumps(original))
    with open(paused / "tmp.0.tar", "ab") as tar:
        tar.write(b"\0")
    _refused(paused, "damaged: tmp.0.tar has %d bytes, %d were saved"
             % (original["files"][0]["bytes"] + 1, original["files"][0]["bytes"]))
    os.truncate(paused / "tmp.0.tar", original["files"][0]["bytes"])
    os.rename(paused / "state.json", paused / "elsewhere.json")
    _refused(paused, "not a paused sandbox: it has no state.json")
    os.rename(paused / "elsewhere.json", paused / "state.json")
    with pytest.raises(FileNotFoundError):
        LocalSandbox.resume(tmp_path / "nothing")

    with LocalSandbox.resume(paused) as resumed:  # untouched again: it resumes
        assert resumed.files.read("kept.txt") == "yes"
    assert not paused.exists()


# -- microvm: memory --------------------------------------------------------------------------

def _guest_facts(sandbox: LocalSandbox) -> tuple[str, float, float]:
    """The guest kernel's boot id, its uptime and its wall clock."""
    out = sandbox.commands.run("cat /proc/sys/kernel/random/boot_id /proc/uptime; date +%s.%N").stdout.split()
    return out[0], float(out[1]), float(out[3])


@pytest.mark.microvm
def test_microvm_keeps_the_running_vm(microvm: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    with LocalSandbox.create("microvm", tmp_size_mb=100) as sandbox:
        sandbox.files.write("/tmp/data/kept.txt", "in guest memory")
        sandbox.files.write("/home/user/kept.txt", "in the home")
        assert sandbox.run_program(CWD).stdout == "/tmp/run-1\n"
        boot_id, uptime, _ = _guest_facts(sandbox)
        before = time.monotonic()
        sandbox.pause(paused)
        assert not sandbox.is_running()
        assert not sandbox._process.run_dir.exists()  # type: ignore[attr-defined]  # QEMU gone
    state = _state(paused)
    assert (state["driver"], state["saved"], state["template"]["name"]) == ("microvm", "memory", "base")
    memory = paused / _vm_pause.MEMORY_FILE
    assert state["files"] == [{"name": memory.name, "bytes": memory.stat().st_size, "restores": None}]
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600
    assert state["driver_state"]["qemu"] and state["driver_state"]["accelerator"] in ("kvm", "tcg")

    time.sleep(3)  # the guest's clocks stand still meanwhile; resume sets its wall clock
    with LocalSandbox.resume(paused) as resumed:
        assert not paused.exists()
        assert resumed.files.read("/tmp/data/kept.txt") == "in guest memory"
        assert resumed.files.read("/home/user/kept.txt") == "in the home"
        # the same kernel, continued: not rebooted, and its uptime without the time paused
        resumed_boot_id, resumed_uptime, clock = _guest_facts(resumed)
        assert resumed_boot_id == boot_id
        assert 0 < resumed_uptime - uptime < time.monotonic() - before - 2.5
        assert abs(clock - time.time()) < 5
        # the same agent process, whose memory counted the runs before the pause
        assert resumed.run_program(CWD).stdout == "/tmp/run-2\n"
        assert resumed.commands.run("df -m /tmp | tail -1").stdout.split()[1] == "100"
        resumed.pause(paused)  # a resumed VM pauses like any other
    with LocalSandbox.resume(paused) as again:
        assert again.run_program(CWD).stdout == "/tmp/run-3\n"
        assert _guest_facts(again)[0] == boot_id


def _processes(sandbox: LocalSandbox) -> Any:
    processes = getattr(sandbox, "processes", None)
    if processes is None:
        pytest.skip("needs background processes (LocalSandbox.processes, agent protocol v2): "
                    "without them the agent kills what a command leaves running")
    return processes


@pytest.mark.microvm
def test_microvm_keeps_a_background_process_and_its_memory(microvm: None, tmp_path: Path) -> None:
    holder = ("import sys, uuid\nsecret = uuid.uuid4().hex\nprint(secret, flush=True)\n"
              "for line in sys.stdin:\n    print(secret, line.strip(), flush=True)\n")
    with LocalSandbox.create("microvm") as sandbox:
        sandbox.files.write("/tmp/holder.py", holder)
        handle = _processes(sandbox).start("python3 /tmp/holder.py", stdin=True)
        secret = handle.read_line(timeout=60)  # drawn by the process, held only in its memory
        assert secret and len(secret) == 32
        sandbox.pause(tmp_path / "paused")
    with LocalSandbox.resume(tmp_path / "paused") as resumed:
        attached = resumed.processes.connect(handle.pid)
        attached.send_stdin("still there?\n")
        assert attached.read_line(timeout=60) == "%s still there?" % secret
        assert [info.pid for info in resumed.processes.list() if info.running] == [handle.pid]
        attached.kill()


@pytest.mark.slow
@pytest.mark.microvm
def test_microvm_keeps_a_jupyter_kernel_and_its_variables(microvm: None, tmp_path: Path) -> None:
    def execute(process: Any, request_id: str, code: str) -> list[dict[str, Any]]:
        process.send_stdin(json.dumps({"op": "execute", "id": request_id, "code": code}) + "\n")
        answers = []
        while not answers or answers[-1]["type"] not in ("end", "failed"):
            line = process.read_line(timeout=180)
            assert line is not None, answers
            message = json.loads(line)
            if message.get("id") == request_id:
                answers.append(message)
        return answers

    with LocalSandbox.create("microvm", template="code-interpreter") as sandbox:
        bridge = _processes(sandbox).start("python3 %s/_guest_kernel.py" % sandbox.guest_dir, stdin=True)
        assert json.loads(bridge.read_line(timeout=300) or "{}").get("type") == "ready"
        answers = execute(bridge, "before", "import os\nanswer = 6 * 7\nkernel = os.getpid()")
        assert answers[-1]["type"] == "end" and len(answers) == 1, answers
        sandbox.pause(tmp_path / "paused")
    with LocalSandbox.resume(tmp_path / "paused") as resumed:
        bridge = resumed.processes.connect(bridge.pid)
        answers = execute(bridge, "after", "answer, kernel == os.getpid()")
        assert answers[0]["data"]["text/plain"] == "(42, True)", answers  # the same kernel, its variables


@pytest.mark.microvm
def test_microvm_resume_refuses_another_build_or_qemu(microvm: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    with LocalSandbox.create("microvm") as sandbox:
        sandbox.files.write("kept.txt", "yes")
        sandbox.pause(paused)
    original = _state(paused)

    def driver_state(**changes: Any) -> Callable[[dict[str, Any]], None]:
        return lambda state: state.update(original, driver_state={**original["driver_state"], **changes})

    _tamper(paused, driver_state(qemu="1.0.0"))
    _refused(paused, "QEMU was upgraded or downgraded since the pause \\(qemu: 1.0.0 then")
    _tamper(paused, driver_state(image=[1, 2, 3]))
    _refused(paused, "root image was rebuilt")
    _tamper(paused, driver_state(initrd="0123.cpio.gz"))
    _refused(paused, "guest files \\(agent, init\\) changed since the pause")
    argv = list(original["driver_state"]["argv"])
    argv[argv.index("-m") + 1] = "2048"  # another memory size
    _tamper(paused, driver_state(argv=argv))
    _refused(paused, "QEMU command line differs")
    other = "kvm" if original["driver_state"]["accelerator"] == "tcg" else "tcg"
    _tamper(paused, driver_state(accelerator=other))
    _refused(paused, "paused running under %s" % other.upper())
    _tamper(paused, driver_state(memory_file="/etc/passwd"))
    _refused(paused, "not written by this vmpool")
    _tamper(paused, driver_state(extra=True))
    _refused(paused, "malformed")

    (paused / "state.json").write_text(json.dumps(original))
    with LocalSandbox.resume(paused) as resumed:
        assert resumed.files.read("kept.txt") == "yes"


@pytest.mark.microvm
def test_microvm_memory_qemu_cannot_load_fails_and_keeps_the_directory(microvm: None, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    with LocalSandbox.create("microvm") as sandbox:
        sandbox.pause(paused)
    memory = paused / _vm_pause.MEMORY_FILE
    size = memory.stat().st_size
    with open(memory, "r+b") as handle:  # same size, garbage: only QEMU can tell
        handle.write(b"\xff" * 4096)
    with pytest.raises(SandboxError, match="QEMU could not restore"):
        LocalSandbox.resume(paused)
    assert memory.stat().st_size == size and (paused / "state.json").exists()


@pytest.mark.microvm
def test_microvm_pause_that_cannot_be_written_leaves_the_vm_running(
        microvm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_vm_pause, "SAVE_TIMEOUT_S", -1.0)  # the migration "does not finish in time"
    with LocalSandbox.create("microvm") as sandbox:
        sandbox.files.write("kept.txt", "still here")
        with pytest.raises(OSError, match="could not save the VM \\(it keeps running\\)"):
            sandbox.pause(tmp_path / "paused")
        assert not (tmp_path / "paused").exists()
        assert sandbox.files.read("kept.txt") == "still here"
        assert sandbox.run_program("print(6 * 7)").stdout == "42\n"
        monkeypatch.setattr(_vm_pause, "SAVE_TIMEOUT_S", 600.0)
        sandbox.pause(tmp_path / "paused")  # and it can still be paused for real
    with LocalSandbox.resume(tmp_path / "paused") as resumed:
        assert resumed.files.read("kept.txt") == "still here"


@pytest.mark.microvm
def test_microvm_dead_sandbox_cannot_be_paused(microvm: None, tmp_path: Path) -> None:
    sandbox = LocalSandbox.create("microvm")
    sandbox.kill()
    with pytest.raises(SandboxError, match="not running"):
        sandbox.pause(tmp_path / "paused")
    assert not (tmp_path / "paused").exists()

