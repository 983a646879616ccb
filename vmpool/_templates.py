"""VM templates: the root image, kernel, modules and busybox the microvm driver boots.

A template is declared in ``vmpool/templates/NAME.yaml`` (format: `TemplateSpec`) and built
by `build` into the cache folder (`cache_dir`)::

    <cache>/templates/<name>-<hash16>/
        rootfs.ext4    Debian root filesystem (debootstrap), ext4 without journal, sparse; holds
                       /etc/vmpool/template.json (format, name, hash, env, start, vm)
        vmlinuz        the Debian cloud kernel (a bzImage)
        modules/       the kernel modules the driver loads, plain .ko files side by side;
                       manifest["modules"] lists them in load order
        busybox        a static busybox (from busybox-static), for the driver's initramfs
        manifest.json  what was built from what, when, in how long, and the sizes
        build.log      the build tools' output

<hash16> is the start of `spec_hash`: the spec as canonical JSON, `RECIPE_VERSION` and the
content of every ``source`` file. The kernel and busybox are what the host's apt offers at
build time and do not enter the hash: a newer kernel alone rebuilds nothing (``--force`` does).

Building needs root (debootstrap, chroot, mounts). It happens in a folder next to the final one
that is renamed into place at the end, under an flock per template and hash: a second build of
the same template waits, then uses the first one's result. A failed or interrupted build leaves
nothing behind; the leftovers of a killed one go at the next build. Every mount a build makes
lives in a private mount namespace (``unshare --mount``), so none outlives the tool that made
it and no cleanup can delete through one. Artifacts are world-readable (folders 0755, files
0644, busybox 0755) because QEMU reads them as uid 65534. Nothing is installed on the host: the
kernel and busybox packages are fetched with ``apt-get download``, unpacked with ``dpkg-deb -x``.

Errors: `TemplateSpecError` for a spec or template name the user got wrong (one sentence naming
the file, line and key), `TemplateError` for a build that failed (the step, the tool's status
and the tail of its output). Both are `vmpool.VmpoolError`s.
"""

from __future__ import annotations

import configparser
import datetime
import fcntl
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ._errors import VmpoolError

__all__ = [
    "BuiltTemplate", "TemplateError", "TemplateSpec", "TemplateSpecError", "build", "cache_dir",
    "cached", "ensure_built", "load_spec", "spec_hash", "template_names",
]

RECIPE_VERSION = 1  # bump when the build steps change what an image contains: every hash changes
FORMAT_VERSION = 1  # of manifest.json and /etc/vmpool/template.json
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
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
# host (the driver's init writes resolv.conf for a template with network). The spec's files win.
_IMAGE_ETC = {"/etc/hostname": "vmpool\n", "/etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"}
_APT_UPDATE_HINT = ("the host's apt lists are missing or stale: run `apt-get update` "
                    "(the kernel and busybox are fetched with apt-get download)")

Progress = Callable[[str], None]


class TemplateError(VmpoolError):
    """A template could not be built or found: the message names the step that failed, the
    tool's exit status and the tail of its output, or what to do (e.g. run as root)."""


class TemplateSpecError(TemplateError):
    """A template name is unknown or its spec is invalid: one sentence naming file, line, key."""


# --- the spec ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DebianSpec(_Strict):
    release: str = Field("bookworm", pattern=r"^[a-z][a-z0-9-]*$")
    mirror: str | None = Field(None, pattern=r"^(https?|file):/")  # None: the host's apt mirror
    variant: Literal["minbase", "buildd", "default"] = "minbase"  # "default": debootstrap's own


