"""PID 1 of a vmpool microVM: starts the agent unprivileged, reaps zombies, restarts nothing.

Runs inside the guest (stdlib only) after the initramfs ``/init`` has mounted the root image
(read-only ext4 under a tmpfs overlay) and switched to it. It:

- mounts a fresh tmpfs on /tmp and closes the image's other world-writable directories, so
  /tmp (which the agent cleans after every program) and the home are the only places programs
  can write;
- mounts the sandbox user's home (template.json's ``home``, /home/user; HOME points at it) as a
  tmpfs owned by uid 65534 of at most half the VM's memory, less where a full /tmp and home
  would leave the agent too little memory (`home_size_mb`), and creates the python user site
  folder in it (``python.user_site``), so that what ``pip install --user`` puts there is
  importable by every python3, even one started before the install;
- starts the template's ``start`` command (as root, in the background) if it has one;
- starts the agent as uid/gid 65534 on the virtio-serial port named ``agent``: programs run
  unprivileged, so they can neither patch the image nor the agent for the next program;
- serves the port named ``control`` (root only, JSON lines, one reply per request):
  ``{"id": n, "op": "sync", "entropy_b64": ..., "time_ns": ..., "tmp_size_mb": ...}`` mixes the
  host's entropy into the kernel's pool and forces a reseed, sets the clock and resizes /tmp.
  The host sends it after every snapshot restore, so clones of one snapshot share neither
  their random state nor a stale clock. ``{"id": n, "op": "await_detached", "timeout_s": s}``
  answers once the agent has seen its host leave (`agent_detached`): the host asks before it
  freezes a VM to pause it, so that the agent greets whoever resumes it with a hello;
- reaps every orphan; when the agent exits the VM is powered off (the host then sees QEMU exit
  and discards it): nothing is restarted.
"""

import base64
import ctypes
import fcntl
import json
import os
import select
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

SANDBOX_UID = 65534
DEFAULT_TMP_MB = 256
HOME_RESERVE_MB = 64  # what the kernel, init and the agent keep when /tmp and the home are full
HOME_MIN_MB = 16
AGENT_DIR = "/opt/vmpool"
AGENT_ARGV = AGENT_DIR + "/agent-argv.json"
TEMPLATE_INFO = "/etc/vmpool/template.json"
# The kernel functions (virtio_console) a thread waits in while it reads or writes a port.
PORT_WAITS = ("port_fops_read", "port_fops_write", "wait_port_writable")
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the kernel CRNG from its input pool now
MS_NOSUID, MS_NODEV, MS_REMOUNT = 2, 4, 32
LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2 = 0xFEE1DEAD, 672274793
LINUX_REBOOT_CMD_RESTART = 0x01234567  # with QEMU's -no-reboot, a reboot ends the VM at once
CLOSED_DIRS = ("/var/tmp", "/var/lock", "/run/lock", "/dev/shm", "/dev/mqueue")
_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    os.write(2, ("vmpool-init: %s\n" % message).encode())


def power_off() -> None:
    os.sync()
    _libc.reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_RESTART, None)
    os._exit(1)  # unreachable unless reboot failed; PID 1 exiting panics the kernel, also an end


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "mount %s on %s: %s" % (fstype, target, os.strerror(errno)))


def prepare_filesystem(tmp_size_mb: int, info: Dict[str, Any]) -> str:
    """Mount /tmp and the home; the agent's working directory (the home, else /tmp)."""
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777,size=%dm" % tmp_size_mb)
    for path in CLOSED_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)
    home = info.get("home")
    if isinstance(home, str) and home.startswith("/"):
        os.makedirs(home, exist_ok=True)  # in the root overlay
        mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV,
              "mode=0755,uid=%d,gid=%d,size=%dm" % (SANDBOX_UID, SANDBOX_UID, home_size_mb(info)))
        python = info.get("python")
        user_site = python.get("user_site") if isinstance(python, dict) else None
        if isinstance(user_site, str) and user_site.startswith(home.rstrip("/") + "/"):
            make_user_dirs(home, user_site)
        return home
    return "/tmp"


def home_size_mb(info: Dict[str, Any]) -> int:
    """The home's size: at most half the VM's memory, and small enough that a full home and a
    /tmp of the largest size the host allows (half the VM's memory) leave HOME_RESERVE_MB of
    the memory available now. tmpfs pages live in RAM and ending the program that wrote them
    frees none: with both full to the brim, the OOM killer would end the agent, and the VM with
    it, so that a program could turn its own failure into a broken sandbox."""
    meminfo: Dict[str, int] = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            meminfo[name] = int(value.split()[0]) // 1024
    total, available = meminfo["MemTotal"], meminfo.get("MemAvailable", meminfo["MemTotal"])
    vm = info.get("vm")
    memory = vm.get("memory_mib") if isinstance(vm, dict) else None
    tmp_max = (memory if isinstance(memory, int) else total) // 2
    return max(HOME_MIN_MB, min(total // 2, available - tmp_max - HOME_RESERVE_MB))


def make_user_dirs(home: str, path: str) -> None:
    """Create `path` and the folders between `home` and it, owned by the sandbox user."""
    current = home
    for part in os.path.relpath(path, home).split("/"):
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current, 0o755)
            os.chown(current, SANDBOX_UID, SANDBOX_UID)


def find_port(name: str) -> str:
    """The /dev path of the virtio-serial port QEMU named `name`."""
    root = "/sys/class/virtio-ports"
    for _ in range(500):
        for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            try:
                with open(os.path.join(root, entry, "name")) as handle:
                    if handle.read().strip() == name:
                        return "/dev/" + entry
            except OSError:
                continue
        time.sleep(0.01)
    raise RuntimeError("no virtio-serial port named %r" % name)


def template_info() -> Dict[str, Any]:
    try:
        with open(TEMPLATE_INFO) as handle:
            info = json.load(handle)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def program_env(info: Dict[str, Any]) -> Dict[str, str]:
    home = info.get("home")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home if isinstance(home, str) else "/tmp", "TMPDIR": "/tmp",
           "LANG": "C.UTF-8", "USER": "nobody", "LOGNAME": "nobody"}
    extra = info.get("env")
    if isinstance(extra, dict):
        env.update({str(key): str(value) for key, value in extra.items()})
    return env


