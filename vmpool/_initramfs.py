"""The initramfs every vmpool microVM boots: busybox, the kernel modules, ``/init`` and the guest
files (the agent and PID 1), written as a gzip'd cpio archive with no external tools.

The agent lives here rather than in the template's root image, so changing it rebuilds this
archive in milliseconds instead of the image in minutes. ``/init`` loads the virtio modules,
mounts the template's ext4 image read-only with a tmpfs overlay on top (writes vanish with
the VM), copies the guest files to /opt/vmpool, brings up loopback (and eth0 on QEMU's user
network when the template asks for one) and hands PID 1 to ``_guest_init.py``.

Archives are cached by content hash in the cache folder (``<cache>/initramfs/``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from ._guest import GUEST_PYTHON, INIT_SCRIPT, agent_command, guest_sources
from ._templates import BuiltTemplate, cache_dir

__all__ = ["INIT_SH", "build_initramfs"]

OVERLAY_MB = 256  # the tmpfs under the root overlay: what root-owned writes in the guest may use
GUEST_DIR = "vmpool"  # in the archive; copied to /opt/vmpool of the root

INIT_SH = r"""#!/bin/busybox sh
B=/bin/busybox
fail() { echo "vmpool /init: $*"; $B sync; $B reboot -f; }
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in %(modules)s; do
  [ -f /lib/modules/$m.ko ] && $B insmod /lib/modules/$m.ko 2>/dev/null
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do $B usleep 2000; i=$((i+1)); done
$B mount -t ext4 -o ro,noatime /dev/vda /ro || fail "cannot mount the root image"
$B mount -t tmpfs -o size=%(overlay_mb)dm,mode=0755 tmpfs /rw || fail "cannot mount /rw"
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "cannot mount the overlay"
$B mkdir -p /newroot/opt/vmpool
$B cp /%(guest_dir)s/* /newroot/opt/vmpool/ || fail "cannot install the guest files"
$B chmod 0755 /newroot/opt/vmpool
$B chmod 0644 /newroot/opt/vmpool/*
$B ip link set lo up
if $B grep -q 'vmpool.net=1' /proc/cmdline; then
  $B ip link set eth0 up
  $B ip addr add 10.0.2.15/24 dev eth0
  $B ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /newroot/etc/resolv.conf
fi
$B hostname vmpool
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
exec $B switch_root /newroot /usr/bin/python3 -I -S -B /opt/vmpool/%(init)s
"""


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", ino: int = 0) -> None:
    """One 'newc' cpio record (the format the kernel unpacks)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % field for field in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def _archive(files: dict[str, tuple[int, bytes]], dirs: list[str]) -> bytes:
    out = io.BytesIO()
    ino = 1
    for directory in dirs:
        _cpio_entry(out, directory, 0o040755, ino=ino)
        ino += 1
    for name, (mode, data) in sorted(files.items()):
        _cpio_entry(out, name, 0o100000 | mode, data, ino=ino)
        ino += 1
    _cpio_entry(out, "TRAILER!!!", 0)
    return gzip.compress(out.getvalue(), compresslevel=1, mtime=0)


def _contents(template: BuiltTemplate, overlay_mb: int) -> dict[str, tuple[int, bytes]]:
    modules = [path for path in template.modules if path.exists()]  # in load order
    init = INIT_SH % {"modules": " ".join(path.stem for path in modules), "overlay_mb": overlay_mb,
                      "guest_dir": GUEST_DIR, "init": INIT_SCRIPT}
    files = {"init": (0o755, init.encode()),
             "bin/busybox": (0o755, Path(template.busybox).read_bytes())}
    for path in modules:
        files["lib/modules/%s" % path.name] = (0o644, path.read_bytes())
    for name, source in guest_sources(INIT_SCRIPT):
        files["%s/%s" % (GUEST_DIR, name)] = (0o644, source)
    argv = agent_command(GUEST_PYTHON, "/opt/vmpool", "--channel", "{channel}", "--exclusive", "--sandbox-filter")
    files["%s/agent-argv.json" % GUEST_DIR] = (0o644, json.dumps(argv).encode())  # read by PID 1
    return files


def build_initramfs(template: BuiltTemplate, overlay_mb: int = OVERLAY_MB) -> Path:
    """The initramfs for `template` (built once, then cached by content hash)."""
    files = _contents(template, overlay_mb)
    digest = hashlib.sha256()
    for name, (mode, data) in sorted(files.items()):
        digest.update(b"%s %o %d\n" % (name.encode(), mode, len(data)))
        digest.update(data)
    path = cache_dir() / "initramfs" / ("%s.cpio.gz" % digest.hexdigest()[:16])
    if not path.exists():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # QEMU (uid 65534) reads it
        dirs = ["bin", "dev", "lib", "lib/modules", "newroot", "proc", "ro", "rw", "sys", GUEST_DIR]
        fd, partial = tempfile.mkstemp(prefix=".%s." % path.name, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_archive(files, dirs))
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return path

