"""Date columns held as day codes (frame.day_coded) give back the same days."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tessera.node.engine import frame as frames


@given(
    days=st.lists(st.one_of(st.none(), st.integers(-30_000, 60_000)), min_size=1, max_size=60),
    spread=st.sampled_from([1, 200, 70_000]),
)
def test_day_codes_give_back_the_days(days: list[int | None], spread: int) -> None:
    null = np.array([d is None for d in days])
    values = np.array([0 if d is None else (d % spread) for d in days], dtype=np.int32)
    col = frames.day_coded(frames.Column("date", values.copy(), null))
    assert col.values.dtype == np.int32
    assert col.values.tolist() == values.tolist()  # NULL rows read 0, as encoded
    valid = values[~null]
    if len(valid) and int(valid.max()) - int(valid.min()) >= (1 << 16) - 2:
        assert col.days is None  # too wide for 16-bit codes: the days are kept
    else:
        assert col.days is not None and col.stored is not None  # made again once asked
        assert col.days.codes.dtype in (np.uint8, np.uint16)
        assert (col.days.codes == 0).tolist() == null.tolist()


def test_other_columns_are_left_as_they_are() -> None:
    col = frames.Column("int", np.arange(3), np.zeros(3, dtype=np.bool_))
    assert frames.day_coded(col) is col