def start_agent(port: str, env: Dict[str, str], cwd: str) -> int:
    """Fork the agent as uid 65534 in `cwd` with the command line the host wrote (AGENT_ARGV,
    from ``vmpool._guest.agent_command``), its channel being `port`."""
    with open(AGENT_ARGV) as handle:
        argv = [port if arg == "{channel}" else arg for arg in json.load(handle)]
    os.chown(port, SANDBOX_UID, SANDBOX_UID)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.setgroups([])
            os.setgid(SANDBOX_UID)
            os.setuid(SANDBOX_UID)
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        except BaseException as exc:  # never return into PID 1's code in the child
            log("cannot start the agent: %s" % exc)
        os._exit(127)
    return pid


def start_command(command: str, env: Dict[str, str]) -> None:
    root_env = dict(env, HOME="/root", USER="root", LOGNAME="root")
    subprocess.Popen(["/bin/sh", "-c", command], env=root_env, cwd="/", start_new_session=True,
                     stdin=subprocess.DEVNULL)


def sync(request: Dict[str, Any]) -> Dict[str, Any]:
    """Fresh randomness and time after a restore (see module docstring)."""
    done: Dict[str, Any] = {}
    entropy = base64.b64decode(request.get("entropy_b64") or "")
    if entropy:
        with open("/dev/urandom", "wb") as pool:
            pool.write(entropy)
            pool.flush()
            try:
                fcntl.ioctl(pool.fileno(), RNDRESEEDCRNG)
                done["reseeded"] = True
            except OSError as exc:
                done["reseeded"] = False
                done["reseed_error"] = str(exc)
    if isinstance(request.get("time_ns"), int):
        time.clock_settime_ns(time.CLOCK_REALTIME, request["time_ns"])
        done["clock_set"] = True
    if isinstance(request.get("tmp_size_mb"), int):
        mount("tmpfs", "/tmp", "tmpfs", MS_REMOUNT, "size=%dm" % request["tmp_size_mb"])
    return done


def _thread_waits(pid: int) -> Optional[List[str]]:
    """(state, wchan) of each thread of `pid`, or None if a thread is runnable: its next step
    is unknown."""
    waits: List[str] = []
    task_dir = "/proc/%d/task" % pid
    for tid in os.listdir(task_dir):
        try:
            with open("%s/%s/stat" % (task_dir, tid), "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0].decode()
            with open("%s/%s/wchan" % (task_dir, tid)) as handle:
                wchan = handle.read().strip()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        if state not in ("S", "D"):
            return None
        waits.append(wchan)
    return waits


def agent_detached(pid: int, timeout_s: float) -> Dict[str, Any]:
    """Wait until every thread of the agent sleeps somewhere else than on its port.

    The host calls this after closing its connection while the agent was idle, blocked reading
    the port. The guest kernel then wakes the agent with EOF, and the agent polls for the next
    host (`_agent.Channel.wait_for_host`). Were the VM frozen before that, a host connecting
    after the resume would find it still blocked in the read (the disconnect and the reconnect
    both happened while it waited), and no hello would come.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        waits = _thread_waits(pid)
        if waits is not None and not any(wait in PORT_WAITS for wait in waits):
            return {"detached": True}
        if time.monotonic() >= deadline:
            return {"detached": False, "waits": waits}
        time.sleep(0.005)


class Control:
    """The root-only control port: like the agent's channel, it reads EOF while no host is
    connected, so it polls for one."""

    def __init__(self, path: str, agent_pid: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        self.buffer = b""
        self.agent_pid = agent_pid

    def serve(self) -> None:
        while True:
            data = os.read(self.fd, 65536)
            if not data:
                self.buffer = b""
                self.wait_for_host()
                continue
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.write(self.handle(line))

    def wait_for_host(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while any(events & select.POLLHUP for _, events in poller.poll(0)):
            time.sleep(0.01)

    def handle(self, line: bytes) -> Dict[str, Any]:
        request_id: Optional[int] = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            if request.get("op") == "sync":
                return {"id": request_id, "ok": True, "result": sync(request)}
            if request.get("op") == "await_detached":
                timeout = float(request.get("timeout_s") or 10.0)
                return {"id": request_id, "ok": True, "result": agent_detached(self.agent_pid, timeout)}
            raise ValueError("unknown op %r" % request.get("op"))
        except Exception as exc:
            return {"id": request_id, "ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}

    def write(self, message: Dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]


def main() -> None:
    agent_pid = 0

    def reap(signum: int, frame: Any) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == agent_pid:
                log("the agent exited; powering off")
                power_off()

    signal.signal(signal.SIGCHLD, reap)
    try:
        info = template_info()
        cwd = prepare_filesystem(DEFAULT_TMP_MB, info)  # the host's sync sets /tmp's size
        env = program_env(info)
        if isinstance(info.get("start"), str) and info["start"]:
            start_command(info["start"], env)
        agent_pid = start_agent(find_port("agent"), env, cwd)
        Control(find_port("control"), agent_pid).serve()
    except BaseException as exc:
        log("fatal: %s: %s" % (type(exc).__name__, exc))
        power_off()


if __name__ == "__main__":
    main()
