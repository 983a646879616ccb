"""`Sandbox.run_code` and code contexts of the E2B-style SDK, on the code-interpreter template:
results, state across calls, errors, charts, live callbacks, timeouts that interrupt, contexts,
and per-run environments."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from vmpool import InvalidArgumentException, Sandbox, TimeoutException

from ..conftest import bwrap_missing_reason
from .service_support import runtime_dir  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sandbox(runtime_dir: object) -> Iterator[Sandbox]:
    """One code-interpreter sandbox for the module (a kernel takes seconds to start)."""
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("VMPOOL_SERVICE", raising=False)
        patch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
        patch.setenv("VMPOOL_DRIVER", "bwrap")
        with Sandbox.create(envs={"FROM_CREATE": "yes"}, timeout=900) as sb:
            yield sb


def test_hello_and_state(sandbox: Sandbox) -> None:
    execution = sandbox.run_code("print('hello world')")
    assert execution.logs.stdout == ["hello world\n"] and execution.error is None
    sandbox.run_code("x = 1")
    assert sandbox.run_code("x += 1; x").text == "2"
    assert sandbox.run_code("import os; os.environ['FROM_CREATE']").text == "yes"  # E2B drops a str's quotes


def test_errors_are_results(sandbox: Sandbox) -> None:
    errors = []
    execution = sandbox.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None and errors == [execution.error]
    assert (execution.error.name, execution.error.value) == ("ZeroDivisionError", "division by zero")
    assert "f()" in execution.error.traceback and "ZeroDivisionError" in execution.error.traceback


def test_plots(sandbox: Sandbox) -> None:
    execution = sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.bar(['a', 'b'], [3, 5], label='n')\n"
        "plt.title('Counts')\n"
        "plt.show()")
    assert len(execution.results) == 1
    result = execution.results[0]
    assert base64.b64decode(result.png).startswith(PNG_MAGIC)
    assert result.chart.type == "bar" and result.chart.title == "Counts"
    assert [(e.label, float(e.value), e.group) for e in result.chart.elements] == [("a", 3.0, "n"), ("b", 5.0, "n")]


def test_callbacks_are_live(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str, float]] = []
    sandbox.run_code("import sys, time\nprint('one', flush=True)\ntime.sleep(1.5)\nprint('two', file=sys.stderr)",
                     on_stdout=lambda m: seen.append(("out", m.line, time.monotonic())),
                     on_stderr=lambda m: seen.append(("err", m.line, time.monotonic())))
    done = time.monotonic()
    assert [(kind, line) for kind, line, _ in seen] == [("out", "one\n"), ("err", "two\n")]
    assert done - seen[0][2] > 1.0


def test_timeout_interrupts(sandbox: Sandbox) -> None:
    sandbox.run_code("kept = 'still here'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.run_code("while True:\n    pass", timeout=2)
    assert time.monotonic() - started < 30
    assert sandbox.run_code("kept").text == "still here"  # interrupted, not restarted


def test_envs_per_run(sandbox: Sandbox) -> None:
    code = "import os; print(os.environ.get('ONLY_HERE'))"
    assert sandbox.run_code(code, envs={"ONLY_HERE": "1"}).logs.stdout == ["1\n"]
    assert sandbox.run_code(code).logs.stdout == ["None\n"]


def test_contexts(sandbox: Sandbox) -> None:
    context = sandbox.create_code_context(cwd="/tmp")
    assert (context.language, context.cwd) == ("python", "/tmp")
    sandbox.run_code("here = 1", context=context)
    assert sandbox.run_code("here", context=context).text == "1"
    assert sandbox.run_code("here").error.name == "NameError"  # the default context is another kernel
    assert context.id in {c.id for c in sandbox.list_code_contexts()}
    sandbox.restart_code_context(context)
    assert sandbox.run_code("here", context=context).error.name == "NameError"
    with pytest.raises(InvalidArgumentException):
        sandbox.run_code("1", language="python", context=context)
    sandbox.remove_code_context(context.id)
    assert context.id not in {c.id for c in sandbox.list_code_contexts()}
