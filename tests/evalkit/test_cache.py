"""The completion cache (one SQLite file) and the feed between generation and scheduling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from evalkit import Completion, ExecRequest, InfraError, Sample
from evalkit._cache import CompletionCache, cache_key, default_cache_dir
from evalkit._feed import Feed


def test_keys_depend_on_every_part_of_the_request_and_the_sample_index() -> None:
    base = {"endpoint": "http://x/v1/chat/completions", "body": {"model": "m", "temperature": 0.0, "messages": [{"role": "user", "content": "p"}]}}
    other_param = {"endpoint": base["endpoint"], "body": {**base["body"], "temperature": 0.2}}  # type: ignore[dict-item]
    keys = {cache_key(base, 0), cache_key(base, 1), cache_key(other_param, 0)}
    assert len(keys) == 3
    assert cache_key(dict(reversed(list(base.items()))), 0) == cache_key(base, 0)  # key order does not matter


def test_completions_survive_reopening_and_a_damaged_entry_is_a_miss(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c")
    assert cache.get("k") is None
    cache.put("k", Completion(text="def f(): pass", finish_reason="stop", input_tokens=3, output_tokens=4))
    cache.close()
    again = CompletionCache(tmp_path / "c")
    assert again.get("k") == Completion(text="def f(): pass", finish_reason="stop", input_tokens=3, output_tokens=4)
    assert again._db is not None
    again._db.execute("UPDATE completions SET completion = 'garbage' WHERE key = 'k'")
    again._db.commit()
    assert again.get("k") is None
    again.close()


def test_a_cache_that_cannot_be_opened_is_bypassed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = CompletionCache(blocker / "cache")
    assert not cache.enabled and "going on without it" in caplog.text
    cache.put("k", Completion(text="x"))  # no error
    assert cache.get("k") is None


def test_a_corrupt_cache_file_is_bypassed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "completions.sqlite").write_bytes(b"this is not SQLite" * 100)
    cache = CompletionCache(tmp_path)
    assert not cache.enabled and "completion cache" in caplog.text


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "e"))
    assert default_cache_dir() == tmp_path / "e"
    monkeypatch.delenv("EVALKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "evalkit"


def item(i: int) -> ExecRequest:
    return ExecRequest(sample=Sample(task_id="t", sample_idx=i, completion=""), program="")


def test_a_feed_hands_items_over_between_threads_and_raises_the_producers_error_last() -> None:
    feed = Feed()
    assert feed.take(5, timeout=0.01) == []

    def produce() -> None:
        for i in range(3):
            feed.put(item(i))
        feed.close(InfraError("gone"))

    producer = threading.Thread(target=produce)
    producer.start()
    taken: list[object] = []
    with pytest.raises(InfraError, match="gone"):
        while True:
            taken += feed.take(2, timeout=5)
    producer.join()
    assert [t.sample.sample_idx for t in taken] == [0, 1, 2]  # type: ignore[union-attr]
    assert feed.exhausted and feed.take(1, timeout=0) == []
    with pytest.raises(RuntimeError):
        feed.put(item(4))


def test_a_closed_feed_without_error_is_exhausted_once_taken() -> None:
    feed = Feed.of([item(0), item(1)])
    assert not feed.exhausted
    assert len(feed.take(10)) == 2 and feed.exhausted
