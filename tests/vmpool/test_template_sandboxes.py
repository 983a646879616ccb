"""Sandboxes started from a template, on both drivers: the bwrap driver runs on the template's
tree (its python, /etc and env), the writable home with the python user site ready, network
only when the spec asks for it, run-time pip, and the shipped code-interpreter template.

The `base` template is what scripts/setup.sh builds; the tests that need another template build
a small one into a cache of their own (slow: debootstrap, about a minute) or use
code-interpreter (slow: setup.sh builds it; several minutes otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpool import BuiltTemplate, DriverUnavailableError, LocalSandbox
from vmpool._templates import HOME_DIR, cached, ensure_built

from ..conftest import bwrap_missing_reason

pytestmark = pytest.mark.sandbox

USER_SITE = HOME_DIR + "/.local/lib/python3.11/site-packages"
PIP_PACKAGE = "tabulate"  # small, pure Python, in none of the templates here


def _built_or_skip(name: str) -> BuiltTemplate:
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    if cached(name) is None and os.geteuid() != 0:
        pytest.skip("template %s is not built and building it needs root (scripts/setup.sh builds it)" % name)
    return ensure_built(name)


@pytest.fixture(scope="module")
def base() -> BuiltTemplate:
    return _built_or_skip("base")


def _run(sandbox: LocalSandbox, code: str) -> str:
    result = sandbox.run_program(textwrap.dedent(code))
    assert result.status == "ok", result
    return result.stdout


def _shell(sandbox: LocalSandbox, command: str, timeout: float = 60.0) -> str:
    result = sandbox.commands.run(command, timeout=timeout)
    assert result.exit_code == 0, result
    return result.stdout


def _pypi_reachable() -> str | None:
    """None if this host reaches pypi.org over HTTPS's port, else why not."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError as exc:
        return "pypi.org is not reachable from this host (%s)" % exc
    return None


def _host_address(name: str) -> str:
    """An IPv4 address of `name` as the host resolves it (a public one if it cannot)."""
    try:
        return str(socket.getaddrinfo(name, 443, socket.AF_INET)[0][4][0])
    except OSError:
        return "1.1.1.1"


# --- bwrap with the base template -----------------------------------------------------------


def test_bwrap_runs_the_templates_python_and_etc(base: BuiltTemplate) -> None:
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        seen = json.loads(_run(sandbox, """
            import json, os, sys
            python = os.stat(os.path.realpath(sys.executable))
            print(json.dumps({"python": [python.st_dev, python.st_ino], "executable": sys.executable,
                              "template": json.load(open("/etc/vmpool/template.json"))["hash"],
                              "passwd": open("/etc/passwd").read(), "root": sorted(os.listdir("/")),
                              "bin": os.readlink("/bin")}))
            """))
    tree_python = os.stat(os.path.realpath(base.tree / "usr/bin/python3.11"))
    assert seen["python"] == [tree_python.st_dev, tree_python.st_ino]  # the tree's file, not the host's
    assert seen["executable"] == "/usr/bin/python3" and seen["template"] == base.hash
    assert seen["passwd"] == "nobody:x:65534:65534:nobody:/home/user:/bin/sh\n"  # vmpool's, over the template's
    assert seen["root"] == ["bin", "dev", "etc", "home", "lib", "lib64", "opt", "proc", "sbin", "tmp", "usr"]
    assert seen["bin"] == "usr/bin"


def test_bwrap_python_must_be_the_templates(base: BuiltTemplate) -> None:
    with LocalSandbox.create("bwrap", template="base", python="/usr/bin/python3.11") as sandbox:
        assert _run(sandbox, "import sys; print(sys.executable)") == "/usr/bin/python3.11\n"
    with pytest.raises(DriverUnavailableError, match="template 'base' has no python interpreter /usr/bin/python2"):
        LocalSandbox.create("bwrap", template="base", python="/usr/bin/python2")


def test_without_a_template_bwrap_keeps_the_hosts_tree(sandboxes: None) -> None:
    with LocalSandbox.create("bwrap") as sandbox:
        seen = json.loads(_run(sandbox, """
            import json, os
            python = os.stat(os.path.realpath("/usr/bin/python3"))
            print(json.dumps([python.st_dev, python.st_ino, os.environ["HOME"], os.path.exists("/home"),
                              os.path.exists("/etc/debian_version")]))
            """))
    host = os.stat(os.path.realpath("/usr/bin/python3"))
    assert seen == [host.st_dev, host.st_ino, "/tmp", False, False]


