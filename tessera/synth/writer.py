"""Writing tables as CSV files whose headers are exactly the schema's columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tessera.schemas import Table

Columns = dict[str, list[str]]  # column name -> values, all the same length
Tables = dict[str, Columns]  # table name -> columns


def bools(values: npt.NDArray[np.bool_]) -> list[str]:
    return ["true" if v else "false" for v in values.tolist()]


def write_table(path: Path, table: Table, columns: Columns) -> int:
    """Write one table; returns its row count. Columns must follow the schema, in order."""
    names = [c.name for c in table.columns]
    if list(columns) != names:
        raise ValueError(f"{table.name}: columns {list(columns)} are not the schema's {names}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"{table.name}: columns differ in length")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(names)
        out.writerows(zip(*columns.values(), strict=True))
    return lengths.pop() if lengths else 0


def write_rows(path: Path, columns: Columns) -> int:
    """Write columns in the given order (any names); returns the row count."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"{path.name}: columns differ in length")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(list(columns))
        out.writerows(zip(*columns.values(), strict=True))
    return lengths.pop() if lengths else 0
