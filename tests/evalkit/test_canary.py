"""Canaries in real bwrap sandboxes: they vouch for a sound sandbox, catch one that went wrong
(its held verdicts are run again elsewhere), and make the worker give up when no sandbox passes.

How a sandbox is made to misbehave, honestly: sandboxes are isolated, so a sample cannot
damage the next one's python. What can go wrong is the sandbox's state or its settings, so the
tests do that: fill a sandbox's scratch space (/tmp) through its own file API, as a leak would,
and give the samples a wall-time limit no program can meet. One test passes a canary pair
that does not fit the sandbox (a "known-fail" program that loops) to check that a known-fail
canary must fail by its assertion, not by a timeout.
"""

from __future__ import annotations

import pytest

from evalkit import ExecRequest, Sample, SandboxConfig
from evalkit._canary import CANARIES, Canaries, misbehaviour
from evalkit._errors import CanaryFailure
from evalkit._executor import SampleExecutor, limits_for, verdict

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes")]


def request(idx: int, program: str = "assert sum(range(4)) == 6\n") -> ExecRequest:
    return ExecRequest(sample=Sample(task_id="t", sample_idx=idx, completion=""), program=program)


def test_the_known_pass_canary_passes_and_the_known_fail_one_fails_by_its_assertion() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=0)
    try:
        sandbox = executor._sandbox_ready()
        limits = limits_for(executor.config)
        assert misbehaviour(sandbox, limits) is None
        # as verdicts, the way samples are judged: one passed, one failed (not timeout or infra_error)
        passing = verdict(request(0), sandbox.run_program(CANARIES.passing, limits), "bwrap", "", 1)
        failing = verdict(request(1), sandbox.run_program(CANARIES.failing, limits), "bwrap", "", 1)
        assert passing.status == "passed"
        assert failing.status == "failed" and CANARIES.fail_mark in (failing.error or "")
    finally:
        executor.close()


def test_verdicts_are_held_until_a_check_vouches_for_them() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=2, canary_every=3)
    try:
        first = executor.run_batch([request(i) for i in range(5)])
        # sample 0 on a new sandbox, a check that vouches for it before sample 1, three more, a
        # check that vouches for them, and sample 4 held
        assert [r.sample_idx for r in first] == [0, 1, 2, 3] and executor.holding == 1
        assert executor.counts.canary_checks == 2
        second = executor.run_batch([request(5)])
        assert second == [] and executor.holding == 2
        rest = executor.flush()
        assert [r.sample_idx for r in rest] == [4, 5] and executor.holding == 0
        assert all(r.status == "passed" and r.attempts == 1 for r in first + rest)
        counts = executor.counts
        assert (counts.canary_checks, counts.canary_failures, counts.sandboxes_started) == (3, 0, 1)
        assert executor.flush() == []  # nothing held: no check
        assert executor.counts.canary_checks == 3
    finally:
        executor.close()


def test_a_verdict_held_longer_than_canary_hold_s_is_checked_without_waiting_for_canary_every() -> None:
    # canary_every alone would hold these for 100 samples: a Ctrl-C would lose them all
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=0, canary_every=100, canary_hold_s=1.0)
    slow = "import time\ntime.sleep(1.1)\n"
    try:
        assert executor.run_batch([request(0, slow)]) == [] and executor.holding == 1  # a new sandbox: vetted before the next sample
        assert [r.sample_idx for r in executor.run_batch([request(1, slow)])] == [0] and executor.holding == 1
        # sample 1's verdict has waited over 1 s by the end of the next sample: checked and released
        assert [r.sample_idx for r in executor.run_batch([request(2, slow)])] == [1, 2] and executor.holding == 0
        assert executor.counts.canary_checks == 2
    finally:
        executor.close()


def _fill_scratch_space(executor: SampleExecutor) -> None:
    sandbox = executor._sandbox_ready()
    chunk = b"\0" * (32 * 2**20)
    with pytest.raises(OSError):
        for index in range(64):  # /tmp is a 256 MiB tmpfs
            sandbox.files.write(f"/tmp/leak-{index}", chunk)


def test_a_sandbox_that_went_wrong_is_replaced_and_its_held_samples_run_again() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=0, canary_every=100)
    try:
        first = executor.run_batch([request(0), request(1), request(2, "assert 'a' * 3 == 'aaa'\n")])
        assert [r.sample_idx for r in first] == [0] and executor.holding == 2
        spoiled = executor._sandbox
        _fill_scratch_space(executor)
        # samples 1 and 2 got their verdicts from a sandbox that fails its canaries now: they run
        # again on a fresh one, which the canaries vet before and after them
        results = executor.flush()
        assert [(r.sample_idx, r.status) for r in results] == [(1, "passed"), (2, "passed")]
        assert all(r.attempts == 1 for r in results), "re-running them spends no retry (max_retries is 0)"
        assert executor._sandbox is not spoiled and spoiled is not None and not spoiled.is_running()
        counts = executor.counts
        assert (counts.canary_failures, counts.samples_rerun_after_canary, counts.sandbox_replacements) == (1, 2, 1)
        assert counts.canary_checks == 4  # the new sandbox; the spoiled one; the fresh one before and after
    finally:
        executor.close()


def test_when_no_sandbox_passes_the_canaries_the_worker_gives_up() -> None:
    # a wall-time limit no program can meet: every verdict would be a timeout of the harness's making
    executor = SampleExecutor(SandboxConfig(timeout_s=0.001), "bwrap", max_retries=2, canary_every=10)
    assert executor.run_batch([request(0)]) == []  # its verdict waits for a check
    with pytest.raises(CanaryFailure, match="known-pass canary ended timeout"):
        executor.flush()
    assert executor.counts.canary_failures == 2 and executor.counts.sandbox_replacements == 2
    assert executor._sandbox is None and executor.holding == 0
    # without canaries the same samples would get verdicts that blame the program
    plain = SampleExecutor(SandboxConfig(timeout_s=0.001), "bwrap", max_retries=2)
    try:
        assert plain.run_batch([request(0)])[0].status == "timeout"
    finally:
        plain.close()


def test_a_known_fail_canary_that_times_out_is_misbehaviour() -> None:
    looping = Canaries(passing=CANARIES.passing, failing="while True:\n    pass\n", fail_mark=CANARIES.fail_mark)
    executor = SampleExecutor(SandboxConfig(timeout_s=0.5), "bwrap", max_retries=0)
    try:
        problem = misbehaviour(executor._sandbox_ready(), limits_for(executor.config), looping)
    finally:
        executor.close()
    assert problem is not None and problem.startswith("the known-fail canary ended timeout")
