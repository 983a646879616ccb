"""The host side of protocol v2 (vmpool._client, LocalSandbox's use of it) on real bubblewrap
sandboxes: replies matched by id, abandoned calls, Ctrl-C, agent death, the hello."""

import gc
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmpool
from vmpool import Limits, LocalSandbox, SandboxError
from vmpool._client import AgentClient
from vmpool._process import PopenSandboxProcess, spawn
from vmpool._sandbox import wire_limits

pytestmark = pytest.mark.sandbox

AGENT = Path(vmpool.__file__).resolve().parent / "_agent.py"


@pytest.fixture
def sandbox() -> Iterator[LocalSandbox]:
    with LocalSandbox.create("bwrap") as created:
        yield created


def interrupt_main_after(seconds: float) -> threading.Timer:
    """Ctrl-C for the main thread (this test) after `seconds`."""
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    return timer


def test_an_abandoned_reply_goes_to_nobody(sandbox: LocalSandbox) -> None:
    late = sandbox._client.submit("run_program", 30, code="import time; time.sleep(0.5); print('late')",
                                  limits=wire_limits(Limits()))
    late.abandon()
    assert sandbox.run_program("print('mine')").stdout == "mine\n"  # queued behind, its own reply
    sandbox.ping()
    assert sandbox.is_running()


def test_ctrl_c_while_waiting_for_a_process_harms_nothing(sandbox: LocalSandbox) -> None:
    handle = sandbox.processes.start("sleep 1.5; echo done")
    timer = interrupt_main_after(0.3)
    with pytest.raises(KeyboardInterrupt):
        handle.wait(30)
    timer.join()
    assert sandbox.is_running() and handle.exit_code is None
    assert sandbox.run_program("print(1)").stdout == "1\n"
    assert handle.wait(30).stdout == "done\n"


def test_ctrl_c_during_a_program_still_kills_the_sandbox(sandbox: LocalSandbox) -> None:
    # the agent would go on running the program while nobody waits, and the next program's
    # time limit would not hold: the sandbox is in doubt
    timer = interrupt_main_after(0.3)
    with pytest.raises(KeyboardInterrupt):
        sandbox.run_program("import time; time.sleep(5)")
    timer.join()
    assert not sandbox.is_running()


def test_concurrent_callers_get_their_own_replies(sandbox: LocalSandbox) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            if number % 2:
                results[number] = sandbox.run_program("print(%d)" % number).stdout
            else:
                results[number] = sandbox.processes.start("echo %d" % number).wait(30).stdout
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == {number: "%d\n" % number for number in range(12)}


def test_agent_death_fails_every_pending_call(sandbox: LocalSandbox) -> None:
    handles = [sandbox.processes.start("sleep 60") for _ in range(2)]
    failures: list[BaseException] = []

    def program() -> None:
        try:
            sandbox.run_program("import time; time.sleep(60)", Limits(wall_time_s=60))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=program)
    thread.start()
    time.sleep(0.5)
    agent = sandbox._process.agent_host_pid()
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    thread.join(30)
    assert len(failures) == 1 and isinstance(failures[0], SandboxError)
    for handle in handles:
        with pytest.raises(SandboxError):
            handle.wait(30)
    assert not sandbox.is_running()


def test_a_dropped_sandbox_is_killed_even_with_processes_running() -> None:
    sandbox = LocalSandbox.create("bwrap")
    sandbox.processes.start("sleep 60", on_stdout=print)
    process = sandbox._process
    finalizer = weakref.ref(sandbox)
    del sandbox
    gc.collect()
    assert finalizer() is None  # the reader thread did not keep it alive
    assert not process.alive()


def test_the_handshake_skips_what_precedes_the_hello() -> None:
    # the end of a line the agent was writing to a previous host (device channels) comes first
    script = "printf 'ail\", \"id\": 3}\\n{broken'; printf '\\n'; exec %s -I -B %s" % (sys.executable, AGENT)
    popen, stderr = spawn(["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"})
    process = PopenSandboxProcess(popen, stderr)
    try:
        client = AgentClient(process, "test agent")
        assert client.handshake(30)["protocol"] == vmpool.PROTOCOL_VERSION
        assert client.call("ping", 30) == {}
        client.close()
    finally:
        process.kill()
