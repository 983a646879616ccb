"""Ctrl-C and SIGTERM while Ray starts are held back until start-up is over, then acted on."""

from __future__ import annotations

import os
import signal

import pytest

from evalkit._scheduler import _signals_deferred


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_raised_after_it(sig: signal.Signals) -> None:
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    reached_the_end = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with _signals_deferred():
                os.kill(os.getpid(), sig)
                reached_the_end = True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "our own handler comes back"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached_the_end


def test_nothing_is_raised_without_a_signal() -> None:
    with _signals_deferred():
        pass