def test_bwrap_home_is_writable_and_kept_between_commands(base: BuiltTemplate) -> None:
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        out = _shell(sandbox, "echo $HOME; stat -c '%u %a' /home/user; pwd; echo kept > ~/note.txt; "
                              "echo tmp > /tmp/t.txt && cat /tmp/t.txt; df -m /home/user | tail -1")
        home, owner, cwd, tmp, df = out.splitlines()
        assert (home, owner, cwd, tmp) == ("/home/user", "65534 755", "/tmp", "tmp")  # commands.run's cwd
        assert df.split()[1] == "1024"
        assert sandbox.files.read("/home/user/note.txt") == "kept\n"
        assert _run(sandbox, "import os; print(os.environ['HOME'], os.getcwd().startswith('/tmp/'))") == "/home/user True\n"
        assert _shell(sandbox, "touch /usr/x 2>&1 || touch /etc/x 2>&1 || echo read-only").endswith("read-only\n")


def test_a_program_leaves_nothing_in_the_home_for_the_next_program(base: BuiltTemplate) -> None:
    plant = ("import os, site\n"
             "open(os.path.expanduser('~/planted.py'), 'w').write('x = 1')\n"
             "os.makedirs(os.path.expanduser('~/.cache/deep'), exist_ok=True)\n"
             "open(os.path.join(site.getusersitepackages(), 'evil.pth'), 'w').write('import os')\n")
    look = ("import os, site\n"
            "print(sorted(os.listdir(os.path.expanduser('~'))), os.listdir(site.getusersitepackages()))\n")
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        assert sandbox.run_program(plant).status == "ok"
        assert _run(sandbox, look) == "['.local'] []\n"  # the user site itself stays
        # A background process's files are its own: the home is not cleaned while one runs.
        process = sandbox.processes.start("echo session > ~/kept.txt; sleep 60")
        try:
            assert sandbox.run_program(plant).status == "ok"
            assert "planted.py" in _run(sandbox, look)
        finally:
            process.kill()


def test_the_user_site_exists_at_start_and_is_on_sys_path(base: BuiltTemplate) -> None:
    assert base.user_site == USER_SITE
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        out = _shell(sandbox, "python3 -c 'import site, sys; print(site.getusersitepackages() in sys.path)'; "
                              "stat -c %%u %s" % USER_SITE)
    assert out.split() == ["True", "65534"]


def test_without_vm_network_there_is_no_network(base: BuiltTemplate) -> None:
    assert base.spec.vm.network is False
    with LocalSandbox.create("bwrap", template="base") as sandbox:
        out = _run(sandbox, """
            import socket
            print(sorted(name for _, name in socket.if_nameindex()))
            for step in (lambda: socket.getaddrinfo("pypi.org", 443), lambda: socket.create_connection((%r, 443), timeout=5)):
                try:
                    step()
                    print("reached")
                except OSError:
                    print("no")
            """ % _host_address("pypi.org"))
    assert out.split("\n")[:3] == ["['lo']", "no", "no"]


