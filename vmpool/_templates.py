"""Templates: the Debian root filesystem sandboxes of both drivers run on (the microvm driver
boots its image with the kernel, modules and busybox; the bwrap driver binds its tree's /usr and
/etc). This module is the cache of built templates and its entry points (`cached`, `ensure_built`, `build`);
the spec format and its hash are in ``_template_spec``, the build steps in ``_template_build``
(helped by ``_template_host``, what is taken from the host, and ``_template_tree``, the image tree).

A template is declared in ``vmpool/templates/NAME.yaml`` (format: `TemplateSpec`) and built
by `build` into the cache folder (`cache_dir`)::

    <cache>/templates/<name>-<hash16>/
        rootfs.ext4    Debian root filesystem (debootstrap), ext4 without journal, sparse; holds
                       /etc/vmpool/template.json (format, name, hash, env, start, vm, home,
                       python: path, version, user_site)
        tree/          the same files as a folder, for the bwrap driver (read-only use), with
                       no setuid bits, device nodes or world-writable files (see
                       ``_template_build.Build._harden_tree``)
        vmlinuz        the Debian cloud kernel (a bzImage)
        modules/       the kernel modules the driver loads, plain .ko files side by side;
                       manifest["modules"] lists them in load order
        busybox        a static busybox (from busybox-static), for the driver's initramfs
        manifest.json  what was built from what, when, in how long, and the sizes
        build.log      the build tools' output

<hash16> is the start of `spec_hash`: the spec as canonical JSON, `RECIPE_VERSION` and the
content of every ``source`` file. The kernel and busybox are what the host's apt offers at
build time and do not enter the hash: a newer kernel alone rebuilds nothing (``--force`` does).

A sandbox started from a template has a writable home, `HOME_DIR` (/home/user): a tmpfs owned
by the sandbox user (uid 65534) on both drivers, with the image python's user site folder
(``python.user_site``) already in it, and HOME pointing at it.

Building needs root (debootstrap, chroot, mounts). It happens in a folder next to the final one
that is renamed into place at the end, under an flock per template and hash: a second build of
the same template waits, then uses the first one's result. A failed or interrupted build leaves
nothing behind; the leftovers of a killed one go at the next build. Every mount a build makes
lives in a private mount namespace (``unshare --mount``), so none outlives the tool that made
it and no cleanup can delete through one. Artifacts are world-readable (folders 0755, files
0644, busybox 0755) because QEMU reads them as uid 65534; the tree keeps its own modes. Nothing is installed on the host: the
kernel and busybox packages are fetched with ``apt-get download``, unpacked with ``dpkg-deb -x``.

Errors: `TemplateSpecError` for a spec or template name the user got wrong (one sentence naming
the file, line and key), `TemplateError` for a build that failed (the step, the tool's status
and the tail of its output). Both are `vmpool.VmpoolError`s (defined in ``_errors``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import TemplateError, TemplateSpecError
from ._template_build import FORMAT_VERSION, Build, Progress, check_can_build
from ._template_spec import HOME_DIR, TemplateSpec, load_spec, spec_hash, template_names
from ._template_tree import make_dirs

__all__ = [
    "HOME_DIR", "BuiltTemplate", "TemplateError", "TemplateSpec", "TemplateSpecError", "build", "cache_dir",
    "cached", "ensure_built", "load_spec", "spec_hash", "template_names",
]


def cache_dir() -> Path:
    """Where built templates live: $VMPOOL_CACHE_DIR if set; else /var/cache/vmpool for root
    (QEMU, running as uid 65534, must be able to read it); else $XDG_CACHE_HOME/vmpool
    (~/.cache/vmpool when XDG_CACHE_HOME is unset or not absolute)."""
    if os.environ.get("VMPOOL_CACHE_DIR"):
        return Path(os.environ["VMPOOL_CACHE_DIR"]).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/cache/vmpool")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "vmpool"


@dataclass(frozen=True)
class BuiltTemplate:
    """A built template: its folder and the artifacts in it (see the module docstring)."""

    name: str
    hash: str
    dir: Path
    rootfs: Path
    tree: Path
    kernel: Path
    modules_dir: Path
    busybox: Path
    manifest: dict[str, Any]
    spec: TemplateSpec

    @property
    def modules(self) -> list[Path]:
        """The kernel modules, in the order to load them."""
        return [self.modules_dir / ("%s.ko" % name) for name in self.manifest["modules"]]

    @property
    def user_site(self) -> str | None:
        """The python user site folder inside the sandbox's home that the drivers create at start
        (None if the spec's env moves it out of the home)."""
        user_site = str(self.manifest["python"]["user_site"])
        return user_site if user_site.startswith(HOME_DIR + "/") else None

    def disk_usage(self) -> int:
        """Bytes the folder takes on disk, each hard-linked file once (the root image is sparse:
        far less than its size)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for folder, dirs, files in os.walk(self.dir):
            for name in (*dirs, *files):
                info = os.lstat(os.path.join(folder, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
        return total


def _as_spec(name_or_spec: str | os.PathLike[str] | TemplateSpec) -> TemplateSpec:
    return name_or_spec if isinstance(name_or_spec, TemplateSpec) else load_spec(name_or_spec)


def _folder(spec: TemplateSpec, digest: str) -> Path:
    return cache_dir() / "templates" / ("%s-%s" % (spec.name, digest[:16]))


def cached(name_or_spec: str | os.PathLike[str] | TemplateSpec) -> BuiltTemplate | None:
    """The built template for this spec as it is now, or None if it has not been built."""
    spec = _as_spec(name_or_spec)
    digest = spec_hash(spec)
    folder = _folder(spec, digest)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("hash") != digest:
        return None
    built = BuiltTemplate(name=spec.name, hash=digest, dir=folder, rootfs=folder / "rootfs.ext4",
                          tree=folder / "tree", kernel=folder / "vmlinuz", modules_dir=folder / "modules",
                          busybox=folder / "busybox", manifest=manifest, spec=spec)
    if not all(path.exists() for path in (built.rootfs, built.tree / "usr", built.kernel, built.busybox, *built.modules)):
        return None
    return built


def ensure_built(name_or_spec: str | os.PathLike[str] | TemplateSpec, *,
                 progress: Progress | None = None) -> BuiltTemplate:
    """The built template, building it first if needed ("first use builds"): `build` without
    force. A cache hit needs neither root nor the lock."""
    return build(name_or_spec, progress=progress)


def build(name_or_spec: str | os.PathLike[str] | TemplateSpec, *, force: bool = False,
          progress: Progress | None = None) -> BuiltTemplate:
    """Build the template (a shipped name, a spec path or a `TemplateSpec`) unless it is built
    already; `force` rebuilds it. `progress` receives one-line messages about the steps (none
    on a cache hit). Raises TemplateSpecError for a bad spec, TemplateError if the build fails
    (not root, a tool missing, a step failing); nothing half-built is left behind."""
    spec = _as_spec(name_or_spec)
    say = progress or (lambda message: None)
    if not force and (done := cached(spec)) is not None:
        return done
    digest = spec_hash(spec)
    check_can_build(spec, cache_dir())
    final = _folder(spec, digest)
    with _locked(final.with_name(".%s.lock" % final.name), spec.name, say) as lock_fd:
        if not force and (done := cached(spec)) is not None:  # another process built it meanwhile
            return done
        for leftover in final.parent.glob(".%s.*-*" % final.name):  # of a killed build of ours
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".%s.build-" % final.name, dir=final.parent))
        try:
            Build(spec, digest, work, say, lock_fd).run()
            _publish(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    built = cached(spec)
    if built is None:
        raise TemplateError("template %s was built in %s but cannot be read back" % (spec.name, final))
    return built



@contextmanager
def _locked(lock_path: Path, name: str, say: Progress) -> Iterator[int]:
    """Hold the build lock of one template and hash; yields its file descriptor."""
    make_dirs(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another build of %s to finish" % name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _publish(work: Path, final: Path) -> None:
    for folder, dirs, files in os.walk(work):
        os.chmod(folder, 0o755)
        if folder == str(work):
            dirs.remove("tree")  # keeps its own modes: executables, private files
        for file in files:
            os.chmod(os.path.join(folder, file), 0o755 if file == "busybox" else 0o644)
    old = None
    if final.exists():  # --force, or an earlier build someone damaged
        old = final.with_name(".%s.old-%d" % (final.name, os.getpid()))
        os.rename(final, old)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

