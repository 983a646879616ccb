"""`vmpool doctor`: what this host can run, why, and what to install to run more.

`diagnose()` gathers the facts (drivers, accelerator, tools, template cache) as plain data;
`render()` turns them into the lines the CLI prints. Nothing here starts a sandbox.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from . import _vm_accel
from ._driver import get_driver, list_drivers, resolve_driver
from ._errors import VmpoolError

__all__ = ["diagnose", "render"]

# tool -> (what needs it, the command that installs it)
TOOLS = {
    "bwrap": ("the bwrap driver, and confining QEMU", "apt-get install bubblewrap"),
    "qemu-system-x86_64": ("the microvm driver", "apt-get install --no-install-recommends qemu-system-x86"),
    "debootstrap": ("building templates", "apt-get install debootstrap"),
    "mkfs.ext4": ("building templates", "apt-get install e2fsprogs"),
    "apt-get": ("building templates (kernel and busybox packages)", "a Debian or Ubuntu host"),
    "dpkg-deb": ("building templates (kernel and busybox packages)", "a Debian or Ubuntu host"),
}


def _version(tool: str, path: str) -> str:
    try:
        flag = "-V" if tool == "mkfs.ext4" else "--version"
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "?"


def _templates() -> list[dict[str, Any]]:
    from ._templates import cached, load_spec, spec_hash, template_names

    rows: list[dict[str, Any]] = []
    for name in template_names():
        try:
            spec = load_spec(name)
            digest = spec_hash(spec)
        except VmpoolError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        built = cached(name)
        snapshot = _snapshot(built) if built else None
        rows.append({"name": name, "hash": digest[:16], "built": built is not None,
                     "dir": str(built.dir) if built else None, "snapshot": snapshot,
                     "command": None if built else "vmpool template build %s" % name})
    return rows


def _snapshot(built: Any) -> str | None:
    """The cached snapshot of `built` for this host's QEMU and accelerator, if there is one."""
    from ._microvm import snapshot_path

    try:
        path = snapshot_path(built)
    except (VmpoolError, OSError):
        return None
    return str(path) if path is not None and path.exists() else None


def diagnose() -> dict[str, Any]:
    """Facts about this host as a JSON-able dict (see `render` for their meaning)."""
    tools = {}
    for tool, (purpose, fix) in TOOLS.items():
        path = shutil.which(tool)
        tools[tool] = {"path": path, "purpose": purpose,
                       "version": _version(tool, path) if path and tool != "apt-get" else None,
                       "fix": None if path else fix}
    drivers = {}
    for name in list_drivers():
        try:
            driver = get_driver(name)
            reason, auto = driver.available(), driver.auto_reason()
            isolation = driver.isolation()
        except VmpoolError as exc:
            reason, auto, isolation = str(exc), str(exc), "?"
        drivers[name] = {"usable": reason is None, "reason": reason, "auto": auto is None,
                         "auto_reason": auto, "isolation": isolation}
    try:
        auto_choice: str | None = resolve_driver("auto")
    except VmpoolError:
        auto_choice = None
    accel = _vm_accel.accelerator()  # what VMs really use here (after a failed KVM boot: TCG)
    return {"drivers": drivers, "auto": auto_choice, "tools": tools,
            "accelerator": {"name": accel.name, "machine": accel.machine, "reason": accel.reason},
            "templates": _templates()}


def render(facts: dict[str, Any]) -> list[str]:
    lines = ["drivers:"]
    for name, info in facts["drivers"].items():
        if info["usable"]:
            lines.append("  %-8s usable%s" % (name, "" if info["auto"] else " when asked for by name (auto skips it)"))
            lines.append("  %-8s isolation: %s" % ("", info["isolation"]))
        else:
            lines.append("  %-8s not usable: %s" % (name, info["reason"]))
    lines.append("  auto picks: %s" % (facts["auto"] or "nothing (see above)"))
    accel = facts["accelerator"]
    lines.append("accelerator: %s with machine %s — %s" % (accel["name"], accel["machine"], accel["reason"]))
    lines.append("tools:")
    for tool, info in facts["tools"].items():
        if info["path"]:
            lines.append("  %-19s %s%s" % (tool, info["path"], " (%s)" % info["version"] if info["version"] else ""))
        else:
            lines.append("  %-19s MISSING, needed for %s; fix: %s" % (tool, info["purpose"], info["fix"]))
    lines.append("templates:")
    for row in facts["templates"]:
        if "error" in row:
            lines.append("  %-16s broken spec: %s" % (row["name"], row["error"]))
        elif row["built"]:
            lines.append("  %-16s built (%s) in %s" % (row["name"], row["hash"], row["dir"]))
            lines.append("  %-16s snapshot: %s" % ("", row["snapshot"] or "none yet (made by the first sandbox, a few seconds)"))
        else:
            lines.append("  %-16s not built (%s); build with: %s" % (row["name"], row["hash"], row["command"]))
    return lines
