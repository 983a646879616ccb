"""Shared fixtures: a real local Ray instance for the session, and capability checks."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent


def bwrap_missing_reason() -> str | None:
    if shutil.which("bwrap") is None:
        return "needs bubblewrap (apt-get install bubblewrap; scripts/setup.sh installs it)"
    return None


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for every in-process test that schedules work (5-10 s to start)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=256 * 2**20,
    )
    yield
    ray.shutdown()


@pytest.fixture
def sandboxes() -> None:
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def microvm() -> None:
    """Skip, with the reason, where the microvm driver cannot run (QEMU missing, or its template
    neither built nor buildable here; scripts/setup.sh installs QEMU and builds the template, so
    CI never skips)."""
    from vmpool import get_driver

    reason = get_driver("microvm").available()
    if reason is not None:
        pytest.skip("needs the microvm driver: %s" % reason)
