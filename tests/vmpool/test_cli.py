"""The vmpool command line, through click's runner (the real API underneath)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmpool._cli import cli


def test_drivers() -> None:
    result = CliRunner().invoke(cli, ["drivers"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("bwrap") and "usable: namespaces+seccomp (bubblewrap" in lines[0]
    assert lines[1].startswith("microvm") and "not implemented yet" in lines[1]


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


def test_run_with_unusable_driver(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    result = CliRunner().invoke(cli, ["run", str(program), "--driver", "microvm"])
    assert result.exit_code == 2 and "not implemented yet" in result.output
