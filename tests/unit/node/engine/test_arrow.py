"""node/engine/arrow.py reads Arrow arrays as pyarrow's own conversion does."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.node.engine import arrow

TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint64()]


@given(
    values=st.lists(st.one_of(st.none(), st.integers(0, 100)), max_size=70),
    cut=st.tuples(st.integers(0, 70), st.integers(0, 70)),
    type_=st.sampled_from(TYPES),
    fill=st.integers(-1, 0),
)
def test_filled_and_numpy_of_match_pyarrow_on_slices(
    values: list[int | None], cut: tuple[int, int], type_: pa.DataType, fill: int
) -> None:
    a, b = sorted(cut)
    if pa.types.is_unsigned_integer(type_):
        fill = 0  # the node fills -1 only into signed codes
    arr = pa.array(values, type=type_).slice(a, b - a)  # an offset into its buffers
    expected = np.array([fill if v is None else v for v in arr.to_pylist()], dtype=np.int64)
    assert arrow.filled(arr, fill).tolist() == expected.tolist()
    mask = arr.is_null()
    assert arrow.numpy_of(mask).tolist() == mask.to_pylist()
    if arr.null_count == 0:
        got = arrow.numpy_of(arr)
        assert got.dtype == arr.to_numpy().dtype
        assert got.tolist() == arr.to_pylist()


@given(bits=st.lists(st.booleans(), max_size=40), start=st.integers(0, 40))
def test_booleans_unpack_from_any_offset(bits: list[bool], start: int) -> None:
    arr = pa.array(bits, type=pa.bool_()).slice(min(start, len(bits)))
    assert arrow.numpy_of(arr).tolist() == arr.to_pylist()


def test_filled_refuses_a_type_it_cannot_read() -> None:
    with pytest.raises(TypeError, match="fixed-width"):
        arrow.filled(pa.array(["a", None]), 0)


def test_reading_arrays_does_not_import_pandas() -> None:
    # In a fresh interpreter: pyarrow's own conversions would import it (~48 MiB).
    code = (
        "import sys, pyarrow as pa, pyarrow.compute as pc\n"
        "from tessera.node.engine import arrow\n"
        "buf = pa.py_buffer(bytes(range(8)))\n"
        "arr = pa.Array.from_buffers(pa.uint16(), 4, [None, buf])\n"
        "arrow.numpy_of(arr); arrow.filled(pc.cast(arr, pa.int32()), 0)\n"
        "arrow.numpy_of(arr.is_null())\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
