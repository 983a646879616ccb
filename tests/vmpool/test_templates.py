"""VM templates: spec validation, hashing, where the cache is, `vmpool template`, and the real
`base` template's artifacts (scripts/setup.sh builds it; these tests build it if it is not)."""

import json
import os
import re
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmpool._cli import cli
from vmpool._errors import VmpoolError
from vmpool._template_build import REQUIRED_MODULES
from vmpool._template_host import pem_certificates
from vmpool._templates import (
    BuiltTemplate,
    TemplateError,
    TemplateSpecError,
    build,
    cache_dir,
    cached,
    ensure_built,
    load_spec,
    spec_hash,
    template_names,
)


def _write_spec(folder: Path, text: str, name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("%s.yaml" % name)
    path.write_text(text)
    return path


def _spec_error(path: Path) -> str:
    with pytest.raises(TemplateSpecError) as info:
        load_spec(path)
    return str(info.value)


def test_base_is_debian_minbase_with_python() -> None:
    assert "base" in template_names()
    spec = load_spec("base")
    assert (spec.name, spec.debian.release, spec.debian.variant) == ("base", "bookworm", "minbase")
    assert spec.packages() == ["python3"] and spec.pip == [] and spec.vm.network is False
    assert issubclass(TemplateSpecError, TemplateError) and issubclass(TemplateError, VmpoolError)


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, "name: t\ndebian:\n  relase: trixie\n")
    assert _spec_error(path) == "%s, line 3: unknown key 'debian.relase'" % path
    path = _write_spec(tmp_path, "name: t\ncolour: red\n")
    assert _spec_error(path) == "%s, line 2: unknown key 'colour'" % path


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, "name: t\napt: [python3]\nvm: {vcpus: 1}\napt: [curl]\n")
    assert _spec_error(path) == "%s, line 4: key 'apt' appears twice (first on line 2)" % path


@pytest.mark.parametrize("text, key", [
    ("vm:\n  memory_mib: lots\n", "vm.memory_mib"),
    ("vm:\n  network: 'yes'\n", "vm.network"),
    ("apt: python3\n", "apt"),
    ("apt: [Not_A_Package]\n", "apt"),
    ("pip: ['--index-url=http://example.org']\n", "pip"),
    ("env:\n  FOO: 1\n", "env.FOO"),
    ("env:\n  1FOO: x\n", "env"),
    ("debian:\n  variant: full\n", "debian.variant"),
    ("files:\n  - path: etc/motd\n    content: hi\n", "files[0].path"),
    ("files:\n  - path: /etc/motd\n    content: hi\n    source: motd\n", "files[0]"),
    ("files:\n  - path: /etc/motd\n", "files[0]"),
    ("files:\n  - path: /etc/motd\n    content: hi\n    mode: '0999'\n", "files[0].mode"),
])
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = _write_spec(tmp_path, "name: t\n" + text)
    message = _spec_error(path)
    assert message.startswith(str(path)) and "'%s'" % key in message, message


def test_other_spec_mistakes(tmp_path: Path) -> None:
    assert "invalid YAML" in _spec_error(_write_spec(tmp_path, "name: [t\n"))
    assert "YAML mapping" in _spec_error(_write_spec(tmp_path, "- t\n"))
    assert "differs from the file's name" in _spec_error(_write_spec(tmp_path, "name: other\n"))
    assert "cannot read template spec %s" % (tmp_path / "missing.yaml") in _spec_error(tmp_path / "missing.yaml")
    with pytest.raises(TemplateSpecError, match="unknown template 'nope' \\(known: .*base"):
        load_spec("nope")


def test_octal_modes_and_defaults(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, "files:\n  - {path: /a, content: x, mode: 0755}\n"
                                 "  - {path: /b, content: x, mode: '0640'}\n  - {path: /c, content: x}\n")
    spec = load_spec(path)
    assert spec.name == "t"  # from the file name when not given
    assert [entry.mode for entry in spec.files] == [0o755, 0o640, 0o644]
    assert (spec.vm.memory_mib, spec.vm.vcpus, spec.debian.mirror) == (512, 1, None)


def test_hash_is_stable_and_ignores_key_order(tmp_path: Path) -> None:
    a = _write_spec(tmp_path / "a", "name: t\napt: [python3, curl]\nvm: {vcpus: 2, memory_mib: 256}\n")
    b = _write_spec(tmp_path / "b", "vm: {memory_mib: 256, vcpus: 2}\napt: [curl, python3]\nname: t\n")
    assert re.fullmatch(r"[0-9a-f]{64}", spec_hash(load_spec(a)))
    assert spec_hash(load_spec(a)) == spec_hash(load_spec(a)) == spec_hash(load_spec(b))
    # stating a default is the same spec as leaving it out
    c = _write_spec(tmp_path / "c", "name: t\n")
    d = _write_spec(tmp_path / "d", "name: t\ndebian: {release: bookworm}\nvm: {memory_mib: 512}\n")
    assert spec_hash(load_spec(c)) == spec_hash(load_spec(d))


