"""The host-side types: what Limits accepts and what it implies."""

import typing

from vmpool import ExecStatus, Limits


def test_no_status_stems_from_output() -> None:
    # output beyond the cap is dropped, never a way for a run to end
    assert set(typing.get_args(ExecStatus)) == {"ok", "error", "exited", "timeout", "oom"}


def test_output_cap_is_max_output_bytes_up_to_the_ceiling() -> None:
    assert Limits(max_output_bytes=1234).output_cap_bytes == 1234
    assert Limits(max_output_bytes=20_000_000).output_cap_bytes == 8 * 2**20