class FileSpec(_Strict):
    """A file written into the image: inline ``content``, or ``source`` (a path relative to the
    spec file's folder; the working directory for a spec made in code)."""

    path: str
    content: str | None = None
    source: str | None = None
    mode: int = Field(0o644, ge=0, le=0o7777)

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
            raise ValueError("must be an absolute, normalized guest path of a file")
        return path

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, mode: object) -> object:
        if isinstance(mode, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", mode):
            return int(mode.removeprefix("0o"), 8)
        return mode  # YAML 1.1 already reads 0755 as an octal int

    @model_validator(mode="after")
    def _one_origin(self) -> FileSpec:
        if (self.content is None) == (self.source is None):
            raise ValueError("give exactly one of 'content' and 'source'")
        if self.source is not None and os.path.isabs(self.source):
            raise ValueError("'source' must be relative to the spec file's folder")
        return self


class VmSpec(_Strict):
    memory_mib: int = Field(512, ge=64, le=1 << 20)
    vcpus: int = Field(1, ge=1, le=256)
    network: bool = False


class TemplateSpec(_Strict):
    """A template as declared in ``vmpool/templates/NAME.yaml``. Unknown keys are errors."""

    version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    debian: DebianSpec = Field(default_factory=DebianSpec)
    apt: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    files: list[FileSpec] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    start: str | None = Field(None, min_length=1)
    vm: VmSpec = Field(default_factory=VmSpec)

    _base_dir: Path = PrivateAttr(default_factory=Path)  # what `source` paths are relative to

    @field_validator("apt")
    @classmethod
    def _packages(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
                raise ValueError("%r is not a Debian package name" % name)
        return sorted(set(names))  # the order debootstrap gets them in does not matter

    @field_validator("pip")
    @classmethod
    def _requirements(cls, requirements: list[str]) -> list[str]:
        if any(not r.strip() or r.lstrip().startswith("-") for r in requirements):
            raise ValueError("must be requirement strings (e.g. 'numpy==2.1.3'), not options")
        return requirements

    @field_validator("env")
    @classmethod
    def _variables(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError("%r is not an environment variable name" % key)
        return env

    def packages(self) -> list[str]:
        """What debootstrap is asked to include: `apt`, plus python3-pip when `pip` is used."""
        return sorted(set(self.apt) | ({"python3-pip"} if self.pip else set()))


def template_names() -> list[str]:
    """The templates shipped with vmpool (``vmpool/templates/*.yaml``)."""
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | os.PathLike[str]) -> TemplateSpec:
    """The spec of a shipped template (by name) or of a YAML file (a path: it contains a "/" or
    ends in .yaml). TemplateSpecError naming the file, line and key on any problem."""
    text = os.fspath(name_or_path)
    if "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
    elif text in template_names():
        path = TEMPLATES_DIR / ("%s.yaml" % text)
    else:
        raise TemplateSpecError("unknown template %r (known: %s; or give the path of a YAML spec)"
                                % (text, ", ".join(template_names())))
    try:
        source = path.read_text(encoding="utf-8")
        node = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateSpecError("cannot read template spec %s: %s" % (path, exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = ", line %d" % (mark.line + 1) if mark else ""
        raise TemplateSpecError("%s%s: invalid YAML: %s" % (path, where, exc.problem or exc)) from None
    except yaml.YAMLError as exc:
        raise TemplateSpecError("%s: invalid YAML: %s" % (path, " ".join(str(exc).split()))) from None
    if not isinstance(data, dict):
        raise TemplateSpecError("%s: a template spec must be a YAML mapping of keys to values" % path)
    lines: dict[tuple[str | int, ...], int] = {}
    _index_lines(node, (), lines)
    data.setdefault("name", path.stem)
    try:
        spec = TemplateSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, path, lines) from None
    if spec.name != path.stem:
        raise TemplateSpecError("%s: name %r differs from the file's name: a template's name is its "
                                "file's (%s.yaml)" % (path, spec.name, spec.name))
    spec._base_dir = path.resolve().parent
    return spec


def _index_lines(node: yaml.Node | None, prefix: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            _index_lines(item, (*prefix, i), out)


def _spec_error(exc: ValidationError, path: Path, lines: dict[tuple[str | int, ...], int]) -> TemplateSpecError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(part) if isinstance(part, str) else "[%d]" % part for part in loc).replace(".[", "[")
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = "%s, line %d" % (path, line) if line else str(path)
    if err["type"] == "extra_forbidden":
        return TemplateSpecError("%s: unknown key '%s'" % (where, key))
    if err["type"] == "missing":
        return TemplateSpecError("%s: missing required key '%s'" % (where, key))
    message = str(err["msg"]).removeprefix("Value error, ")
    return TemplateSpecError("%s: '%s': %s, got %r" % (where, key, message[:1].lower() + message[1:], err["input"]))


def spec_hash(spec: TemplateSpec) -> str:
    """The sha256 (hex) of what a build depends on: the spec as canonical JSON, the recipe
    version and the content of every ``source`` file. Key order in the YAML does not matter."""
    sources = {}
    for i, entry in enumerate(spec.files):
        if entry.source is not None:
            try:
                sources[entry.source] = hashlib.sha256(_source_bytes(spec, entry)).hexdigest()
            except OSError as exc:
                raise TemplateSpecError("template %s: files[%d].source %s cannot be read: %s"
                                        % (spec.name, i, entry.source, exc.strerror or exc)) from None
    payload = {"recipe": RECIPE_VERSION, "spec": spec.model_dump(mode="json"), "sources": sources}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _source_bytes(spec: TemplateSpec, entry: FileSpec) -> bytes:
    if entry.content is not None:
        return entry.content.encode()
    return (spec._base_dir / str(entry.source)).read_bytes()


# --- the cache -----------------------------------------------------------------------------


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
    kernel: Path
    modules_dir: Path
    busybox: Path
    manifest: dict[str, Any]
    spec: TemplateSpec

    @property
    def modules(self) -> list[Path]:
        """The kernel modules, in the order to load them."""
        return [self.modules_dir / ("%s.ko" % name) for name in self.manifest["modules"]]

    def disk_usage(self) -> int:
        """Bytes the folder takes on disk (the root image is sparse: far less than its size)."""
        return sum(entry.lstat().st_blocks * 512 for entry in self.dir.rglob("*"))


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
                          kernel=folder / "vmlinuz", modules_dir=folder / "modules",
                          busybox=folder / "busybox", manifest=manifest, spec=spec)
    if not all(path.exists() for path in (built.rootfs, built.kernel, built.busybox, *built.modules)):
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
    _check_can_build(spec)
    final = _folder(spec, digest)
    with _locked(final.with_name(".%s.lock" % final.name), spec.name, say) as lock_fd:
        if not force and (done := cached(spec)) is not None:  # another process built it meanwhile
            return done
        for leftover in final.parent.glob(".%s.*-*" % final.name):  # of a killed build of ours
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".%s.build-" % final.name, dir=final.parent))
        try:
            _Build(spec, digest, work, say, lock_fd).run()
            _publish(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    built = cached(spec)
    if built is None:
        raise TemplateError("template %s was built in %s but cannot be read back" % (spec.name, final))
    return built


def _check_can_build(spec: TemplateSpec) -> None:
    if os.geteuid() != 0:
        raise TemplateError(
            "building template %s needs root (debootstrap, chroot and mounts): run `vmpool template "
            "build %s` as root, with VMPOOL_CACHE_DIR=%s to build into this user's cache"
            % (spec.name, spec.name, cache_dir()))
    for tool, package in _TOOLS.items():
        if shutil.which(tool, path=_tool_path()) is None:
            raise TemplateError("building templates needs %s: install it with apt-get install %s" % (tool, package))


def _tool_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


def _make_dirs(path: Path) -> None:
    """Create `path` and missing parents as 0755 (QEMU's uid must traverse them)."""
    if not path.exists():
        _make_dirs(path.parent)
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


@contextmanager
def _locked(lock_path: Path, name: str, say: Progress) -> Iterator[int]:
    """Hold the build lock of one template and hash; yields its file descriptor."""
    _make_dirs(lock_path.parent)
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
    for folder, _, files in os.walk(work):
        os.chmod(folder, 0o755)
        for file in files:
            os.chmod(os.path.join(folder, file), 0o755 if file == "busybox" else 0o644)
    old = None
    if final.exists():  # --force, or an earlier build someone damaged
        old = final.with_name(".%s.old-%d" % (final.name, os.getpid()))
        os.rename(final, old)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the build -----------------------------------------------------------------------------


class _Build:
    """One build of one spec into the folder `work`; `run` lists the steps."""

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
        started = time.monotonic()
        self.say("building template %s (%s) in %s" % (self.spec.name, self.digest[:16], self.work.parent))
        self._debootstrap()
        if self.spec.pip:
            self._pip()
        self._configure()
        self._mkfs()
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
        mirror = self.spec.debian.mirror or _host_mirror(release)
        title = "debootstrap %s" % release
        with self._step(title, "%s + %s, from %s" % (self.spec.debian.variant, ", ".join(packages) or "nothing", mirror)) as notes:
            self.tree.mkdir(mode=0o755)
            variant = [] if self.spec.debian.variant == "default" else ["--variant=%s" % self.spec.debian.variant]
            include = ["--include=%s" % ",".join(packages)] if packages else []
            self._run(title, ["debootstrap", *variant, *include, release, str(self.tree), mirror],
                      private_mounts=True)
            installed = _dpkg_installed(self.tree)
            notes.append("%d packages" % len(installed))
        self.manifest["debian"] = {"release": release, "mirror": mirror, "variant": self.spec.debian.variant,
                                   "packages": len(installed), "python3": installed.get("python3")}

    def _pip(self) -> None:
        title = "pip install"
        with self._step(title, " ".join(self.spec.pip)):
            config, env = _host_pip_settings()
            (self.tree / "tmp" / "vmpool-pip.conf").write_text(config, encoding="utf-8")
            env["PIP_CONFIG_FILE"] = "/tmp/vmpool-pip.conf"
            shared = _local_paths([config, *env.values()]) + [p for p in ("/etc/resolv.conf",) if os.path.exists(p)]
            created: list[Path] = []  # mount points that the image did not have
            script = ["set -e", "mount -t proc proc %s" % shlex.quote(str(self.tree / "proc"))]
            for host_path in shared:  # the host's find-links, file:// indexes, certs, constraints
                target = _guest_path(self.tree, host_path)
                made = _mount_point(target, is_dir=os.path.isdir(host_path))
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
                    _remove(path)
                (self.tree / "tmp" / "vmpool-pip.conf").unlink()

    def _configure(self) -> None:
        with self._step("write files", "%d from the spec, /etc/vmpool/template.json" % len(self.spec.files)):
            (self.tree / "etc" / "resolv.conf").unlink(missing_ok=True)
            info = {"format": FORMAT_VERSION, "name": self.spec.name, "hash": self.digest,
                    "env": self.spec.env, "start": self.spec.start, "vm": self.spec.vm.model_dump()}
            files = [*((path, content.encode(), 0o644) for path, content in _IMAGE_ETC.items()),
                     *((entry.path, _source_bytes(self.spec, entry), entry.mode) for entry in self.spec.files),
                     ("/etc/vmpool/template.json", (json.dumps(info, indent=2) + "\n").encode(), 0o644)]
            for path, content, mode in files:
                target = _guest_path(self.tree, path)
                _make_dirs(target.parent)
                target.write_bytes(content)
                target.chmod(mode)
            for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
                for junk in self.tree.glob(pattern):
                    _remove(junk)

    def _mkfs(self) -> None:
        used, inodes = _tree_usage(self.tree)
        size = -(-(used * 3 // 2 + 64 * _MIB) // _MIB) * _MIB  # generous: the image is sparse
        image = self.work / "rootfs.ext4"
        title = "mkfs.ext4"
        with self._step(title, "%d MiB of files in an image of %d MiB, sparse" % (used // _MIB, size // _MIB)) as notes:
            with open(image, "wb") as file:
                file.truncate(size)
            # -b/-I: mke2fs would pick 1 KiB blocks and 128-byte inodes for an image this small
            self._run(title, ["mkfs.ext4", "-q", "-F", "-L", "root", "-O", "^has_journal", "-b", "4096",
                              "-I", "256", "-N", str(max(inodes * 3 // 2, 16384)), "-d", str(self.tree), str(image)])
            shutil.rmtree(self.tree)
            notes.append("%d MiB allocated" % (image.stat().st_blocks * 512 // _MIB))
        self.manifest["sizes"] = {"rootfs": size, "rootfs_allocated": image.stat().st_blocks * 512, "tree": used}

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


def _dpkg_installed(tree: Path) -> dict[str, str]:
    """package -> version of what dpkg in `tree` has installed."""
    installed = {}
    for paragraph in (tree / "var/lib/dpkg/status").read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Status|Version): (.*)$", paragraph, re.MULTILINE))
        if fields.get("Status") == "install ok installed":
            installed[fields["Package"]] = fields.get("Version", "")
    return installed


def _tree_usage(tree: Path) -> tuple[int, int]:
    """(bytes allocated, number of inodes) of the files under `tree`, links not followed."""
    used, inodes = 0, 0
    for folder, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            used += os.lstat(os.path.join(folder, name)).st_blocks * 512
            inodes += 1
    return used, inodes


def _guest_path(tree: Path, path: str) -> Path:
    """Where guest path `path` is inside `tree`, resolving the tree's symlinks as the guest
    would: an absolute link target is relative to the tree, never to the host's root (the
    tree has some, e.g. /etc/localtime, and writing through one would change the host)."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        candidate = tree.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        links += 1
        if links > 40:
            raise TemplateError("guest path %s: too many levels of symbolic links" % path)
        target = os.readlink(candidate)
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        resolved = [] if target.startswith("/") else resolved
    return tree.joinpath(*resolved)


def _mount_point(target: Path, *, is_dir: bool) -> Path | None:
    """Create `target` for a bind mount if it is missing; the outermost path created, if any."""
    if target.exists():
        return None
    outermost = target
    while not outermost.parent.exists():
        outermost = outermost.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        target.mkdir()
    else:
        target.touch()
    return outermost


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _host_pip_settings() -> tuple[str, dict[str, str]]:
    """The host's pip configuration, so that pip in the image finds packages as the host's pip
    does: its config files merged in pip's order of precedence, and its PIP_* variables."""
    env = {key: value for key, value in os.environ.items() if key.startswith("PIP_") and key != "PIP_CONFIG_FILE"}
    files: list[str] = []
    if os.environ.get("PIP_CONFIG_FILE") != os.devnull:  # pip's way of saying "no config files"
        xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        xdg_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        files = [*(os.path.join(d, "pip", "pip.conf") for d in reversed(xdg_dirs.split(":"))), "/etc/pip.conf",
                 os.path.expanduser("~/.pip/pip.conf"), os.path.join(xdg_home, "pip", "pip.conf"),
                 os.path.join(sys.prefix, "pip.conf"), *filter(None, [os.environ.get("PIP_CONFIG_FILE")])]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(files, encoding="utf-8")
    text = io.StringIO()
    parser.write(text)
    return text.getvalue(), env


def _local_paths(values: list[str]) -> list[str]:
    """Host paths that pip settings name and pip in the image must see: find-links folders,
    certificate and constraint files, and for a file:// index the folder above it (an index
    ``ROOT/simple`` usually links its files as ``ROOT/files/...``). Never a top-level folder,
    which would hide the image's own (/etc, /usr...)."""
    paths: list[str] = []
    for word in " ".join(values).split():
        path = os.path.normpath(word.removeprefix("file://"))
        if word.startswith("file://") and path.count("/") > 2:
            path = os.path.dirname(path)
        if path.startswith("/") and os.path.exists(path) and path not in paths:
            if os.path.isfile(path) or path.count("/") >= 2:
                paths.append(path)
    return paths


def _host_mirror(release: str) -> str:
    """The Debian mirror the host's apt sources use for `release`, else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    entries: list[tuple[list[str], list[str]]] = []
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        for line in _read_lines(path):
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append(([words[1]], [words[2]]))
    for path in sorted(sources.glob("*.sources")):
        for paragraph in "\n".join(_read_lines(path)).split("\n\n"):
            fields = {key.lower(): value.split() for key, value in re.findall(r"^([\w-]+):(.*)$", paragraph, re.MULTILINE)}
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                entries.append((fields.get("uris", []), fields.get("suites", [])))
    for uris, suites in entries:
        if release in suites and uris:
            return uris[0].rstrip("/")
    return DEFAULT_MIRROR


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    except OSError:
        return []
