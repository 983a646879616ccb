"""The Ray scheduler and the sandbox executor under faults: dead workers, dead sandboxes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from evalkit import ExecRequest, InfraError, Sample, SampleResult, SandboxConfig, SchedulerConfig
from evalkit._executor import SampleExecutor
from evalkit._feed import Feed
from evalkit._scheduler import RayScheduler

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes")]


def request(task: str, idx: int, program: str) -> ExecRequest:
    return ExecRequest(sample=Sample(task_id=task, sample_idx=idx, completion=""), program=program)


def test_a_sandbox_that_died_between_samples_is_replaced_without_blame() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=2)
    try:
        first = executor.run_one(request("t", 0, "x = 1\n"))
        assert first.status == "passed" and first.attempts == 1
        sandbox = executor._sandbox
        assert sandbox is not None
        os.killpg(sandbox._process.pid, signal.SIGKILL)  # bwrap leads its own process group
        deadline = time.monotonic() + 10
        while sandbox.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        # a dead sandbox is replaced before use (a microVM after a timeout is the usual case):
        # the next sample neither fails nor spends a retry on it
        second = executor.run_one(request("t", 1, "x = 2\n"))
        assert second.status == "passed" and second.attempts == 1
        assert executor._sandbox is not sandbox
    finally:
        executor.close()


def test_a_sandbox_that_dies_during_a_sample_is_replaced_and_the_sample_retried() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=10), "bwrap", max_retries=2)
    try:
        executor.run_one(request("t", 0, "x = 1\n"))
        sandbox = executor._sandbox
        assert sandbox is not None
        # the sandbox is killed while the sample runs: an infrastructure failure, retried
        killer = threading.Timer(1.0, os.killpg, (sandbox._process.pid, signal.SIGKILL))
        killer.start()
        second = executor.run_one(request("t", 1, "import time\ntime.sleep(3)\n"))
        killer.join()
        assert second.status == "passed" and second.attempts == 2
        assert executor._sandbox is not sandbox
    finally:
        executor.close()


def test_a_sample_that_keeps_failing_ends_as_infra_error() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5, python="/nonexistent/python3"), "bwrap", max_retries=1)
    result = executor.run_one(request("t", 0, "x = 1\n"))
    assert result.status == "infra_error" and not result.passed
    assert result.attempts == 2 and "sandbox failed" in (result.error or "")


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_batches_of_a_dead_worker_are_retried_elsewhere() -> None:
    import ray

    requests = [request("t", i, "import time\ntime.sleep(0.3)\n") for i in range(8)]
    # without canaries, so that every batch's verdicts come back with it and the kill finds one running
    scheduler = RayScheduler(SchedulerConfig(workers=2, batch_size=2, max_retries=2, canary_every=0), SandboxConfig(timeout_s=5), "bwrap")
    try:
        results = []
        for result in scheduler.run(requests):
            if not results:
                ray.kill(scheduler._workers[0], no_restart=False)
            results.append(result)
    finally:
        scheduler.close()
    assert sorted(r.sample_idx for r in results) == list(range(8))
    assert all(r.status == "passed" for r in results), [(r.status, r.error) for r in results]
    assert any(r.attempts > 1 for r in results)


def test_a_sample_the_harness_cannot_send_fails_alone() -> None:
    executor = SampleExecutor(SandboxConfig(timeout_s=5), "bwrap", max_retries=2)
    huge = "x = 1\n" + "#" * (70 * 2**20) + "\n"  # beyond the agent protocol's 64 MiB message limit
    try:
        results = executor.run_batch([request("t", 0, huge), request("t", 1, "x = 2\n")])
    finally:
        executor.close()
    assert results[0].status == "failed" and "not run: the program is" in (results[0].error or "")
    assert results[0].attempts == 1, "a program no sandbox takes is not retried"
    assert results[1].status == "passed"


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_requests_run_as_a_feed_receives_them_and_a_producer_error_comes_after_them() -> None:
    feed = Feed()
    scheduler = RayScheduler(SchedulerConfig(workers=2, batch_size=4), SandboxConfig(timeout_s=5), "bwrap")
    decided = SampleResult(task_id="t", sample_idx=99, completion="", status="infra_error", passed=False, duration_s=0.0, driver="bwrap", error="model API: HTTP 500")
    try:
        feed.put(request("t", 0, "x = 0\n"))
        results = scheduler.run(feed)
        first = next(results)  # runs while the producer has not finished: the feed is still open
        assert first.key == ("t", 0) and first.status == "passed" and not feed.closed
        feed.put(decided)
        feed.put(request("t", 1, "x = 1\n"))
        feed.close(InfraError("the model API went away"))
        rest = []
        with pytest.raises(InfraError, match="went away"):
            for result in results:
                rest.append(result)
        assert sorted(r.key for r in rest) == [("t", 1), ("t", 99)]  # everything put before the error, then the error
    finally:
        scheduler.close()


def _actor_pid(actor: object) -> int:
    import ray

    pid: int = ray.get(actor.__ray_call__.remote(lambda worker: os.getpid()))  # type: ignore[attr-defined]
    return pid


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_a_worker_killed_mid_batch_is_replaced_and_only_its_running_batch_spends_a_retry() -> None:
    requests = [request("t", i, "import time\ntime.sleep(0.4)\n") for i in range(8)]
    # two workers, two batches each: worker 0 runs batch 0 and has batch 2 queued behind it
    scheduler = RayScheduler(SchedulerConfig(workers=2, batch_size=2, max_in_flight=4, max_retries=2), SandboxConfig(timeout_s=5), "bwrap")
    try:
        victim = scheduler._workers[0]
        pid = _actor_pid(victim)
        killer = threading.Timer(0.6, os.kill, (pid, signal.SIGKILL))  # mid-way through batch 0
        killer.start()
        results = list(scheduler.run(requests))
        killer.join()
        assert scheduler._workers[0] is not victim
        new_pid = _actor_pid(scheduler._workers[0])
    finally:
        scheduler.close()
    assert new_pid != pid
    assert sorted(r.sample_idx for r in results) == list(range(8))
    assert all(r.status == "passed" for r in results), [(r.status, r.error) for r in results]
    # the batch that was running (0, or 2 if 0 was done) spends one retry; the one queued behind
    # it, or the verdicts held from batch 0 for the canaries, do not
    retried = sorted(r.sample_idx for r in results if r.attempts == 2)
    assert retried in ([0, 1], [4, 5]), [(r.sample_idx, r.attempts) for r in results]
    counts = scheduler.counts
    assert (counts.worker_failures, counts.worker_replacements, counts.batches_retried) == (1, 1, 1)
    assert counts.batches_requeued == 1


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_workers_whose_canaries_misbehave_are_replaced_until_the_budget_ends() -> None:
    # a wall-time limit no program meets: no sandbox passes its canaries, on any worker
    scheduler = RayScheduler(SchedulerConfig(workers=2, batch_size=2, max_retries=1, canary_every=5), SandboxConfig(timeout_s=0.001), "bwrap")
    try:
        results = list(scheduler.run([request("t", i, "x = 1\n") for i in range(4)]))
    finally:
        scheduler.close()
    assert sorted(r.sample_idx for r in results) == [0, 1, 2, 3]
    assert all(r.status == "infra_error" and r.attempts == 2 for r in results)
    assert all("CanaryFailure: canaries misbehaved" in (r.error or "") for r in results), results[0].error
    counts = scheduler.counts
    assert counts.worker_failures == counts.worker_replacements == 4  # two batches, two tries each
    assert counts.batches_retried == 2
    assert counts.canary_failures == 8 and counts.canary_checks == 8  # counted by the workers that gave up
