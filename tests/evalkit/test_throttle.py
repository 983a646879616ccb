"""AdaptiveLimit: fewer requests in flight while an API throttles, more again when it recovers."""

from __future__ import annotations

import asyncio

import pytest

from evalkit._throttle import AdaptiveLimit


def test_one_burst_of_throttles_halves_the_limit_once_and_successes_grow_it_back() -> None:
    limit = AdaptiveLimit(8)
    epoch = limit._epoch
    for _ in range(5):  # five requests of the same burst were throttled
        limit.throttled(epoch, None)
    assert limit.limit == 4 and limit.decreases == 1
    limit.throttled(limit._epoch, None)  # a request sent after the decrease: halve again
    assert limit.limit == 2 and limit.lowest == 2
    for _ in range(2):
        limit.succeeded()
    assert limit.limit == 3
    for _ in range(3 + 4 + 5 + 6 + 7 + 10):
        limit.succeeded()
    assert limit.limit == 8  # never above the configured concurrency


def test_never_more_holders_than_the_limit_and_waiters_go_when_it_grows() -> None:
    async def main() -> list[int]:
        limit = AdaptiveLimit(4)
        limit.throttled(limit._epoch, None)
        limit.throttled(limit._epoch, None)  # down to 1
        in_flight, peaks = 0, []
        release = asyncio.Event()

        async def request() -> None:
            nonlocal in_flight
            async with limit.slot():
                in_flight += 1
                peaks.append(in_flight)
                await release.wait()
                in_flight -= 1

        tasks = [asyncio.create_task(request()) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert in_flight == 1
        limit.succeeded()  # 1 success at limit 1: limit 2, a waiter goes in at once
        await asyncio.sleep(0.05)
        assert in_flight == 2
        release.set()
        await asyncio.gather(*tasks)
        return peaks

    assert max(asyncio.run(main())) <= 2


def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    async def main() -> None:
        limit = AdaptiveLimit(1)
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with limit.slot():
                held.set()
                await release.wait()

        async def waiter(done: list[str], name: str) -> None:
            async with limit.slot():
                done.append(name)

        done: list[str] = []
        first = asyncio.create_task(holder())
        await held.wait()
        cancelled = asyncio.create_task(waiter(done, "cancelled"))
        patient = asyncio.create_task(waiter(done, "patient"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, patient), timeout=5)
        assert done == ["patient"]

    asyncio.run(main())


def test_the_ceiling_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0)
