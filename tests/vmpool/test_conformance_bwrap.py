"""The shared driver conformance suite (vmpool.conformance), run on real bubblewrap."""

import pytest

from vmpool.conformance import *  # noqa: F401,F403  (fixtures and Test* classes)


@pytest.fixture(scope="module")
def vmpool_driver() -> str:
    return "bwrap"
