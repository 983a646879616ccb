"""``vmpool bench``: how fast each driver's sandboxes start and run a program, and what one
costs in host memory, measured side by side in one run so that the ratios mean something.

Per driver (figures are medians with min-max; nothing is compared with a threshold):

- cold boot to ready (microvm only): a VM booted from its kernel without a snapshot, until the
  agent's hello, as the driver does once to make the snapshot every sandbox is restored from;
- start to ready: `LocalSandbox.create` returning (microvm: a restore of that snapshot);
- the first program after the start, then ``print(1)`` on the same warm sandbox;
- host memory of one sandbox after its start and one program: RSS and PSS from
  /proc/PID/status and /proc/PID/smaps_rollup, of QEMU alone and of the sandbox's whole host
  process tree (bwrap's processes included);
- k concurrent starts: k threads calling `LocalSandbox.create` at the same moment.

`measure` gathers the figures, `render` and `render_ratios` turn them into lines (pure).
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _qemu
from ._bwrap import _bwrap_path, _children
from ._driver import get_driver, list_drivers
from ._errors import SandboxError
from ._sandbox import LocalSandbox
from ._templates import ensure_built
from ._vm_accel import accelerator

__all__ = ["Figures", "choose_drivers", "machine", "measure", "render", "render_ratios"]

PROGRAM = "print(1)"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Memory:
    """Host memory in MiB; RSS of a process tree is the sum over its processes."""

    rss_mib: float
    pss_mib: float


@dataclass
class Figures:
    """What `measure` found for one driver; times in seconds."""

    driver: str
    isolation: str
    cold_boot: list[float] = field(default_factory=list)  # empty: the driver has no snapshot
    start: list[float] = field(default_factory=list)
    first_program: list[float] = field(default_factory=list)
    program: list[float] = field(default_factory=list)
    qemu_memory: list[Memory] = field(default_factory=list)  # microvm only
    tree_memory: list[Memory] = field(default_factory=list)
    concurrent: dict[int, list[list[float]]] = field(default_factory=dict)  # k -> rounds of times
    concurrent_wall: dict[int, list[float]] = field(default_factory=dict)


def machine() -> str:
    """One line about this host: CPUs, RAM, kernel, QEMU and the accelerator it would use."""
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.machine())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    qemu = _qemu.qemu_binary()
    accel = accelerator()  # what VMs use here (TCG after a failed KVM boot)
    if accel.hardware:
        how = "KVM (hardware virtualization), machine %s" % accel.machine
    else:
        how = ("TCG emulation (QEMU emulates the guest CPU in software: no hardware "
               "virtualization), machine %s" % accel.machine)
    return "%d CPUs (%s), %.0f GiB RAM, %s %s, QEMU %s; accelerator: %s, because %s" % (
        os.cpu_count() or 0, model, ram, platform.system(), platform.release(),
        _qemu.qemu_version(qemu) if qemu else "not installed", how, accel.reason)


def choose_drivers(choice: str) -> list[tuple[str, str | None]]:
    """(name, why it cannot run here or None) for `choice`: a driver name, or "all"."""
    names = list_drivers() if choice == "all" else [choice]
    return [(name, get_driver(name).available()) for name in names]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _memory(pids: Sequence[int]) -> Memory:
    """Summed over `pids`; a process that ended meanwhile (a program's child) counts nothing."""
    rss = pss = 0
    for pid in pids:
        rss_kib = _kib(_read("/proc/%d/status" % pid), "VmRSS")
        pss_kib = _kib(_read("/proc/%d/smaps_rollup" % pid), "Pss")
        if rss_kib is not None and pss_kib is not None:
            rss, pss = rss + rss_kib, pss + pss_kib
    if not rss:
        raise SandboxError("cannot read the memory of pids %s in /proc (gone, or not ours?)" % list(pids))
    return Memory(rss / 1024, pss / 1024)


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _cold_boot(template_name: str) -> float:
    """One microvm cold boot until the agent's hello (as `Machine.snapshot` boots)."""
    from ._vm_machine import BOOT_TIMEOUT_S, Machine

    qemu, bwrap = _qemu.qemu_binary(), _bwrap_path()
    assert qemu is not None and bwrap is not None  # the driver is available
    vm_machine = Machine(qemu, bwrap, ensure_built(template_name))
    started = time.perf_counter()
    vm = vm_machine._launch([])
    try:
        vm_machine._first_hello(vm, time.monotonic() + BOOT_TIMEOUT_S)
        return time.perf_counter() - started
    finally:
        vm.kill()


def _run(sandbox: LocalSandbox) -> float:
    started = time.perf_counter()
    result = sandbox.run_program(PROGRAM)
    elapsed = time.perf_counter() - started
    if result.status != "ok" or result.stdout != "1\n":
        raise SandboxError("%s ended %s in a %s sandbox: %r" % (PROGRAM, result.status, sandbox.driver,
                                                              (result.stdout + result.stderr)[-300:]))
    return elapsed


def _start_and_run(figures: Figures, programs: int) -> None:
    """One start, its first program, its memory, and (the first time) `programs` more."""
    started = time.perf_counter()
    with LocalSandbox.create(figures.driver) as sandbox:
        figures.start.append(time.perf_counter() - started)
        figures.first_program.append(_run(sandbox))
        process = sandbox._process
        qemu_pid = getattr(process, "qemu_pid", lambda: None)()
        if qemu_pid is not None:
            figures.qemu_memory.append(_memory([qemu_pid]))
        root = getattr(process, "pid", None)
        if isinstance(root, int):
            figures.tree_memory.append(_memory(_tree(root)))
        if not figures.program:
            figures.program.extend(_run(sandbox) for _ in range(programs))


def _concurrent(driver: str, k: int) -> tuple[list[float], float]:
    """Times to ready of `k` sandboxes started at once, and the wall time until all were."""
    sandboxes: list[LocalSandbox] = []
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(k)

    def start() -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            sandbox = LocalSandbox.create(driver)
        except BaseException as exc:  # re-raised in the calling thread
            with lock:
                errors.append(exc)
            return
        with lock:
            sandboxes.append(sandbox)
            times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=start, name="vmpool-bench-%d" % i) for i in range(k)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    finally:
        for sandbox in sandboxes:
            sandbox.kill()
    if errors:
        raise errors[0]
    return times, wall


