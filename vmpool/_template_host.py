"""What a template build takes from the host so that it fetches what the host's own tools would:
the Debian mirror of the host's apt sources and pip's configuration, with the local paths that
configuration names (pip in the image must see them too); and, for a template with network, the
certificate authorities the host trusts (`host_ca_bundle`): where the host reaches the internet
through a TLS-inspecting proxy, a sandbox using the host's network meets the same proxy.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import sys
from pathlib import Path

__all__ = ["DEFAULT_MIRROR", "HOST_CA_BUNDLE", "host_ca_bundle", "host_mirror", "host_pip_settings", "local_paths",
           "pem_certificates"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, and the image's, bundle
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


def host_ca_bundle() -> str:
    """The PEM certificates the host's TLS clients trust: $SSL_CERT_FILE if set, else Debian's
    bundle; "" if there is none."""
    for path in (os.environ.get("SSL_CERT_FILE"), HOST_CA_BUNDLE):
        if path and os.path.isfile(path):
            try:
                return Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
    return ""


def pem_certificates(text: str) -> list[str]:
    """The PEM certificate blocks in `text`, each with single-spaced lines, in order."""
    return ["\n".join(line.strip() for line in block.splitlines() if line.strip()) for block in _PEM.findall(text)]


def host_pip_settings() -> tuple[str, dict[str, str]]:
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


def local_paths(values: list[str]) -> list[str]:
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


def host_mirror(release: str) -> str:
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
