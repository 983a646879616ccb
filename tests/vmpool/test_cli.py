"""The vmpool command line, through click's runner (the real API underneath)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmpool import get_driver
from vmpool._cli import cli


def test_drivers() -> None:
    result = CliRunner().invoke(cli, ["drivers"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("bwrap") and "usable: namespaces+seccomp (bubblewrap" in lines[0]
    assert lines[1].startswith("microvm")
    reason = get_driver("microvm").available()
    assert (reason or "usable: microVM (QEMU") in lines[1]


@pytest.mark.sandbox
def test_run(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    result = CliRunner().invoke(cli, ["run", str(program), "--driver", "bwrap", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert (payload["status"], payload["stdout"], payload["driver"]) == ("ok", "hi\n", "bwrap")

    program.write_text("import sys; sys.exit(0)\n")
    result = CliRunner().invoke(cli, ["run", str(program)])
    assert result.exit_code == 1 and json.loads(result.output)["status"] == "exited"


def test_run_with_unusable_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no QEMU on it
    result = CliRunner().invoke(cli, ["run", str(program), "--driver", "microvm"])
    assert result.exit_code == 2 and "QEMU (qemu-system-x86_64) is not installed" in result.output


def _bad_arguments(args: list[str]) -> str:
    """Run `vmpool run ARGS`, which must refuse its arguments: exit 3, nothing on stdout, one
    line on stderr (no traceback, no usage block); that line."""
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 3, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmpool run: error: "), result.stderr
    return lines[0]


def test_non_utf8_program_is_a_bad_argument(tmp_path: Path) -> None:
    program = tmp_path / "latin1.py"
    program.write_bytes(b"print('caf\xe9')\n")
    assert "is not UTF-8" in _bad_arguments([str(program)])


def test_missing_program_is_a_bad_argument(tmp_path: Path) -> None:
    assert "does not exist" in _bad_arguments([str(tmp_path / "missing.py")])
    assert "is a directory" in _bad_arguments([str(tmp_path)])
    assert "Missing argument" in _bad_arguments([])


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "1e12", "86401", "0", "soon"])
def test_timeout_must_be_finite_and_at_most_a_day(tmp_path: Path, timeout: str) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    assert "--timeout" in _bad_arguments([str(program), "--timeout", timeout])


def test_unknown_option_is_a_bad_argument(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    assert "--bogus" in _bad_arguments([str(program), "--bogus"])


def test_exit_statuses_are_documented() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    for line in ["0  the program ended", "1  the program ended any other way", "2  the sandbox itself failed",
                 "3  bad arguments"]:
        assert line in result.output


def test_bad_argument_from_the_console_script(tmp_path: Path) -> None:
    # the real entry point, not the test runner: what a user sees in a terminal
    program = tmp_path / "latin1.py"
    program.write_bytes(b"\xff\xfe")
    done = subprocess.run([sys.executable, "-c", "from vmpool._cli import main; main()", "run", str(program)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.count("\n") == 1 and "is not UTF-8" in done.stderr, done.stderr


def test_unknown_driver_is_a_bad_argument(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    assert "unknown driver 'nope'" in _bad_arguments([str(program), "--driver", "nope"])


def test_short_help_and_version() -> None:
    assert CliRunner().invoke(cli, ["-h"]).exit_code == 0
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("vmpool, version ")


def test_doctor_explains_this_host() -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "accelerator: " in result.output and "auto picks: " in result.output
    facts = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).output)
    assert set(facts) == {"drivers", "auto", "tools", "accelerator", "templates"}
    assert facts["accelerator"]["name"] in ("kvm", "tcg") and facts["accelerator"]["reason"]
    assert "base" in [row["name"] for row in facts["templates"]]
    assert facts["auto"] in ("bwrap", "microvm")


def test_doctor_names_the_fix_for_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "qemu-system-x86_64  MISSING, needed for the microvm driver; fix: apt-get install" in result.output
    assert "microvm  not usable: QEMU (qemu-system-x86_64) is not installed" in result.output
