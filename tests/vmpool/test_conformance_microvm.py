"""The shared driver conformance suite (vmpool.conformance), run on real QEMU microVMs.

On our machines this is QEMU with TCG emulation (no hardware virtualization): every sandbox is
restored from the template's snapshot, so the suite takes minutes, not the hour cold boots
would. scripts/setup.sh installs QEMU and builds the ``base`` template, so CI runs it.
"""

import pytest

from vmpool.conformance import *  # noqa: F401,F403  (fixtures and Test* classes)

pytestmark = pytest.mark.microvm


@pytest.fixture(scope="module")
def vmpool_driver(microvm: None) -> str:
    return "microvm"
