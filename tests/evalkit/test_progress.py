"""Progress output: plain lines for logs (CI), nothing when disabled."""

from __future__ import annotations

import io
from collections import Counter

from evalkit._progress import Progress


def test_plain_progress_ends_with_a_line_counting_statuses() -> None:
    stream = io.StringIO()
    progress = Progress(total=3, done=Counter(passed=1), stream=stream)
    progress.update("passed")
    progress.update("timeout")
    progress.close()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[evalkit] 3/3 samples") and "passed=2" in lines[0] and "timeout=1" in lines[0]


def test_disabled_progress_prints_nothing() -> None:
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream, enabled=False)
    progress.update("failed")
    progress.close()
    assert stream.getvalue() == ""
