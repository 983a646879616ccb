"""The folders a template build writes: the image's root tree before it becomes rootfs.ext4
(guest paths resolved inside it as the guest would resolve them, bind-mount points, its size,
what dpkg installed in it) and folders that QEMU's uid can traverse.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ._errors import TemplateError

__all__ = ["dpkg_installed", "guest_path", "make_dirs", "mount_point", "remove", "tree_usage"]


def make_dirs(path: Path) -> None:
    """Create `path` and missing parents as 0755 (QEMU's uid must traverse them)."""
    if not path.exists():
        make_dirs(path.parent)
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


def dpkg_installed(tree: Path) -> dict[str, str]:
    """package -> version of what dpkg in `tree` has installed."""
    installed = {}
    for paragraph in (tree / "var/lib/dpkg/status").read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Status|Version): (.*)$", paragraph, re.MULTILINE))
        if fields.get("Status") == "install ok installed":
            installed[fields["Package"]] = fields.get("Version", "")
    return installed


def tree_usage(tree: Path) -> tuple[int, int]:
    """(bytes allocated, number of inodes) of the files under `tree`, links not followed."""
    used, inodes = 0, 0
    for folder, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            used += os.lstat(os.path.join(folder, name)).st_blocks * 512
            inodes += 1
    return used, inodes


def guest_path(tree: Path, path: str) -> Path:
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


def mount_point(target: Path, *, is_dir: bool) -> Path | None:
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


def remove(path: Path) -> None:
    """Delete a file, symlink or folder tree (a symlink itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()

