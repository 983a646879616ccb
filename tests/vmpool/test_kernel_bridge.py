"""The kernel bridge (vmpool/_guest_kernel.py) as a real subprocess with real ipykernel kernels:
executions, streams, errors, timeouts, envs, contexts, bad requests and shutdown."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpool._code import CHART_MIME, ExecutionBuilder

from ._kernel_bridge import BRIDGE, BridgeProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """One bridge for the tests that leave its default context usable."""
    running = BridgeProcess(cwd=str(tmp_path_factory.mktemp("bridge")),
                            env=dict(os.environ, MY_VAR="global"))
    ready = running.next(None)
    assert ready["type"] == "ready", (ready, running.stderr())
    yield running
    assert running.close() == 0
    assert running.garbage == [], "stdout carried something else than protocol lines"


def types(lines: list[dict]) -> list[str]:
    return [line["type"] for line in lines]


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as file:
                if file.read().split(") ")[1][0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


def test_ready_line_names_the_warm_default_context(tmp_path: Path) -> None:
    running = BridgeProcess(cwd=str(tmp_path))
    try:
        ready = running.next(None)
        assert ready["type"] == "ready" and ready["protocol"] == 1
        [context] = ready["contexts"]
        assert context["language"] == "python" and context["cwd"] == str(tmp_path)
        listed = running.request("list_contexts")
        assert listed["type"] == "contexts" and listed["contexts"] == ready["contexts"]
    finally:
        assert running.close() == 0


def test_state_is_kept_across_executions(bridge: BridgeProcess) -> None:
    first = bridge.execute("kept = 41")
    assert types(first) == ["end"] and first[-1]["timed_out"] is False
    second = bridge.execute("kept + 1")
    assert types(second) == ["result", "end"]
    assert second[0]["data"] == {"text/plain": "42"} and second[0]["is_main_result"] is True
    assert second[-1]["execution_count"] == first[-1]["execution_count"] + 1


def test_an_exception_is_an_error_line_with_traceback(bridge: BridgeProcess) -> None:
    lines = bridge.execute("x = 1\n1/0")
    assert types(lines) == ["error", "end"]
    error = lines[0]
    assert (error["name"], error["value"]) == ("ZeroDivisionError", "division by zero")
    assert "ZeroDivisionError" in error["traceback"] and "----> 2 1/0" in error["traceback"]
    assert "\x1b[" not in error["traceback"], "tracebacks are plain text"


def test_stdout_and_stderr_stream_in_order_as_they_are_printed(bridge: BridgeProcess) -> None:
    rid = bridge.send("execute", code=(
        "import sys, time\nprint('first')\ntime.sleep(0.5)\nprint('second', file=sys.stderr)\n"
        "time.sleep(0.5)\nprint('third')"))
    first = bridge.next(rid)
    arrived = time.monotonic()
    rest = bridge.lines(rid)
    ended = time.monotonic()
    lines = [first] + rest
    assert [(line["type"], line.get("text")) for line in lines] == [
        ("stdout", "first\n"), ("stderr", "second\n"), ("stdout", "third\n"), ("end", None)]
    assert ended - arrived > 0.7, "the first line must come while the code still runs"
    stamps = [line["timestamp"] for line in lines[:3]]
    assert stamps == sorted(stamps) and abs(stamps[0] / 1e9 - time.time()) < 60


def test_print_and_last_expression(bridge: BridgeProcess) -> None:
    lines = bridge.execute("print('hello')\n1 + 2")
    assert types(lines) == ["stdout", "result", "end"]
    assert lines[0]["text"] == "hello\n"
    execution = ExecutionBuilder("x").build([dict(line, id="x") for line in lines])
    assert execution.logs.stdout == ["hello\n"] and execution.text == "3"


def test_display_calls_are_results_that_are_not_main(bridge: BridgeProcess) -> None:
    lines = bridge.execute("from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))\n'last'")
    results = [line for line in lines if line["type"] == "result"]
    assert [(r["is_main_result"], r["data"].get("text/html")) for r in results] == [
        (False, "<b>hi</b>"), (True, None)]
    assert results[1]["data"]["text/plain"] == "'last'"


def test_a_matplotlib_plot_is_a_png_result_with_chart_data(bridge: BridgeProcess) -> None:
    lines = bridge.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()")
    [result] = [line for line in lines if line["type"] == "result"]
    assert result["is_main_result"] is False
    assert base64.b64decode(result["data"]["image/png"]).startswith(PNG_MAGIC)
    assert result["data"][CHART_MIME]["type"] == "line"


def test_timeout_interrupts_a_busy_loop_and_the_context_stays_usable(bridge: BridgeProcess) -> None:
    bridge.execute("survivor = 'still here'")
    started = time.monotonic()
    lines = bridge.execute("while True: pass", timeout=1)
    assert time.monotonic() - started < 10
    assert types(lines) == ["error", "end"] and lines[0]["name"] == "KeyboardInterrupt"
    assert lines[-1]["timed_out"] is True
    assert bridge.stdout_of("print(survivor)") == "still here\n"


def test_timeout_interrupts_a_sleep(bridge: BridgeProcess) -> None:
    started = time.monotonic()
    lines = bridge.execute("import time\ntime.sleep(100)", timeout=1)
    assert time.monotonic() - started < 10
    assert lines[-1]["timed_out"] is True and lines[0]["name"] == "KeyboardInterrupt"
    assert bridge.stdout_of("print('ok')") == "ok\n"


def test_envs_hold_for_one_execution_then_the_global_value_is_back(bridge: BridgeProcess) -> None:
    code = "import os; print(os.environ.get('MY_VAR'), os.environ.get('OTHER_VAR'))"
    assert bridge.stdout_of(code, envs={"MY_VAR": "scoped", "OTHER_VAR": "it's \"quoted\""}) == (
        "scoped it's \"quoted\"\n")
    assert bridge.stdout_of(code) == "global None\n"
    failing = bridge.execute("raise ValueError(__import__('os').environ['OTHER_VAR'])", envs={"OTHER_VAR": "v"})
    assert failing[0]["value"] == "v"
    assert bridge.stdout_of(code) == "global None\n", "restored after an error too"
    timed_out = bridge.execute("import time; time.sleep(30)", envs={"MY_VAR": "slept"}, timeout=0.5)
    assert timed_out[-1]["timed_out"] is True
    assert bridge.stdout_of(code) == "global None\n", "restored after a timeout too"


def test_contexts_keep_separate_state_and_their_own_cwd(bridge: BridgeProcess, tmp_path: Path) -> None:
    created = bridge.request("create_context", language="python", cwd=str(tmp_path))
    assert created["type"] == "context", created
    assert (created["language"], created["cwd"]) == ("python", str(tmp_path))
    context = created["context_id"]
    bridge.execute("shared = 1")
    lines = bridge.execute("shared", context_id=context)
    assert lines[0]["type"] == "error" and lines[0]["name"] == "NameError"
    assert bridge.stdout_of("import os; print(os.getcwd())", context_id=context) == str(tmp_path) + "\n"
    listed = bridge.request("list_contexts")["contexts"]
    assert {"context_id": context, "language": "python", "cwd": str(tmp_path)} in listed

    bridge.execute("mine = 1", context_id=context)
    assert bridge.request("restart_context", context_id=context)["type"] == "ok"
    assert bridge.execute("mine", context_id=context)[0]["name"] == "NameError"

    assert bridge.request("remove_context", context_id=context)["type"] == "ok"
    assert context not in {c["context_id"] for c in bridge.request("list_contexts")["contexts"]}
    gone = bridge.execute("1", context_id=context)
    assert types(gone) == ["failed"] and context in gone[0]["message"]


def test_contexts_run_at_once_and_one_context_runs_in_order(bridge: BridgeProcess) -> None:
    other = bridge.request("create_context")["context_id"]
    slow = bridge.send("execute", code="import time; time.sleep(3); print('slow')", context_id=other)
    queued = bridge.send("execute", code="print('queued')", context_id=other)
    assert bridge.stdout_of("print('fast')") == "fast\n"
    assert bridge._queue(slow).empty(), "the default context waited for the other one"
    assert bridge.lines(slow)[0]["text"] == "slow\n"
    assert bridge.lines(queued)[0]["text"] == "queued\n"
    bridge.request("remove_context", context_id=other)


def test_interrupt_stops_a_running_execution(bridge: BridgeProcess) -> None:
    context = bridge.request("create_context")["context_id"]
    rid = bridge.send("execute", code="import time; print('sleeping', flush=True); time.sleep(60)",
                      context_id=context)
    assert bridge.next(rid)["text"] == "sleeping\n"
    assert bridge.request("interrupt", context_id=context)["type"] == "ok"
    lines = bridge.lines(rid, timeout=20)
    assert types(lines) == ["error", "end"] and lines[0]["name"] == "KeyboardInterrupt"
    assert lines[-1]["timed_out"] is False
    bridge.request("remove_context", context_id=context)


def test_restart_ends_the_running_and_queued_executions(bridge: BridgeProcess) -> None:
    context = bridge.request("create_context")["context_id"]
    running = bridge.send("execute", code="import time; print('go', flush=True); time.sleep(60)",
                          context_id=context)
    queued = bridge.send("execute", code="print('never')", context_id=context)
    assert bridge.next(running)["text"] == "go\n"
    restart = bridge.send("restart_context", context_id=context)
    after = bridge.send("execute", code="print('after')", context_id=context)
    for rid in (running, queued):
        lines = bridge.lines(rid, timeout=20)
        assert [line["name"] for line in lines if line["type"] == "error"] == ["ContextRestarted"]
    assert bridge.next(restart)["type"] == "ok"
    after_lines = bridge.lines(after)
    assert after_lines[0].get("text") == "after\n", after_lines
    bridge.request("remove_context", context_id=context)


def test_a_dead_kernel_is_reported_and_restarted(bridge: BridgeProcess) -> None:
    context = bridge.request("create_context")["context_id"]
    bridge.execute("doomed = 1", context_id=context)
    lines = bridge.execute("import os; os._exit(3)", context_id=context)
    assert types(lines) == ["error", "end"] and lines[0]["name"] == "KernelDied"
    assert bridge.execute("doomed", context_id=context)[0]["name"] == "NameError"
    assert bridge.stdout_of("print('alive')", context_id=context) == "alive\n"
    bridge.request("remove_context", context_id=context)


@pytest.mark.parametrize("raw", [b"garbage", b"[]", b'{"op": "list_contexts"}', b'{"id": 7, "op": "list_contexts"}'])
def test_malformed_lines_fail_with_id_null(bridge: BridgeProcess, raw: bytes) -> None:
    bridge.send_raw(raw)
    answer = bridge.next(None)
    assert answer["type"] == "failed" and answer["message"]


@pytest.mark.parametrize("request_, words", [
    ({"op": "format_disk"}, "unknown op"),
    ({"op": "execute"}, "code must be a string"),
    ({"op": "execute", "code": "1", "timeout": -1}, "timeout"),
    ({"op": "execute", "code": "1", "timeout": True}, "timeout"),
    ({"op": "execute", "code": "1", "envs": {"A": 1}}, "envs"),
    ({"op": "execute", "code": "1", "envs": {"A=B": "c"}}, "envs"),
    ({"op": "execute", "code": "1", "envs": {"1A": "c"}}, "envs"),
    ({"op": "execute", "code": "1", "envs": ["A"]}, "envs"),
    ({"op": "execute", "code": "1", "context_id": "nope"}, "no context 'nope'"),
    ({"op": "execute", "code": "1", "language": "javascript"}, "no Jupyter kernel for javascript"),
    ({"op": "execute", "code": "1", "language": "ts"}, "no Jupyter kernel for typescript"),
    ({"op": "create_context", "language": "js"}, "installed kernels: python3 (python)"),
    ({"op": "create_context", "cwd": "/no/such/dir"}, "not a directory"),
    ({"op": "interrupt", "context_id": None}, "no context"),
    ({"op": "remove_context"}, "no context"),
])
def test_bad_requests_fail_and_the_bridge_goes_on(bridge: BridgeProcess, request_: dict, words: str) -> None:
    rid = "bad-%d" % id(request_)
    bridge.send_raw(json.dumps({"id": rid, **request_}).encode())
    answer = bridge.next(rid)
    assert answer["type"] == "failed" and words in answer["message"], answer
    assert bridge.stdout_of("print('fine')") == "fine\n"


def test_output_written_to_fd_1_stays_off_the_protocol(bridge: BridgeProcess) -> None:
    out = bridge.stdout_of("import os, subprocess\nos.write(1, b'raw fd\\n')\n"
                           "subprocess.run(['echo', 'child'])\nprint('end', flush=True)")
    assert "end\n" in out
    assert bridge.garbage == []


@pytest.mark.slow
def test_a_kernel_that_ignores_the_interrupt_is_restarted(bridge: BridgeProcess) -> None:
    context = bridge.request("create_context")["context_id"]
    bridge.execute("lost = 1", context_id=context)
    started = time.monotonic()
    lines = bridge.execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
                           context_id=context, timeout=1)
    assert time.monotonic() - started < 30
    assert lines[-1]["type"] == "end" and lines[-1]["timed_out"] is True
    [notice] = [line["text"] for line in lines if line["type"] == "stderr"]
    assert "restarted" in notice
    assert bridge.execute("lost", context_id=context)[0]["name"] == "NameError"
    bridge.request("remove_context", context_id=context)


def test_eof_shuts_every_kernel_and_its_processes_down(tmp_path: Path) -> None:
    running = BridgeProcess(cwd=str(tmp_path))
    assert running.next(None)["type"] == "ready"
    other = running.request("create_context")["context_id"]
    probe = ("import os, subprocess, ipykernel.connect\n"
             "child = subprocess.Popen(['sleep', '300'])\n"
             "print(os.getpid(), child.pid, ipykernel.connect.get_connection_file())")
    pids: list[int] = []
    directories = set()
    for context in (None, other):
        kernel, child, connection_file = running.stdout_of(probe, context_id=context).split()
        pids += [int(kernel), int(child)]
        directories.add(os.path.dirname(connection_file))
    [private] = directories
    assert stat.S_IMODE(os.stat(private).st_mode) & 0o777 == 0o700  # (jupyter_client adds the sticky bit)
    assert pids_alive(pids) == pids

    assert running.close(timeout=30) == 0
    deadline = time.monotonic() + 10
    while pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_alive(pids) == []
    assert not os.path.exists(private)
    assert running.garbage == []


def test_sigterm_shuts_down_like_eof(tmp_path: Path) -> None:
    running = BridgeProcess(cwd=str(tmp_path))
    assert running.next(None)["type"] == "ready"
    [kernel] = [int(pid) for pid in running.stdout_of("import os; print(os.getpid())").split()]
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while pids_alive([kernel]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_alive([kernel]) == []
    running.close()


def test_without_jupyter_client_the_bridge_says_what_is_missing() -> None:
    # -S: the test venv's python without its site-packages, so without jupyter_client
    done = subprocess.run([sys.executable, "-S", str(BRIDGE)], input=b"", capture_output=True, timeout=30)
    assert done.returncode == 3
    [line] = done.stdout.splitlines()
    answer = json.loads(line)
    assert answer["type"] == "failed" and answer["id"] is None
    assert "jupyter_client" in answer["message"]
