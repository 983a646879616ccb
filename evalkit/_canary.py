"""Canaries: two programs whose verdicts are known, run in a worker's sandbox to vet it.

A sandbox can go wrong without breaking outright: asserts that no longer fail, a scratch
folder that cannot be written, limits under which nothing can finish. Its verdicts would then
look like the model's doing. So every worker runs a known-pass and a known-fail program when
its sandbox is new and every ``scheduler.canary_every`` samples; the verdicts it got since the
last good check are held until the next one vouches for them (`SampleExecutor.run_batch`).

The held verdicts are the worker's since its last good check, whichever sandbox gave them: a
sandbox replaced meanwhile (it broke, or a microVM was discarded after a timeout) cannot be
checked any more, so the next one's check, before its first sample, vouches for them. What
the canaries vet is what the sandboxes of a worker share: the template, the driver, the host
and the limits.

The pair is built like a benchmark program (a function, then a check of it made of asserts),
so it goes through the same path as the samples: the known-pass one must end ``ok``, and the
known-fail one must end with the ``AssertionError`` it raises (``failed``): not a timeout, an
OOM or an infrastructure error.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmpool import ExecResult, Limits, LocalSandbox, VmpoolError

__all__ = ["CANARIES", "Canaries", "misbehaviour"]

_FAIL_MARK = "evalkit canary: this assertion fails on purpose"


@dataclass(frozen=True)
class Canaries:
    """A known-pass and a known-fail program. ``fail_mark`` is a text the known-fail program's
    AssertionError carries, so that a failure for another reason is not taken for it."""

    passing: str
    failing: str
    fail_mark: str


CANARIES = Canaries(
    passing=(
        "import os\n\n"
        "def add(a, b):\n"
        "    return a + b\n\n"
        "def check(candidate):\n"
        "    assert candidate(2, 3) == 5\n"
        "    assert [candidate(i, i) for i in range(3)] == [0, 2, 4]\n\n"
        "check(add)\n"
        # the scratch folder works: benchmark programs write temporary files
        "with open('canary.txt', 'w') as f:\n"
        "    f.write('x' * 4096)\n"
        "assert os.path.getsize('canary.txt') == 4096\n"
    ),
    failing=(
        "def add(a, b):\n"
        "    return a - b\n\n"
        "def check(candidate):\n"
        f"    assert candidate(2, 3) == 5, {_FAIL_MARK!r}\n\n"
        "check(add)\n"
    ),
    fail_mark=_FAIL_MARK,
)


def _describe(result: ExecResult) -> str:
    detail = (result.error or "").strip().splitlines()
    return result.status + (f" ({detail[0][:200]})" if detail else "")


def misbehaviour(sandbox: LocalSandbox, limits: Limits, canaries: Canaries = CANARIES) -> str | None:
    """Run ``canaries`` in ``sandbox`` under the samples' ``limits``: None if both end as they
    must, else what went wrong, in one line. A sandbox that breaks meanwhile (`VmpoolError`)
    misbehaves too: its earlier verdicts cannot be vouched for."""
    try:
        passed = sandbox.run_program(canaries.passing, limits)
        if passed.status != "ok":
            return f"the known-pass canary ended {_describe(passed)}"
        failed = sandbox.run_program(canaries.failing, limits)
    except VmpoolError as exc:
        return f"the sandbox broke during the canaries: {type(exc).__name__}: {exc}"
    if failed.status != "error" or canaries.fail_mark not in f"{failed.error}\n{failed.stderr}":
        return f"the known-fail canary ended {_describe(failed)}, not with its AssertionError"
    return None
