"""The hostile-code corpus (`tests/evalkit/hostile.py`) through `evalkit.run`, on each driver.

One run per driver holds every case, each followed by `FOLLOWER`, a known-correct sample that
also checks the sandbox is clean; one worker, so that the follower runs in the sandbox the case
just used. For every case: the expected status (never ``passed`` but for the always-equal tricks
without strict mode and the documented known limits), the expected ``BLOCKED`` lines and no
``ESCAPED`` line; for the run: it completes with exit code 0 and no infrastructure error, and the
host is untouched (no marker file anywhere, no connection or datagram to its listeners, no
process of the corpus left, the secret never in a result).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

import evalkit
from evalkit import BenchmarkConfig, get_benchmark
from vmpool import LocalSandbox

from .hostile import CASES, FOLLOWER, STRICT_CASES, TASK_ID, Case, HostBait, fill
from .test_run import write_config, write_samples


REPO = Path(__file__).resolve().parents[2]
SECURITY = REPO / "vmpool" / "SECURITY.md"


@dataclass
class Listeners:
    """A TCP and a UDP port on every address of the host, and an abstract unix socket; a thread
    records whatever reaches them."""

    tcp: socket.socket
    udp: socket.socket
    unix: socket.socket
    extra: list[socket.socket] = field(default_factory=list)
    reached: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in (self.tcp, self.udp, self.unix, *self.extra):
                selector.register(sock, selectors.EVENT_READ)
            while not self.stop.is_set():
                for key, _ in selector.select(timeout=0.1):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    if ready.type == socket.SOCK_DGRAM:
                        _, sender = ready.recvfrom(65536)
                        self.reached.append(f"udp datagram from {sender}")
                    else:
                        connection, peer = ready.accept()
                        self.reached.append(f"connection from {peer!r} to {ready.getsockname()!r}")
                        connection.close()


def _host_ip() -> str:
    """A non-loopback address of this host (the source address of its default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address: str = probe.getsockname()[0]
            return address
        except OSError:
            return "127.0.0.1"


def _tcp_and_udp_on_one_port() -> tuple[socket.socket, socket.socket]:
    """A TCP listener and a UDP socket on the same free port (the port the kernel gives TCP may
    be taken for UDP by another process: try again)."""
    for _ in range(50):
        tcp = socket.create_server(("0.0.0.0", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("0.0.0.0", tcp.getsockname()[1]))
        except OSError:
            tcp.close()
            udp.close()
            continue
        return tcp, udp
    raise RuntimeError("no port was free for both TCP and UDP in 50 tries")


@pytest.fixture
def bait(tmp_path: Path) -> Iterator[tuple[HostBait, Listeners]]:
    marker = uuid.uuid4().hex
    secret = tmp_path / "secret.txt"
    secret.write_text(f"SECRET-{marker}\n")
    tcp, udp = _tcp_and_udp_on_one_port()
    port = tcp.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(f"\0evalkit-hostile-{marker}")
    unix.listen()
    listeners = Listeners(tcp, udp, unix)
    try:
        listeners.extra.append(socket.create_server(("::1", port), family=socket.AF_INET6))
    except OSError:
        pass  # no IPv6 loopback here
    host = HostBait(marker=marker, host_dir=str(tmp_path), secret_file=str(secret), repo=str(REPO),
                    home=str(Path.home()), port=port, host_ip=_host_ip(), abstract_socket=f"evalkit-hostile-{marker}")
    thread = threading.Thread(target=listeners.serve, daemon=True)
    thread.start()
    _check_the_checks(host, listeners)
    yield host, listeners
    listeners.stop.set()
    thread.join()
    for sock in (tcp, udp, unix, *listeners.extra):
        sock.close()


def _check_the_checks(host: HostBait, listeners: Listeners) -> None:
    """The host's own attempts reach the listeners, and a process with the marker is found:
    the checks after the run can fail."""
    for address in {"127.0.0.1", host.host_ip}:
        socket.create_connection((address, host.port), timeout=5).close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (address, host.port))
    with socket.socket(socket.AF_UNIX) as unix:
        unix.connect(f"\0{host.abstract_socket}")
    expected = 2 * len({"127.0.0.1", host.host_ip}) + 1
    deadline = time.monotonic() + 5
    while len(listeners.reached) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(listeners.reached) == expected, listeners.reached
    listeners.reached.clear()
    with subprocess.Popen(["/bin/sh", "-c", "sleep 30; :", host.marker]) as process:  # "; :": not exec-ed into sleep
        deadline = time.monotonic() + 10  # until the child has exec-ed, /proc shows the parent's command line
        while process.pid not in _pids_mentioning(host.marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.pid in _pids_mentioning(host.marker)
        process.kill()


def run_corpus(tmp_path: Path, host: HostBait, driver: str, cases: list[Case], strict: bool, timeout_s: float) -> tuple[evalkit.RunOutcome, pd.DataFrame]:
    rows = []
    for case in cases:
        rows += [(TASK_ID, case.code(host)), (TASK_ID, FOLLOWER)]
    folder = tmp_path / f"{driver}-{'strict' if strict else 'lax'}"
    folder.mkdir()
    samples = write_samples(folder, rows)
    config = write_config(folder, benchmark={"name": "humaneval", "ids": [TASK_ID], "strict": strict},
                          model={"provider": "samples", "path": str(samples)},
                          sandbox={"driver": driver, "timeout_s": timeout_s},
                          scheduler={"workers": 1, "batch_size": 4})
    outcome = evalkit.run(config, progress=False)
    journal = [json.loads(line)["sample_idx"] for line in (outcome.run_dir / "samples.jsonl").read_text().splitlines()]
    assert journal == list(range(len(rows))), "one worker runs the samples in order: each follower right after its case"
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet").sort_values("sample_idx").reset_index(drop=True)
    return outcome, frame


def corpus_problems(outcome: evalkit.RunOutcome, frame: pd.DataFrame, cases: list[Case], host: HostBait, strict: bool) -> list[str]:
    """Everything about a corpus run that is not as expected, one line each."""
    problems = []
    if outcome.exit_code != 0 or outcome.summary["counts"]["infra_error"] != 0:
        problems.append(f"run: exit code {outcome.exit_code}, counts {outcome.summary['counts']}")
    for index, case in enumerate(cases):
        row, follower = frame.iloc[2 * index], frame.iloc[2 * index + 1]
        output = f"{row.stdout}\n{row.stderr}"
        lines = output.splitlines()
        expected = (case.strict_status or case.status) if strict else case.status
        if row.status != expected or bool(row.passed) != (expected == "passed"):
            problems.append(f"{case.name}: status {row.status}, expected {expected} ({row.error})")
        executions = 1 if expected == "passed" else 2  # a failure is re-checked once (sandbox.recheck_failures)
        if row.attempts != executions:
            problems.append(f"{case.name}: {row.attempts} attempts, not {executions} (a sandbox failed)")
        if row.flaky:
            problems.append(f"{case.name}: flaky (first {row.first_status}, then {row.status})")
        problems += [f"{case.name}: {line}" for line in lines if line.startswith("ESCAPED")]
        for label in case.blocked:
            if not any(line.startswith(f"BLOCKED {fill(label, host)}") for line in lines):
                problems.append(f"{case.name}: no 'BLOCKED {fill(label, host)}' line")
        problems += [f"{case.name}: {text!r} in its output" for text in map(lambda t: fill(t, host), case.absent) if text in output]
        if case.error_contains and expected != "passed" and case.error_contains not in (row.error or ""):
            problems.append(f"{case.name}: error {row.error!r} lacks {case.error_contains!r}")
        if strict and case.strict_status == "failed" and "StrictModeError: strict mode: make_a_pile returned a" not in (row.error or ""):
            problems.append(f"{case.name}: strict mode did not say why: {row.error!r}")
        if bool(row.output_truncated) != case.truncated:
            problems.append(f"{case.name}: output_truncated is {row.output_truncated}")
        if not follower.passed:
            problems.append(f"{case.name}: the sample after it {follower.status}: {follower.error}")
    secret = f"SECRET-{host.marker}"
    problems += [f"sample {r.sample_idx}: the host's secret is in its output" for r in frame.itertuples() if secret in f"{r.stdout}{r.stderr}"]
    return problems


def host_problems(host: HostBait, listeners: Listeners) -> list[str]:
    """Traces of the corpus on the host: files, connections, processes."""
    problems = [f"reached the host: {what}" for what in listeners.reached]
    folders = {host.host_dir, host.repo, host.home, "/tmp", "/root", "/etc", "/usr", "/var/tmp", "/dev/shm"}
    problems += [f"file on the host: {path}" for folder in folders for path in Path(folder).glob(f"*{host.marker}*")
                 if path.name != "secret.txt"]
    deadline = time.monotonic() + 5
    while True:
        left = [pid for pid in _pids_mentioning(host.marker) if pid != os.getpid()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return problems + [f"process left on the host: {pid}" for pid in left]


def _pids_mentioning(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_hostile_corpus_on_bwrap(tmp_path: Path, bait: tuple[HostBait, Listeners]) -> None:
    host, listeners = bait
    outcome, frame = run_corpus(tmp_path, host, "bwrap", CASES, strict=False, timeout_s=2)
    assert corpus_problems(outcome, frame, CASES, host, strict=False) + host_problems(host, listeners) == []
    assert set(frame["driver"]) == {"bwrap"}


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes", "ray_session")
def test_strict_mode_catches_the_always_equal_tricks_on_bwrap(tmp_path: Path, bait: tuple[HostBait, Listeners]) -> None:
    host, listeners = bait
    outcome, frame = run_corpus(tmp_path, host, "bwrap", STRICT_CASES, strict=True, timeout_s=2)
    assert corpus_problems(outcome, frame, STRICT_CASES, host, strict=True) + host_problems(host, listeners) == []


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.microvm
@pytest.mark.usefixtures("sandboxes", "ray_session", "microvm")
def test_hostile_corpus_on_microvm(tmp_path: Path, bait: tuple[HostBait, Listeners]) -> None:
    host, listeners = bait
    outcome, frame = run_corpus(tmp_path, host, "microvm", CASES, strict=False, timeout_s=5)
    assert corpus_problems(outcome, frame, CASES, host, strict=False) + host_problems(host, listeners) == []
    assert set(frame["driver"]) == {"microvm"}


@pytest.mark.sandbox
@pytest.mark.usefixtures("sandboxes")
def test_the_follower_fails_in_a_sandbox_that_is_not_clean() -> None:
    # what a case could leave behind, put there by the host's side: a file in /tmp and a process
    # of the sandbox user (a background process, which the agent's sweep spares)
    problem = get_benchmark(BenchmarkConfig(name="humaneval")).select([TASK_ID], None)[0]
    program = get_benchmark(BenchmarkConfig(name="humaneval")).program(problem, FOLLOWER)
    with LocalSandbox.create(driver="bwrap") as sandbox:
        assert sandbox.run_program(program).status == "ok"
        sandbox.files.write("/tmp/left-behind", "x")
        sleeper = sandbox.processes.start("sleep 60")
        result = sandbox.run_program(program)
        sleeper.kill()
    assert result.status == "error"
    assert "the sandbox is not clean: " in (result.error or "") and "/tmp/left-behind" in (result.error or "")
    assert "process " in (result.error or "")


def test_security_notes_list_every_case() -> None:
    # vmpool/SECURITY.md shows the corpus as evidence: one row per case, as the corpus says
    text = SECURITY.read_text(encoding="utf-8")
    missing = [case.name for case in CASES if f"| `{case.name}` | {case.tries} | {case.outcome} |" not in text]
    assert missing == []