def measure(driver: str, repeat: int = 3, programs: int = 20, concurrency: Sequence[int] = (4, 8),
            progress: Progress | None = None) -> Figures:
    """The figures of one usable driver: `repeat` cold boots (microvm), starts, and rounds of
    each concurrency level; `programs` runs of ``print(1)``. Raises VmpoolError if a sandbox
    fails or a program does not print 1."""
    say = progress or (lambda message: None)
    instance = get_driver(driver)
    figures = Figures(driver, instance.isolation())
    if driver == "microvm":
        from ._microvm import MicroVMDriver
        from ._vm_machine import Machine

        assert isinstance(instance, MicroVMDriver) and instance.qemu and instance.bwrap
        say("microvm: making sure the snapshot exists (a one-time cold boot if not)")
        Machine(instance.qemu, instance.bwrap, ensure_built(instance.template)).snapshot()
        for i in range(repeat):
            say("microvm: cold boot %d/%d" % (i + 1, repeat))
            figures.cold_boot.append(_cold_boot(instance.template))
    for i in range(repeat):
        say("%s: start %d/%d" % (driver, i + 1, repeat))
        _start_and_run(figures, programs)
    for k in concurrency:
        for i in range(repeat):
            say("%s: %d concurrent starts, round %d/%d" % (driver, k, i + 1, repeat))
            times, wall = _concurrent(driver, k)
            figures.concurrent.setdefault(k, []).append(times)
            figures.concurrent_wall.setdefault(k, []).append(wall)
    return figures


def _fmt(values: Sequence[float]) -> str:
    """Median (min-max) of times in seconds; in ms when the median is below a second."""
    median = statistics.median(values)
    unit, scale, digits = ("ms", 1000, 1) if median < 1 else ("s", 1, 2)
    text = "%.*f %s" % (digits, median * scale, unit)
    if len(values) > 1:
        text += " (%.*f-%.*f)" % (digits, min(values) * scale, digits, max(values) * scale)
    return text


def _fmt_memory(samples: Sequence[Memory]) -> str:
    return "RSS %.0f MiB, PSS %.0f MiB" % (statistics.median(m.rss_mib for m in samples),
                                           statistics.median(m.pss_mib for m in samples))


def render(figures: Figures) -> list[str]:
    """The lines `vmpool bench` prints for one driver."""
    kind = "a restore of the snapshot" if figures.cold_boot else "no snapshot: every start is cold"
    lines = ["%s: %s" % (figures.driver, figures.isolation)]
    if figures.cold_boot:
        lines.append("  cold boot to ready (no snapshot):   %s" % _fmt(figures.cold_boot))
    lines.append("  start to ready (create):             %s  (%s)" % (_fmt(figures.start), kind))
    lines.append("  first program after the start:      %s" % _fmt(figures.first_program))
    lines.append("  %s on a warm sandbox:         %s  (%d runs)" % (PROGRAM, _fmt(figures.program), len(figures.program)))
    if figures.qemu_memory:
        lines.append("  host memory, QEMU process:          %s" % _fmt_memory(figures.qemu_memory))
    if figures.tree_memory:
        lines.append("  host memory, whole process tree:    %s" % _fmt_memory(figures.tree_memory))
    for k, rounds in figures.concurrent.items():
        flat = [t for times in rounds for t in times]
        lines.append("  %d concurrent starts: to ready median %s, max %s; all ready after %s" % (
            k, _fmt([statistics.median(flat)]), _fmt([max(flat)]), _fmt(figures.concurrent_wall[k])))
    return lines


def render_ratios(vm: Figures, bwrap: Figures) -> list[str]:
    """microvm / bwrap for each figure both have, from the same run."""
    def ratio(a: Sequence[float], b: Sequence[float]) -> str:
        return "%.1fx" % (statistics.median(a) / statistics.median(b))

    lines = ["microvm / bwrap (medians, this run):"]
    if vm.cold_boot:
        lines.append("  microvm cold boot / bwrap start:    %s" % ratio(vm.cold_boot, bwrap.start))
    lines.append("  start to ready:                     %s" % ratio(vm.start, bwrap.start))
    lines.append("  first program after the start:      %s" % ratio(vm.first_program, bwrap.first_program))
    lines.append("  %s on a warm sandbox:         %s" % (PROGRAM, ratio(vm.program, bwrap.program)))
    if vm.tree_memory and bwrap.tree_memory:
        lines.append("  host memory (PSS, whole tree):      %s" % ratio(
            [m.pss_mib for m in vm.tree_memory], [m.pss_mib for m in bwrap.tree_memory]))
    for k in vm.concurrent:
        if k in bwrap.concurrent:
            lines.append("  %d concurrent starts, all ready:    %s" % (k, ratio(vm.concurrent_wall[k], bwrap.concurrent_wall[k])))
    return lines
