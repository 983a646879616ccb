"""The host-side types: what Limits accepts and what it implies."""

import typing

import pytest
from pydantic import ValidationError

from vmpool import ExecStatus, Limits


def test_no_status_stems_from_output() -> None:
    # output beyond the cap is dropped, never a way for a run to end
    assert set(typing.get_args(ExecStatus)) == {"ok", "error", "exited", "timeout", "oom"}


def test_output_cap_is_max_output_bytes_up_to_the_ceiling() -> None:
    assert Limits(max_output_bytes=1234).output_cap_bytes == 1234
    assert Limits(max_output_bytes=20_000_000).output_cap_bytes == 8 * 2**20


@pytest.mark.parametrize("field", ["wall_time_s", "cpu_time_s"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e12, 86400.5, 0, -1.0])
def test_time_limits_are_finite_and_at_most_a_day(field: str, bad: float) -> None:
    # inf or 1e12 used to pass and make every run fail with OverflowError far from the cause
    with pytest.raises(ValidationError, match=field):
        Limits(**{field: bad})


def test_a_day_is_the_longest_time_limit() -> None:
    limits = Limits(wall_time_s=86400, cpu_time_s=86400)
    assert (limits.wall_time_s, limits.cpu_time_s) == (86400, 86400)
