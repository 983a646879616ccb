"""Template specs: the YAML a template is declared in (`TemplateSpec`), loading one by name or
path (`load_spec`, with errors that name the file, line and key) and `spec_hash`, the digest of
everything a build depends on, which names the template's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ._errors import TemplateSpecError

__all__ = [
    "HOME_DIR", "RECIPE_VERSION", "TEMPLATES_DIR", "DebianSpec", "FileSpec", "TemplateSpec", "VmSpec", "load_spec",
    "source_bytes", "spec_hash", "template_names",
]

# Bump when the build steps change what a build contains: every hash, so every folder name,
# changes. 2: the root tree is kept beside the image (the bwrap driver runs on it) and
# template.json says where the home and the user site are.
RECIPE_VERSION = 2
HOME_DIR = "/home/user"  # the sandbox user's writable home in every sandbox started from a template
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


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
    """A template as declared in ``vmpool/templates/NAME.yaml``. Unknown keys are errors.

    What each key means for the two drivers (both run the same build; the microvm driver boots
    its ``rootfs.ext4``, the bwrap driver runs on its root tree):

    - ``debian``, ``apt``, ``pip``, ``files``: what the image holds. bwrap sandboxes see the
      template's /usr (so its python3 and everything pip installed in /usr/local), its /etc
      (with vmpool's passwd, group and hosts over it) and the /bin, /lib... links; nothing else
      of the image (no /var, /opt, /root, /home).
    - ``env``: added to the environment of the agent, so of every program and command, over
      vmpool's defaults (PATH, HOME=/home/user, TMPDIR, LANG, USER, LOGNAME).
    - ``start``: a shell command the microVM's init starts as root in the background before
      the agent. The bwrap driver refuses a template that has one: a bwrap sandbox has no
      root, and the agent's sweep after every program kills whatever else runs as its uid, so
      the command could neither do what it does in a VM nor survive the first program.
    - ``vm.memory_mib``, ``vm.vcpus``: the VM's size; ignored by bwrap (no VM; the agent's
      per-program limits apply).
    - ``vm.network``: microvm: QEMU's user-mode NAT; bwrap: the host's network namespace
      (``--share-net``) and the host's resolv.conf. Off: loopback only, on both.
    """

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
    try:
        _index_lines(node, (), lines)
    except TemplateSpecError as exc:
        raise TemplateSpecError("%s, %s" % (path, exc)) from None
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
    """Line of every key and item; a key given twice in one mapping is an error (YAML would keep
    the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            if key in out:
                raise TemplateSpecError("line %d: key %r appears twice (first on line %d)"
                                        % (key_node.start_mark.line + 1, ".".join(map(str, key)), out[key]))
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
                sources[entry.source] = hashlib.sha256(source_bytes(spec, entry)).hexdigest()
            except OSError as exc:
                raise TemplateSpecError("template %s: files[%d].source %s cannot be read: %s"
                                        % (spec.name, i, entry.source, exc.strerror or exc)) from None
    payload = {"recipe": RECIPE_VERSION, "spec": spec.model_dump(mode="json"), "sources": sources}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def source_bytes(spec: TemplateSpec, entry: FileSpec) -> bytes:
    """What `entry` writes into the image: its inline content or its source file's bytes."""
    if entry.content is not None:
        return entry.content.encode()
    return (spec._base_dir / str(entry.source)).read_bytes()
