"""The completion cache: model replies kept across runs, so the same request is never paid twice.

A completion is stored under a key that hashes everything that decides it: the provider, its
URL, the model, the rendered prompt and system prompt, every sampling parameter and extra body
field, and the sample's index (sample 3 of a prompt is a different draw from sample 2). The
raw reply is cached, not the extracted code, so a better extractor applies to cached replies.

The cache is one SQLite file (``completions.sqlite``, WAL mode) so that concurrent runs can
share it; a cache that cannot be opened or written is reported once and then bypassed: it never
fails a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ._api import Completion

_log = logging.getLogger("evalkit")
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$EVALKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/evalkit``, else ``~/.cache/evalkit``."""
    if os.environ.get("EVALKIT_CACHE_DIR"):
        return Path(os.environ["EVALKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evalkit"


def cache_key(request_identity: dict[str, Any], sample_idx: int) -> str:
    """The key of sample ``sample_idx`` of the request described by ``request_identity``
    (a JSON-able mapping of everything that decides the reply)."""
    text = json.dumps({"v": CACHE_FORMAT_VERSION, "request": request_identity, "sample_idx": sample_idx}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CompletionCache:
    """Completions by key, in ``<folder>/completions.sqlite``. Use from one thread."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "completions.sqlite"
        self._db: sqlite3.Connection | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, completion TEXT NOT NULL, created REAL)")
            db.commit()
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            self._disable(f"cannot open the completion cache {self.path}: {exc}")

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def get(self, key: str) -> Completion | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT completion FROM completions WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._disable(f"cannot read the completion cache {self.path}: {exc}")
            return None
        if row is None:
            return None
        try:
            return Completion.model_validate_json(row[0])
        except ValueError:
            return None  # a damaged entry is a miss; the fresh completion replaces it

    def put(self, key: str, completion: Completion) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?, ?)", (key, completion.model_dump_json(), time.time()))
            self._db.commit()
        except sqlite3.Error as exc:
            self._disable(f"cannot write the completion cache {self.path}: {exc}")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _disable(self, why: str) -> None:
        _log.warning("%s; going on without it", why)
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None