def test_bwrap_refuses_a_template_with_a_start_command_before_building_it(
        sandboxes: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "daemon.yaml"
    spec.write_text("apt: [python3]\nstart: exec sleep 1000\n")
    with pytest.raises(DriverUnavailableError, match="has a start command .* the bwrap driver cannot run"):
        LocalSandbox.create("bwrap", template=str(spec))
    assert not (tmp_path / "cache").exists()


def test_a_missing_template_needs_root_to_be_built_on_first_use(
        sandboxes: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMPOOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DriverUnavailableError, match="building template base needs root"):
        LocalSandbox.create("bwrap", template="base")
    with pytest.raises(DriverUnavailableError, match="unknown template 'no-such-template'"):
        LocalSandbox.create("bwrap", template="no-such-template")


# --- microvm with the base template ---------------------------------------------------------


@pytest.mark.microvm
def test_microvm_home_and_user_site(microvm: None) -> None:
    with LocalSandbox.create("microvm") as sandbox:
        out = _shell(sandbox, "echo $HOME; stat -c '%%u %%a' /home/user %s; echo kept > ~/note.txt; "
                              "python3 -c 'import site, sys; print(site.getusersitepackages() in sys.path)'; "
                              "grep ' /home/user ' /proc/mounts | cut -d' ' -f3" % USER_SITE)
        assert out.split("\n")[:-1] == ["/home/user", "65534 755", "65534 755", "True", "tmpfs"]
        assert sandbox.files.read("/home/user/note.txt") == "kept\n"
        assert _shell(sandbox, "echo tmp > /tmp/t.txt && cat /tmp/t.txt") == "tmp\n"


# --- a small template with network, built for these tests ------------------------------------

NET_SPEC = """\
description: vmpool test template with network and pip
apt: [python3, python3-pip, ca-certificates]
files:
  - {path: /etc/vmpool-test.txt, content: "from the spec\\n"}
env:
  GREETING: hello
  PIP_USER: "1"
  PIP_BREAK_SYSTEM_PACKAGES: "1"
  PIP_DISABLE_PIP_VERSION_CHECK: "1"
  PYTHONUSERBASE: /home/user/.local
vm: {network: true}
"""


@pytest.fixture(scope="module")
def net_template() -> Iterator[str]:
    """The path of NET_SPEC, built by the first sandbox (on first use) into a cache of its own,
    deleted at the end."""
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("building a template needs root")
    folder = Path(tempfile.mkdtemp(prefix="vmpool-test-cache-"))
    os.chmod(folder, 0o755)  # the sandbox (uid 65534) reads through it
    spec = folder / "vmpool-test-net.yaml"
    spec.write_text(NET_SPEC)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMPOOL_CACHE_DIR", str(folder))
        yield str(spec)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_bwrap_template_files_env_and_network(net_template: str) -> None:
    assert cached(net_template) is None
    with LocalSandbox.create("bwrap", template=net_template) as sandbox:  # builds it
        assert cached(net_template) is not None
        out = _run(sandbox, "import os; print(open('/etc/vmpool-test.txt').read().strip(), os.environ['GREETING'])")
        assert out == "from the spec hello\n"
        reason = _pypi_reachable()
        if reason is not None:
            pytest.skip(reason)
        out = _run(sandbox, """
            import socket
            print(sorted({info[4][0] for info in socket.getaddrinfo("pypi.org", 443)})[0].count(".") == 3)
            socket.create_connection(("pypi.org", 443), timeout=20).close()
            print("reached")
            """)
        assert out == "True\nreached\n"


PIP_IN_A_RUNNING_PYTHON = """\
import site, subprocess, sys
assert site.getusersitepackages() in sys.path, sys.path
try:
    import %(package)s
    sys.exit("%(package)s is installed already")
except ImportError:
    pass
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "%(package)s"], check=True)
import %(package)s
print(%(package)s.__file__)
""" % {"package": PIP_PACKAGE}


def _pip_install_seen_by_a_running_python(sandbox: LocalSandbox) -> None:
    """pip installs as the sandbox user; the python that ran pip, started before the install and
    having failed to import the package then (a kernel), imports it; so does a fresh one."""
    sandbox.files.write("/tmp/pip_check.py", PIP_IN_A_RUNNING_PYTHON)
    out = _shell(sandbox, "python3 /tmp/pip_check.py", timeout=300)
    assert out.startswith("%s/%s" % (USER_SITE, PIP_PACKAGE)), out
    assert _shell(sandbox, "python3 -c 'import %s; print(%s.__name__)'" % (PIP_PACKAGE, PIP_PACKAGE)) == PIP_PACKAGE + "\n"


@pytest.mark.slow
def test_run_time_pip_on_bwrap(net_template: str) -> None:
    reason = _pypi_reachable()
    if reason is not None:
        pytest.skip(reason)
    with LocalSandbox.create("bwrap", template=net_template) as sandbox:
        _pip_install_seen_by_a_running_python(sandbox)


# --- the shipped code-interpreter template ---------------------------------------------------

IMPORTS = ("ipykernel", "jupyter_client", "numpy", "pandas", "matplotlib", "seaborn", "scipy", "sklearn",
           "sympy", "PIL", "requests", "bs4", "openpyxl", "plotly", "pytest")


@pytest.fixture(scope="module")
def code_interpreter() -> BuiltTemplate:
    return _built_or_skip("code-interpreter")


def _check_code_interpreter(sandbox: LocalSandbox) -> None:
    out = _shell(sandbox, "python3 -c 'import %s; print(\"imported\")'" % ", ".join(IMPORTS), timeout=600)
    assert out == "imported\n"
    plot = ("import matplotlib.pyplot as plt, pandas as pd; pd.DataFrame({'x': [1, 2]}).plot(); "
            "plt.savefig('/home/user/plot.png'); print(open('/home/user/plot.png', 'rb').read(4))")
    assert _shell(sandbox, 'python3 -c "%s"' % plot, timeout=600) == "b'\\x89PNG'\n"


@pytest.mark.slow
def test_code_interpreter_on_bwrap(code_interpreter: BuiltTemplate) -> None:
    assert code_interpreter.spec.vm.network
    assert {line.split("==")[0].lower() for line in code_interpreter.manifest["pip"]} >= {
        "ipykernel", "jupyter_client", "numpy", "pandas", "matplotlib", "scikit-learn"}
    with LocalSandbox.create("bwrap", template="code-interpreter") as sandbox:
        _check_code_interpreter(sandbox)
        if _pypi_reachable() is None:
            _pip_install_seen_by_a_running_python(sandbox)


@pytest.mark.slow
@pytest.mark.microvm
def test_code_interpreter_on_microvm(microvm: None, code_interpreter: BuiltTemplate) -> None:
    with LocalSandbox.create("microvm", template="code-interpreter", start_timeout=120) as sandbox:
        _check_code_interpreter(sandbox)
