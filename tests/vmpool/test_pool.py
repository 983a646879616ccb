"""SandboxPool: leasing, replacement of unhealthy sandboxes, bounds and shutdown."""

import threading

import pytest

from vmpool import Limits, LocalSandbox, SandboxPool, VmpoolError

pytestmark = pytest.mark.sandbox


def test_healthy_sandboxes_are_reused() -> None:
    with SandboxPool(size=2, driver="bwrap") as pool:
        first = pool.acquire()
        pool.release(first)
        again = pool.acquire()
        assert again.is_running()
        other = pool.acquire()
        assert {first.sandbox_id} <= {again.sandbox_id, other.sandbox_id}
        pool.release(again)
        pool.release(other)


def test_unhealthy_sandbox_is_killed_and_replaced() -> None:
    with SandboxPool(size=1, driver="bwrap") as pool:
        sick = pool.acquire()
        pool.release(sick, healthy=False)
        assert not sick.is_running()
        fresh = pool.acquire()
        assert fresh is not sick and fresh.is_running()
        assert fresh.run_program("print(2)").stdout == "2\n"
        pool.release(fresh)


def test_dead_sandbox_is_replaced_even_if_called_healthy() -> None:
    with SandboxPool(size=1, driver="bwrap") as pool:
        sandbox = pool.acquire()
        sandbox.kill()
        pool.release(sandbox, healthy=True)
        replacement = pool.acquire()
        assert replacement is not sandbox and replacement.is_running()
        pool.release(replacement)


def test_size_bounds_leases() -> None:
    with SandboxPool(size=1, driver="bwrap") as pool:
        held = pool.acquire()
        with pytest.raises(VmpoolError, match="no sandbox became free"):
            pool.acquire(timeout=0.2)
        pool.release(held)
        pool.release(pool.acquire(timeout=5))


def test_enormous_acquire_timeout_waits_for_a_release() -> None:
    # Condition.wait overflows on such timeouts: the pool must wait in pieces instead
    with SandboxPool(size=1, driver="bwrap") as pool:
        held = pool.acquire()
        releaser = threading.Timer(0.3, pool.release, args=(held,))
        releaser.start()
        try:
            pool.release(pool.acquire(timeout=1e12))
        finally:
            releaser.join()
        held = pool.acquire()
        try:
            with pytest.raises(VmpoolError, match="no sandbox became free"):
                pool.acquire(timeout=float("nan"))  # no time to wait, rather than a busy loop
        finally:
            pool.release(held)


def test_release_of_a_foreign_sandbox_is_refused() -> None:
    with SandboxPool(size=1, driver="bwrap") as pool, LocalSandbox.create("bwrap") as stranger:
        with pytest.raises(ValueError):
            pool.release(stranger)


def test_lease_marks_failures_unhealthy() -> None:
    with SandboxPool(size=1, driver="bwrap") as pool:
        with pytest.raises(RuntimeError):
            with pool.lease() as sandbox:
                raise RuntimeError("harness bug")
        assert not sandbox.is_running()
        with pool.lease() as replacement:
            assert replacement.is_running()


def test_parallel_use() -> None:
    outcomes: list[str] = []
    with SandboxPool(size=2, driver="bwrap") as pool:
        def work(n: int) -> None:
            for i in range(5):
                with pool.lease(timeout=60) as sandbox:
                    outcomes.append(sandbox.run_program("print(%d)" % (n * i), Limits()).status)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert outcomes == ["ok"] * 20


def test_close_kills_everything_and_is_idempotent() -> None:
    pool = SandboxPool(size=2, driver="bwrap").start()
    leased = pool.acquire()
    pool.close()
    pool.close()
    assert not leased.is_running()
    pool.release(leased)  # releasing after close is harmless
    with pytest.raises(VmpoolError, match="closed"):
        pool.acquire()


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        SandboxPool(size=0, driver="bwrap")