def test_hash_changes_with_what_the_image_contains(tmp_path: Path) -> None:
    base = "name: t\napt: [python3]\nfiles:\n  - {path: /opt/run.sh, source: run.sh}\n"
    path = _write_spec(tmp_path, base)
    (tmp_path / "run.sh").write_text("echo one\n")
    first = spec_hash(load_spec(path))
    path.write_text(base.replace("[python3]", "[python3, curl]"))
    assert spec_hash(load_spec(path)) != first
    path.write_text(base)
    assert spec_hash(load_spec(path)) == first
    (tmp_path / "run.sh").write_text("echo two\n")
    assert spec_hash(load_spec(path)) != first
    (tmp_path / "run.sh").unlink()
    with pytest.raises(TemplateSpecError, match=r"files\[0\].source run.sh cannot be read"):
        spec_hash(load_spec(path))


def test_cache_dir_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("VMPOOL_CACHE_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cache_dir() == Path("/var/cache/vmpool")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vmpool"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says to ignore it
    assert cache_dir() == tmp_path / "home" / ".cache" / "vmpool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "vmpool"


def test_building_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TemplateError, match="building template base needs root"):
        build("base")
    assert list(tmp_path.iterdir()) == []


def test_an_older_build_or_one_without_its_tree_is_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # what a build of an older vmpool left (format 1: no tree) is rebuilt, not used half-way
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path))
    spec = load_spec("base")
    digest = spec_hash(spec)
    folder = tmp_path / "templates" / ("base-%s" % digest[:16])
    (folder / "modules").mkdir(parents=True)
    for name in ("rootfs.ext4", "vmlinuz", "busybox", "modules/virtio.ko"):
        (folder / name).write_bytes(b"x")
    manifest = {"format": 1, "hash": digest, "modules": ["virtio"],
                "python": {"path": "/usr/bin/python3", "version": "3.11.2", "user_site": "/home/user/.local/lib"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert cached(spec) is None
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, format=2)))
    assert cached(spec) is None  # no tree
    (folder / "tree" / "usr").mkdir(parents=True)
    built = cached(spec)
    assert built is not None and built.tree == folder / "tree" and built.user_site == "/home/user/.local/lib"


def test_pem_certificates_are_compared_whatever_their_spacing() -> None:
    one = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----"
    two = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----"
    text = "# a comment\n%s\n\n  %s  \r\n" % (one.replace("\n", "\r\n"), two)
    assert pem_certificates(text) == [one, two]
    assert pem_certificates("no certificate here") == []


def test_template_list_when_nothing_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["template", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert set(lines) == set(template_names())
    assert lines["base"] == [spec_hash(load_spec("base"))[:16], "not", "built"]


@pytest.mark.parametrize("args, expected", [
    (["no-such-template"], "unknown template 'no-such-template'"),
    ([], "Missing argument 'NAME'"),
    (["base", "--bogus"], "--bogus"),
])
def test_template_build_bad_arguments(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(cli, ["template", "build", *args])
    assert result.exit_code == 3, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmpool template: error: ") and expected in lines[0], lines


def test_template_build_invalid_spec_is_a_bad_argument(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, "name: t\nvm: {cpus: 2}\n")
    result = CliRunner().invoke(cli, ["template", "build", str(path)])
    assert result.exit_code == 3 and "unknown key 'vm.cpus'" in result.stderr


@pytest.mark.slow
def test_failed_build_names_the_step_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # about 7 s: debootstrap fetches the package index, then finds no such package
    if os.geteuid() != 0:
        pytest.skip("building a template needs root")
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path / "cache"))
    path = _write_spec(tmp_path, "apt: [python3, vmpool-no-such-package]\n", name="broken")
    steps: list[str] = []
    with pytest.raises(TemplateError) as info:
        build(path, progress=steps.append)
    message = str(info.value)
    assert "failed at step 'debootstrap bookworm': debootstrap exited with status" in message
    assert "vmpool-no-such-package" in message  # the tail of debootstrap's output
    assert steps[-1].startswith("debootstrap bookworm (minbase + python3, vmpool-no-such-package")
    left = [p.name for p in (tmp_path / "cache" / "templates").iterdir() if not p.name.endswith(".lock")]
    assert left == []
    assert cached(path) is None


# --- the real base template ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> BuiltTemplate:
    if cached("base") is None and os.geteuid() != 0:
        pytest.skip("the base template is not built and building it needs root (scripts/setup.sh builds it)")
    return ensure_built("base")  # a cache hit after setup.sh; else about a minute


