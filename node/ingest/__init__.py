"""Ingest: validate council source files against the common data model, reconcile
stacked returns, and publish them as immutable, versioned, sealed datasets
(docs/ingest.md)."""

from .dates import parse_date
from .pipeline import DEFAULT_MAX_REFUSED, ingest_dataset
from .report import IngestError, IngestReport, RefusalImpact, Rejection, RuleCount, TableCounts

__all__ = [
    "DEFAULT_MAX_REFUSED",
    "IngestError",
    "IngestReport",
    "RefusalImpact",
    "Rejection",
    "RuleCount",
    "TableCounts",
    "ingest_dataset",
    "parse_date",
]
