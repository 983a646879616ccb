"""The queue between the stage that produces samples and the scheduler that runs them.

With a model API, completions arrive one by one over minutes; the scheduler takes each as it
arrives, so a slow API and busy sandboxes never wait on each other. A samples file or the
reference solutions fill the feed at once and close it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Union

from ._types import ExecRequest, SampleResult

FeedItem = Union[ExecRequest, SampleResult]
"""A sample to run, or a verdict decided before execution (the model API failed for it)."""


class Feed:
    """A thread-safe, closable queue of `FeedItem`s: one or more producers, one consumer.

    A producer that fails for good closes the feed with the error; the consumer gets the error
    from `take` once it has taken every item put before it, so nothing produced is lost.
    """

    def __init__(self) -> None:
        self._items: deque[FeedItem] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None

    @classmethod
    def of(cls, items: Iterable[FeedItem]) -> Feed:
        """A closed feed holding ``items``."""
        feed = cls()
        feed._items.extend(items)
        feed._closed = True
        return feed

    def put(self, item: FeedItem) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("put on a closed feed")
            self._items.append(item)
            self._cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; ``error``: why the producer stopped early (raised by `take`). Idempotent."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._error = error
            self._cond.notify_all()

    @property
    def exhausted(self) -> bool:
        """Closed, every item taken, and no producer error left for `take` to raise."""
        with self._cond:
            return self._closed and not self._items and self._error is None

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def take(self, max_items: int, timeout: float | None = None) -> list[FeedItem]:
        """Up to ``max_items`` items, waiting at most ``timeout`` seconds (None: until one arrives
        or the feed closes) when there is none. Returns [] on timeout or when exhausted; raises
        the producer's error once the items before it are taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining if remaining is not None else 1.0)
            taken = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            if not taken and self._error is not None:
                error, self._error = self._error, None
                raise error
            return taken