def _debugfs(image: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_base_rootfs_is_ext4_with_python_and_template_json(base: BuiltTemplate) -> None:
    with open(base.rootfs, "rb") as image:
        image.seek(1024 + 0x38)
        assert image.read(2) == b"\x53\xef"  # the ext2/3/4 superblock magic
    stat = base.rootfs.stat()
    assert stat.st_blocks * 512 < stat.st_size  # sparse
    assert "Type: symlink" in _debugfs(base.rootfs, "stat /usr/bin/python3")
    assert "Type: regular" in _debugfs(base.rootfs, "stat /usr/bin/python3.11")
    assert "has_journal" not in _debugfs(base.rootfs, "features")
    info = json.loads(_debugfs(base.rootfs, "cat /etc/vmpool/template.json"))
    assert info == {"format": 2, "name": "base", "hash": base.hash, "env": {}, "start": None,
                    "vm": {"memory_mib": 512, "vcpus": 1, "network": False}, "home": "/home/user",
                    "python": {"path": "/usr/bin/python3", "version": base.manifest["python"]["version"],
                               "user_site": "/home/user/.local/lib/python3.11/site-packages"}}
    assert base.manifest["guest"] == info and base.user_site == info["python"]["user_site"]
    assert _debugfs(base.rootfs, "cat /etc/hostname") == "vmpool\n"  # not the build host's
    assert _debugfs(base.rootfs, "cat /etc/resolv.conf") == ""  # empty: no DNS, not the build host's
    assert re.findall(r"\(\d+\) (\S+)", _debugfs(base.rootfs, "ls /var/lib/apt/lists")) == [".", ".."]


def test_base_kernel_modules_and_busybox(base: BuiltTemplate) -> None:
    kernel = base.kernel.read_bytes()
    assert kernel[0x1FE:0x200] == b"\x55\xaa" and kernel[0x202:0x206] == b"HdrS"  # a bzImage
    release = base.manifest["kernel"]["release"]
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", release)
    version_at = struct.unpack_from("<H", kernel, 0x20E)[0] + 0x200
    assert kernel[version_at:version_at + len(release)].decode() == release
    assert base.manifest["modules"][:len(REQUIRED_MODULES)] == list(REQUIRED_MODULES)
    for module in base.modules:
        assert module.read_bytes()[:4] == b"\x7fELF", module
    busybox = base.busybox.read_bytes()
    assert busybox[:4] == b"\x7fELF"
    phoff, = struct.unpack_from("<Q", busybox, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", busybox, 0x36)
    kinds = [struct.unpack_from("<I", busybox, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in kinds  # no PT_INTERP: statically linked
    assert subprocess.run([str(base.busybox), "echo", "hi"], capture_output=True, text=True).stdout == "hi\n"


def test_base_is_readable_by_qemus_uid(base: BuiltTemplate) -> None:
    artifacts = [path for path in base.dir.rglob("*") if not path.is_relative_to(base.tree)]
    for path in [base.dir.parent, base.dir, base.tree, *artifacts]:
        mode = path.stat().st_mode
        assert mode & (0o005 if path.is_dir() else 0o004), path


def test_base_keeps_its_tree_hardened_for_the_bwrap_driver(base: BuiltTemplate) -> None:
    assert (base.tree / "usr/bin/python3").is_symlink() and (base.tree / "etc/vmpool/template.json").is_file()
    assert os.readlink(base.tree / "lib") == "usr/lib"
    assert (base.tree / "root").stat().st_mode & 0o777 == 0o700  # modes are the image's, not 0644
    assert (base.tree / "usr/bin/python3.11").stat().st_mode & 0o111 == 0o111
    for path in base.tree.rglob("*"):
        info = path.lstat()
        assert not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)), path
        if not path.is_symlink():
            assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), path


def test_base_manifest_and_cache_hit(base: BuiltTemplate) -> None:
    manifest = base.manifest
    assert (manifest["name"], manifest["hash"], manifest["format"]) == ("base", base.hash, 2)
    assert manifest["debian"]["release"] == "bookworm" and manifest["debian"]["packages"] > 50
    assert manifest["sizes"]["rootfs"] == base.rootfs.stat().st_size and manifest["build_seconds"] > 0
    assert base.dir.name == "base-%s" % base.hash[:16] and base.dir.parent == cache_dir() / "templates"
    started = time.monotonic()
    again = ensure_built("base")
    assert time.monotonic() - started < 5
    assert again.dir == base.dir and again.manifest["built_at"] == manifest["built_at"]


def test_template_list_and_build_of_a_built_template(base: BuiltTemplate) -> None:
    result = CliRunner().invoke(cli, ["template", "list"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("base "))
    assert line.split()[1:4] == [base.hash[:16], "built", str(base.disk_usage() // 2**20)]
    assert line.split()[-1] == str(base.dir)
    result = CliRunner().invoke(cli, ["template", "build", "base"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "%s\n" % base.dir, "")
