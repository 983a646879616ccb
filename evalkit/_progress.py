"""Progress output: a bar on a terminal, a plain line every few seconds otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from tqdm import tqdm

_PLAIN_INTERVAL_S = 10.0


class Progress:
    """Counts finished samples by status and shows them; ``enabled=False`` prints nothing."""

    def __init__(
        self, total: int, done: Counter[str] | None = None, *, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        """``done``: statuses of the samples finished before (a resumed run), counted from the start."""
        self.total = total
        self.counts: Counter[str] = Counter(done or {})
        self.done = sum(self.counts.values())
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._start = time.monotonic()
        self._last_line = self._start
        self._bar: tqdm[None] | None = None
        if enabled and self._stream.isatty():
            self._bar = tqdm(total=total, initial=self.done, file=self._stream, unit="sample", dynamic_ncols=True)

    def update(self, status: str) -> None:
        self.done += 1
        self.counts[status] += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif self._enabled and time.monotonic() - self._last_line >= _PLAIN_INTERVAL_S:
            self._line()

    def _postfix(self) -> str:
        return " ".join(f"{status}={count}" for status, count in sorted(self.counts.items()))

    def _line(self) -> None:
        self._last_line = time.monotonic()
        elapsed = self._last_line - self._start
        counts = f", {self._postfix()}" if self.counts else ""
        print(f"[evalkit] {self.done}/{self.total} samples, {elapsed:.0f} s{counts}", file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled:
            self._line()
            self._enabled = False
