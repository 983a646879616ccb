"""How many requests a model API gets at once: fewer when it says it is overwhelmed.

A fixed concurrency that an API's rate limit cannot sustain turns into a storm of 429s, each
request retried on its own until some exhaust their retry budget. `AdaptiveLimit` behaves like
TCP's congestion control instead (additive increase, multiplicative decrease): it starts at the
configured concurrency, halves the number of requests in flight when the API throttles, and
adds one back after as many successes in a row as the current limit, never above the
configured value. When a throttling reply says how long to wait (``Retry-After``), no request
is sent until then, not only the one that was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator


class AdaptiveLimit:
    """An asyncio gate of at most `limit` holders; use from one event loop."""

    def __init__(self, ceiling: int) -> None:
        if ceiling < 1:
            raise ValueError("the concurrency ceiling must be at least 1")
        self.ceiling = ceiling
        self.limit = ceiling
        self.lowest = ceiling
        self.decreases = 0
        self._in_flight = 0
        self._successes = 0
        self._epoch = 0  # bumped at each decrease: one burst of 429s halves the limit once
        self._resume_at = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Hold one of the `limit` slots; yields the epoch to report a throttle with."""
        while self._in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake()  # a wake-up it received but cannot use goes to the next in line
                raise
        self._in_flight += 1
        try:
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            yield self._epoch
        finally:
            self._in_flight -= 1
            self._wake()

    def throttled(self, epoch: int, retry_after_s: float | None) -> None:
        """The request that held a slot in ``epoch`` was throttled."""
        if retry_after_s is not None and retry_after_s > 0:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after_s)
        self._successes = 0
        if epoch == self._epoch and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self.decreases += 1
            self._epoch += 1

    def succeeded(self) -> None:
        self._successes += 1
        if self.limit < self.ceiling and self._successes >= self.limit:
            self.limit += 1
            self._successes = 0
            self._wake()

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
