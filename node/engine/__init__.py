"""The vectorised query engine: a template's exact vectors from a per-version frame.

`answer` is the one call the node makes for a template's exact vectors: the engine
when it handles the template's shape (node/engine/execute.py over the version's
frame, node/engine/frame.py), else the DuckDB compiler (node/compiler.py). Both give
the same vectors; tests/unit/node/engine checks that they do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.node import compiler
from tessera.node.compiler import IntVector
from tessera.node.engine import execute
from tessera.templates.model import ParamValue, StatisticKind, Template

ENGINE_KINDS = frozenset(
    {
        StatisticKind.COUNT_UNITS,
        StatisticKind.COUNT_RECORDS,
        StatisticKind.SUM,
        StatisticKind.MEAN,
    }
)


if TYPE_CHECKING:  # the catalog imports the engine's frames
    from tessera.node.catalog import DatasetCatalog, DatasetVersion


def answer(
    catalog: DatasetCatalog,
    version: DatasetVersion,
    template: Template,
    values: dict[str, ParamValue],
    *,
    exclude_opted_out: bool,
    order_key: bytes,
) -> dict[str, IntVector]:
    """One exact int64 vector per measure of `template` on `version`."""
    if template.statistic.kind in ENGINE_KINDS:
        frame = catalog.frame(version, template.source, order_key)
        if frame is not None:
            got = execute.run(frame, template, values, exclude_opted_out=exclude_opted_out)
            if got is not None:
                return got
    query = compiler.compile_query(
        template, values, exclude_opted_out=exclude_opted_out, order_key=order_key
    )
    cursor = catalog.connect(version).cursor()
    try:
        return compiler.run(cursor, query)
    finally:
        cursor.close()
