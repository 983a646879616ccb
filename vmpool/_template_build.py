"""Building a template: what it needs (root and the tools, `check_can_build`) and its steps
(`Build`): debootstrap, pip in the image, asking the image's python3 where its user site is,
the spec's files, mkfs.ext4 (the tree it was made from stays, hardened, for the bwrap driver),
fetching the kernel and busybox, manifest.json. A build fills a work folder; `_templates.build`
locks, calls it and renames the folder into place.

Every tool runs in a process group of its own, killed with the build, its output appended to
build.log; tools that mount run in a private mount namespace (``unshare --mount``), so no mount
outlives them and no cleanup can delete through one.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import TemplateError
from ._template_host import HOST_CA_BUNDLE, host_ca_bundle, host_mirror, host_pip_settings, local_paths, pem_certificates
from ._guest import GUEST_PYTHON
from ._template_spec import HOME_DIR, RECIPE_VERSION, TemplateSpec, source_bytes
from ._template_tree import dpkg_installed, guest_path, make_dirs, mount_point, remove, tree_usage

__all__ = ["FORMAT_VERSION", "OPTIONAL_MODULES", "REQUIRED_MODULES", "Build", "Progress", "check_can_build"]

# Of manifest.json and /etc/vmpool/template.json. 2: the build keeps tree/; both files say
# where the home and the python user site are (format 1 builds have no tree: not built).
FORMAT_VERSION = 2
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Load order (each after what it depends on). virtio_ring must precede virtio.
REQUIRED_MODULES = (
    "virtio_ring", "virtio", "virtio_mmio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "virtio_blk", "virtio_console", "overlay",
)
OPTIONAL_MODULES = ("vmgenid", "failover", "net_failover", "virtio_net")  # kept when present
STEP_TIMEOUT_S = 1800.0
_MIB = 2**20
_TOOLS = {"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "unshare": "util-linux",
          "chroot": "coreutils", "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg"}
# debootstrap copies the host's /etc/hostname and /etc/resolv.conf; an image is the same on every
# host. resolv.conf stays, empty (no DNS): the microVM's init writes it for a template with
# network, and the bwrap driver binds the host's over it, which needs a file to bind onto in
# the read-only /etc. The spec's files win.
_IMAGE_ETC = {"/etc/hostname": "vmpool\n", "/etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
              "/etc/resolv.conf": ""}
_APT_UPDATE_HINT = ("the host's apt lists are missing or stale: run `apt-get update` "
                    "(the kernel and busybox are fetched with apt-get download)")

Progress = Callable[[str], None]


def check_can_build(spec: TemplateSpec, cache: Path) -> None:
    """TemplateError unless this process can build `spec`: it must be root and find every tool.
    `cache` is the cache folder, named in the advice for a user who is not root."""
    if os.geteuid() != 0:
        raise TemplateError(
            "building template %s needs root (debootstrap, chroot and mounts): run `vmpool template "
            "build %s` as root, with VMPOOL_CACHE_DIR=%s to build into this user's cache"
            % (spec.name, spec.name, cache))
    for tool, package in _TOOLS.items():
        if shutil.which(tool, path=_tool_path()) is None:
            raise TemplateError("building templates needs %s: install it with apt-get install %s" % (tool, package))


def _tool_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


class Build:
    """One build of `spec` (whose hash is `digest`) into the empty folder `work`, which then holds
    the artifacts `_templates` describes. `say` receives one-line progress messages; `lock_fd`
    is the build lock's file descriptor. `run` lists the steps."""

    def __init__(self, spec: TemplateSpec, digest: str, work: Path, say: Progress, lock_fd: int) -> None:
        self.spec, self.digest, self.work, self.say = spec, digest, work, say
        # Every tool inherits the lock: if this process is killed, a tool it leaves running keeps
        # the lock until it ends, so the next build cannot clean up under its feet.
        self.lock_fd = lock_fd
        self.tree = work / "tree"
        self.log = work / "build.log"
        self.env = {**os.environ, "PATH": _tool_path(), "LC_ALL": "C.UTF-8",
                    "DEBIAN_FRONTEND": "noninteractive"}
        self.manifest: dict[str, Any] = {}

    def run(self) -> None:
        """Do every step. TemplateError naming the step that failed; the caller removes `work`."""
        started = time.monotonic()
        self.say("building template %s (%s) in %s" % (self.spec.name, self.digest[:16], self.work.parent))
        self._debootstrap()
        if self.spec.pip:
            self._pip()
        self._inspect_python()
        if self.spec.vm.network:
            self._trust_host_cas()
        self._configure()
        self._mkfs()
        self._harden_tree()
        self._kernel_and_busybox()
        self._write_manifest(time.monotonic() - started)
        self.say("built template %s in %.0f s" % (self.spec.name, time.monotonic() - started))

    @contextmanager
    def _step(self, title: str, detail: str = "") -> Iterator[list[str]]:
        """Announce a step, time it, and name it in any OSError; yields a list the step can add
        notes to (shown when it ends)."""
        self.say("%s%s…" % (title, " (%s)" % detail if detail else ""))
        started, notes = time.monotonic(), list[str]()
        try:
            yield notes
        except OSError as exc:
            raise TemplateError("building template %s failed at step '%s': %s" % (self.spec.name, title, exc)) from exc
        self.say("%s: %s" % (title, ", ".join([*notes, "%.1f s" % (time.monotonic() - started)])))

    def _run(self, step: str, argv: list[str], *, private_mounts: bool = False, tool: str = "",
             cwd: Path | None = None, hint: str = "") -> str:
        """Run a build tool, its output appended to build.log; `private_mounts` runs it in a
        mount namespace of its own. TemplateError naming `step`, the tool, its exit status and
        the tail of its output if it fails; on any exception (Ctrl-C included) the tool's
        whole process group is killed first."""
        tool = tool or argv[0]
        if private_mounts:
            argv = ["unshare", "--mount", "--propagation", "private", *argv]
        with open(self.log, "a", encoding="utf-8") as log:
            log.write("$ %s\n" % shlex.join(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=cwd, env=self.env, start_new_session=True, pass_fds=(self.lock_fd,))
        try:
            raw, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
        except BaseException as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise TemplateError("building template %s failed at step '%s': %s took more than %.0f s"
                                    % (self.spec.name, step, tool, STEP_TIMEOUT_S)) from None
            raise
        output = raw.decode("utf-8", "replace")
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(output)
        if proc.returncode != 0:
            tail = "\n".join("    " + line for line in output.strip().splitlines()[-15:])
            raise TemplateError("building template %s failed at step '%s': %s exited with status %d%s; "
                                "last output:\n%s" % (self.spec.name, step, tool, proc.returncode,
                                                      " (%s)" % hint if hint else "", tail))
        return output

    def _debootstrap(self) -> None:
        release, packages = self.spec.debian.release, self.spec.packages()
        mirror = self.spec.debian.mirror or host_mirror(release)
        title = "debootstrap %s" % release
        with self._step(title, "%s + %s, from %s" % (self.spec.debian.variant, ", ".join(packages) or "nothing", mirror)) as notes:
            self.tree.mkdir(mode=0o755)
            variant = [] if self.spec.debian.variant == "default" else ["--variant=%s" % self.spec.debian.variant]
            include = ["--include=%s" % ",".join(packages)] if packages else []
            self._run(title, ["debootstrap", *variant, *include, release, str(self.tree), mirror],
                      private_mounts=True)
            installed = dpkg_installed(self.tree)
            notes.append("%d packages" % len(installed))
        self.manifest["debian"] = {"release": release, "mirror": mirror, "variant": self.spec.debian.variant,
                                   "packages": len(installed), "python3": installed.get("python3")}

    def _pip(self) -> None:
        title = "pip install"
        with self._step(title, " ".join(self.spec.pip)):
            config, env = host_pip_settings()
            (self.tree / "tmp" / "vmpool-pip.conf").write_text(config, encoding="utf-8")
            env["PIP_CONFIG_FILE"] = "/tmp/vmpool-pip.conf"
            shared = local_paths([config, *env.values()]) + [p for p in ("/etc/resolv.conf",) if os.path.exists(p)]
            created: list[Path] = []  # mount points that the image did not have
            script = ["set -e", "mount -t proc proc %s" % shlex.quote(str(self.tree / "proc"))]
            for host_path in shared:  # the host's find-links, file:// indexes, certs, constraints
                target = guest_path(self.tree, host_path)
                made = mount_point(target, is_dir=os.path.isdir(host_path))
                created += [made] if made else []
                script.append("mount --bind -o ro %s %s" % (shlex.quote(host_path), shlex.quote(str(target))))
            guest_env = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LC_ALL=C.UTF-8",
                         *("%s=%s" % item for item in sorted(env.items()))]
            pip = ["python3", "-m", "pip", "install", "--no-cache-dir", "--break-system-packages",
                   "--root-user-action=ignore", "--no-warn-script-location", *self.spec.pip]
            script.append("exec chroot %s env -i %s" % (shlex.quote(str(self.tree)), shlex.join([*guest_env, *pip])))
            try:
                self._run(title, ["sh", "-c", "\n".join(script)], private_mounts=True, tool="pip in the image")
            finally:
                for path in reversed(created):
                    remove(path)
                (self.tree / "tmp" / "vmpool-pip.conf").unlink()
            # what pip put into /usr/local, for the manifest: the versions this build resolved
            paths = ["--path=/%s" % path.relative_to(self.tree) for path in (self.tree / "usr/local/lib").glob("python3*/*-packages")]
            listing = self._run(title, ["chroot", str(self.tree), "/usr/bin/env", "-i", *guest_env[:3], "python3", "-m", "pip",
                                        "list", "--format=freeze", "--disable-pip-version-check", *paths],
                                tool="pip list in the image")
        self.manifest["pip"] = sorted(listing.split(), key=str.lower)

    def _inspect_python(self) -> None:
        """Ask the image's python3 (the agent's interpreter) its version and where its user site
        is with the sandbox's HOME and the spec's env: the drivers create that folder at every
        sandbox start, so it is on the sys.path of every python3 from the start, and a package
        pip installs there later is importable even by a process that was already running."""
        title = "inspect python3"
        with self._step(title) as notes:
            if not guest_path(self.tree, GUEST_PYTHON).is_file():
                raise TemplateError("building template %s failed at step '%s': the image has no %s, which "
                                    "runs the vmpool agent: add python3 to 'apt'" % (self.spec.name, title, GUEST_PYTHON))
            env = ["PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C.UTF-8", "HOME=%s" % HOME_DIR,
                   *("%s=%s" % item for item in sorted(self.spec.env.items()))]
            code = "import site, sys; print(sys.version.split()[0]); print(site.getusersitepackages())"
            output = self._run(title, ["chroot", str(self.tree), "/usr/bin/env", "-i", *env, GUEST_PYTHON, "-c", code],
                               tool="python3 in the image")
            version, user_site = output.splitlines()[-2:]
            notes.append("Python %s" % version)
        self.manifest["python"] = {"path": GUEST_PYTHON, "version": version, "user_site": user_site}

    def _trust_host_cas(self) -> None:
        """Add the certificate authorities the host trusts beyond the image's to the image's
        bundle (/etc/ssl/certs/ca-certificates.crt, from the ca-certificates package): a sandbox
        with network goes out through the host's network, so through any TLS-inspecting proxy
        the host uses, whose CA only the host's bundle has. As the kernel, this is the host's
        state at build time and no part of the hash (``--force`` rebuilds)."""
        with self._step("trust the host's certificate authorities", HOST_CA_BUNDLE) as notes:
            bundle = guest_path(self.tree, HOST_CA_BUNDLE)
            if not bundle.is_file():
                notes.append("skipped: the image has no %s (add ca-certificates to 'apt')" % HOST_CA_BUNDLE)
                added: list[str] = []
            else:
                text = bundle.read_text(encoding="utf-8", errors="replace")
                known = set(pem_certificates(text))
                added = [cert for cert in dict.fromkeys(pem_certificates(host_ca_bundle())) if cert not in known]
                if added:
                    bundle.write_text(text.rstrip("\n") + "\n" + "".join(cert + "\n" for cert in added), encoding="utf-8")
                notes.append("%d added" % len(added))
        self.manifest["host_ca_certificates_added"] = len(added)

    def _configure(self) -> None:
        with self._step("write files", "%d from the spec, /etc/vmpool/template.json" % len(self.spec.files)):
            info = {"format": FORMAT_VERSION, "name": self.spec.name, "hash": self.digest,
                    "env": self.spec.env, "start": self.spec.start, "vm": self.spec.vm.model_dump(),
                    "home": HOME_DIR, "python": self.manifest["python"]}
            self.manifest["guest"] = info
            files = [*((path, content.encode(), 0o644) for path, content in _IMAGE_ETC.items()),
                     *((entry.path, source_bytes(self.spec, entry), entry.mode) for entry in self.spec.files),
                     ("/etc/vmpool/template.json", (json.dumps(info, indent=2) + "\n").encode(), 0o644)]
            for path, content, mode in files:
                target = guest_path(self.tree, path)
                make_dirs(target.parent)
                target.write_bytes(content)
                target.chmod(mode)
            for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
                for junk in self.tree.glob(pattern):
                    remove(junk)

    def _mkfs(self) -> None:
        used, inodes = tree_usage(self.tree)
        size = -(-(used * 3 // 2 + 64 * _MIB) // _MIB) * _MIB  # generous: the image is sparse
        image = self.work / "rootfs.ext4"
        title = "mkfs.ext4"
        with self._step(title, "%d MiB of files in an image of %d MiB, sparse" % (used // _MIB, size // _MIB)) as notes:
            with open(image, "wb") as file:
                file.truncate(size)
            # -b/-I: mke2fs would pick 1 KiB blocks and 128-byte inodes for an image this small
            self._run(title, ["mkfs.ext4", "-q", "-F", "-L", "root", "-O", "^has_journal", "-b", "4096",
                              "-I", "256", "-N", str(max(inodes * 3 // 2, 16384)), "-d", str(self.tree), str(image)])
            notes.append("%d MiB allocated" % (image.stat().st_blocks * 512 // _MIB))
        self.manifest["sizes"] = {"rootfs": size, "rootfs_allocated": image.stat().st_blocks * 512, "tree": used}

    def _harden_tree(self) -> None:
        """Make the kept tree harmless on the host, where any user can reach the cache: no
        setuid/setgid bits (a stale setuid binary would be a way to root), no device nodes, nothing
        world-writable. The image already has the tree as debootstrap left it; the bwrap driver,
        which uses the tree, binds only /usr and /etc, nosuid, and brings its own /dev."""
        with self._step("harden the kept tree", "no setuid bits, device nodes or world-writable files") as notes:
            changed = 0
            for folder, dirs, files in os.walk(self.tree):
                for name in (*dirs, *files):
                    path = os.path.join(folder, name)
                    mode = os.lstat(path).st_mode
                    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                        os.unlink(path)
                    elif not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH):
                        os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH))
                    else:
                        continue
                    changed += 1
            os.chmod(self.tree, 0o755)
            notes.append("%d changed" % changed)

    def _kernel_and_busybox(self) -> None:
        title = "fetch kernel and busybox"
        with self._step(title, "apt-get download %s busybox-static" % KERNEL_META_PACKAGE) as notes:
            kernel_package = _kernel_package(self._run(
                title, ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE], hint=_APT_UPDATE_HINT))
            release = kernel_package.removeprefix("linux-image-")
            downloads = self.work / "downloads"
            downloads.mkdir()
            # root's apt would drop privileges to _apt, which cannot write into our 0700 folder
            self._run(title, ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", kernel_package,
                              "busybox-static"], cwd=downloads, hint=_APT_UPDATE_HINT)
            kernel_deb, = downloads.glob("linux-image-*.deb")
            busybox_deb, = downloads.glob("busybox-static_*.deb")
            self._run(title, ["dpkg-deb", "-x", str(kernel_deb), str(downloads / "kernel")])
            self._run(title, ["dpkg-deb", "-x", str(busybox_deb), str(downloads / "busybox")])
            shutil.copyfile(downloads / "kernel" / "boot" / ("vmlinuz-%s" % release), self.work / "vmlinuz")
            shutil.copyfile(downloads / "busybox" / "bin" / "busybox", self.work / "busybox")
            modules = self._copy_modules(downloads / "kernel", title)
            versions = [self._run(title, ["dpkg-deb", "-f", str(deb), "Version"]).strip()
                        for deb in (kernel_deb, busybox_deb)]
            shutil.rmtree(downloads)
            notes.append("kernel %s, %d modules" % (release, len(modules)))
        self.manifest["kernel"] = {"release": release, "package": kernel_package, "version": versions[0]}
        self.manifest["busybox"] = {"package": "busybox-static", "version": versions[1]}
        self.manifest["modules"] = modules

    def _copy_modules(self, unpacked: Path, title: str) -> list[str]:
        found = {path.name.removesuffix(".ko"): path for path in unpacked.rglob("*.ko")}
        missing = [name for name in REQUIRED_MODULES if name not in found]
        if missing:
            raise TemplateError("building template %s failed at step '%s': the kernel package has no %s"
                                % (self.spec.name, title, ", ".join("%s.ko" % name for name in missing)))
        modules = [name for name in (*REQUIRED_MODULES, *OPTIONAL_MODULES) if name in found]
        (self.work / "modules").mkdir()
        for name in modules:
            shutil.copyfile(found[name], self.work / "modules" / ("%s.ko" % name))
        return modules

    def _write_manifest(self, seconds: float) -> None:
        sizes = self.manifest.setdefault("sizes", {})
        sizes.update({"vmlinuz": (self.work / "vmlinuz").stat().st_size,
                      "busybox": (self.work / "busybox").stat().st_size,
                      "modules": sum(path.stat().st_size for path in (self.work / "modules").iterdir())})
        manifest = {
            "format": FORMAT_VERSION, "name": self.spec.name, "hash": self.digest, "recipe": RECIPE_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 1), **self.manifest,
        }
        (self.work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _kernel_package(apt_cache_show: str) -> str:
    """The versioned kernel package the meta package depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    match = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,(]*)", apt_cache_show, re.MULTILINE)
    if match is None:
        raise TemplateError("%s depends on no versioned linux-image package; %s" % (KERNEL_META_PACKAGE, _APT_UPDATE_HINT))
    return match.group(1)

