"""Arrow arrays as numpy arrays without pyarrow's `to_numpy`.

pyarrow's conversions import pandas when it is installed (about 48 MiB of resident
memory in a node, for nothing the node uses), so a frame build reads a null-free
array's data buffer directly: fixed-width values as a view of it, booleans unpacked
from their bits; `filled` puts a value in place of each NULL (pyarrow's fill_null
would make a pyarrow scalar, which imports pandas too). An array of another type
goes through `to_numpy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.types as pat

_DTYPES = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def numpy_of(arr: pa.Array) -> npt.NDArray[Any]:
    """The values of `arr` (read-only when they are a view of its buffer)."""
    if arr.null_count == 0:
        data = arr.buffers()[1]
        if data is not None and pat.is_boolean(arr.type):
            bits = np.frombuffer(data, dtype=np.uint8)
            unpacked = np.unpackbits(bits, bitorder="little")
            out: npt.NDArray[Any] = unpacked[arr.offset : arr.offset + len(arr)].view(np.bool_)
            return out
        fixed = _DTYPES.get(arr.type)
        if data is not None and fixed is not None:
            return _view(data, np.dtype(fixed), arr)
    return arr.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def filled(arr: pa.Array, fill: int) -> npt.NDArray[Any]:
    """The values of a fixed-width integer array with `fill` in place of each NULL."""
    if arr.null_count == 0:
        return numpy_of(arr)
    fixed = _DTYPES.get(arr.type)
    data = arr.buffers()[1]
    if fixed is None or data is None:
        raise TypeError(f"not a fixed-width integer array: {arr.type}")
    out = _view(data, np.dtype(fixed), arr).copy()
    out[numpy_of(arr.is_null())] = fill
    return out


def _view(data: pa.Buffer, dtype: np.dtype[Any], arr: pa.Array) -> npt.NDArray[Any]:
    return np.frombuffer(data, dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)
