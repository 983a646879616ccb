"""`Stream`: the events of one streamed answer (a command's output, a code run's lines), queued
by whoever produces them and drained by the thread that writes them to the client."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Stream"]

MAX_QUEUED_BYTES = 64 * 2**20  # a client that reads nothing for this long loses its stream


class Stream:
    """A queue of JSON events for one client, ending with one whose ``type`` is "end" or
    "stream_error" (`put(..., last=True)`). Producers never block: a client that falls more than
    MAX_QUEUED_BYTES behind gets an error event instead of the rest. `on_detach` is called (once)
    if the client goes away before the last event."""

    def __init__(self, on_detach: Callable[[], None] | None = None) -> None:
        self._queue: queue.Queue[tuple[dict[str, Any], bool, int]] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._closed = False
        self._on_detach = on_detach

    def put(self, event: dict[str, Any], last: bool = False) -> None:
        """Queue `event` (dropped if the stream already ended)."""
        size = len(json.dumps(event))
        with self._lock:
            if self._closed:
                return
            if self._queued + size > MAX_QUEUED_BYTES and not last:
                event, last = {"type": "stream_error", "error": {
                    "type": "sandbox_error", "message": "the client read its stream too slowly: more "
                    "than %d MiB were waiting; reconnect to get the rest" % (MAX_QUEUED_BYTES >> 20)}}, True
                size = len(json.dumps(event))
            self._queued += size
            self._closed = last
            self._queue.put((event, last, size))

    @property
    def ended(self) -> bool:
        """Whether the last event has been queued."""
        with self._lock:
            return self._closed

    def events(self, poll_s: float) -> Iterator[dict[str, Any] | None]:
        """The events in order, the last one included; None after `poll_s` seconds of silence
        (so that the writer can check on its client)."""
        while True:
            try:
                event, last, size = self._queue.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            with self._lock:
                self._queued -= size
            yield event
            if last:
                return

    def detach(self) -> None:
        """The client went away: stop queueing and tell the producer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            callback, self._on_detach = self._on_detach, None
        if callback is not None:
            callback()
