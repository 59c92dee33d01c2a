"""Ingest: validate council source files against the common data model and
publish them as immutable, versioned DuckDB datasets."""

from .dates import parse_date
from .pipeline import ingest_dataset
from .report import IngestError, IngestReport, Rejection, TableCounts

__all__ = [
    "IngestError",
    "IngestReport",
    "Rejection",
    "TableCounts",
    "ingest_dataset",
    "parse_date",
]
