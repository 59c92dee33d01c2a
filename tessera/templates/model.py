"""Query templates as plain frozen dataclasses.

A template declares everything a node needs to answer safely: the dataset and
privacy unit, a public domain of cells, filters with typed parameter slots, the
statistic with its per-unit bounds, the privacy cost, post-processing and who
may ask. Its sensitivity follows from those bounds; it is never declared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from enum import Enum


class TemplateError(ValueError):
    """A template that is malformed or unsafe. `field` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Mode(str, Enum):
    COMBINED = "combined"
    PER_NODE = "per_node"
    SECURE_AGGREGATION = "secure_aggregation"
    # Overlap counts (tessera.overlap): the audience lists one organisation per dataset,
    # in the template's dataset order, which fixes who plays which party.
    OVERLAP = "overlap"


class StatisticKind(str, Enum):
    COUNT_UNITS = "count_units"
    COUNT_RECORDS = "count_records"
    SUM = "sum"
    MEAN = "mean"
    # Units present across datasets at different nodes, counted by the overlap
    # protocol (docs/overlap.md), never by a node's Execute.
    OVERLAP_COUNT = "overlap_count"


# Kinds the language reserves for later versions; refused with a clear message today.
RESERVED_STATISTICS: tuple[str, ...] = ()


class Choice(str, Enum):
    """Which record decides a unit's cell in count_units (`choose`, with a date `by`)."""

    LATEST = "latest"  # the record with the latest `by` date
    EARLIEST = "earliest"  # the record with the earliest `by` date


ParamValue = str | int | date


@dataclass(frozen=True)
class DateParam:
    name: str
    min: date
    max: date
    description: str = ""


@dataclass(frozen=True)
class EnumParam:
    name: str
    values: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class IntParam:
    name: str
    min: int
    max: int
    description: str = ""


Parameter = DateParam | EnumParam | IntParam


@dataclass(frozen=True)
class DateRef:
    """A date that is either a parameter or a fixed date (exactly one is set)."""

    param: str | None = None
    fixed: date | None = None


@dataclass(frozen=True)
class InFilter:
    """column IN (values) with fixed values, or column = the value of an enum parameter."""

    column: str
    values: tuple[str, ...] = ()
    param: str | None = None


@dataclass(frozen=True)
class EqualsFilter:
    column: str
    value: bool


@dataclass(frozen=True)
class RangeFilter:
    """An integer column within [min, max], inclusive."""

    column: str
    min: int
    max: int


@dataclass(frozen=True)
class BetweenFilter:
    """A date column within [start, end], inclusive."""

    column: str
    start: DateRef
    end: DateRef


@dataclass(frozen=True)
class ActiveOnFilter:
    """An interval [start_column, end_column) that is open on a date (end NULL = still open)."""

    start_column: str
    end_column: str
    on: DateRef


@dataclass(frozen=True)
class AgeFilter:
    """Age in completed years at a date (parameter, fixed, or a date column) within [min, max]."""

    birth_column: str
    at: DateRef
    at_column: str | None
    min: int
    max: int


Filter = InFilter | EqualsFilter | RangeFilter | BetweenFilter | ActiveOnFilter | AgeFilter


@dataclass(frozen=True)
class Category:
    label: str
    codes: tuple[str, ...]


@dataclass(frozen=True)
class Band:
    label: str
    min: int
    max: int


@dataclass(frozen=True)
class CategoriesDim:
    name: str
    column: str
    categories: tuple[Category, ...]
    # Label for every code not listed; None drops such rows. Without `unknown`, a
    # missing (NULL) code counts as not listed.
    other: str | None = None
    # Label for a missing (NULL) code; None leaves such rows to `other`, or drops them.
    unknown: str | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        own = tuple(c.label for c in self.categories)
        own += (self.other,) if self.other is not None else ()
        return own + ((self.unknown,) if self.unknown is not None else ())


@dataclass(frozen=True)
class BandsDim:
    """Integer bands over a column, or over age in completed years at a date."""

    name: str
    bands: tuple[Band, ...]
    column: str | None = None
    birth_column: str | None = None
    at: DateRef | None = None
    at_column: str | None = None
    # Label for a missing value (the column, the birth date or the `at_column` date is
    # NULL); None drops such rows. A value outside every band is dropped either way.
    unknown: str | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        own = tuple(b.label for b in self.bands)
        return own + ((self.unknown,) if self.unknown is not None else ())


@dataclass(frozen=True)
class MonthsDim:
    """Calendar months of a date column, from first to last inclusive (YYYY-MM)."""

    name: str
    column: str
    first: tuple[int, int]
    last: tuple[int, int]

    @property
    def labels(self) -> tuple[str, ...]:
        out = []
        y, m = self.first
        while (y, m) <= self.last:
            out.append(f"{y:04d}-{m:02d}")
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return tuple(out)


Dimension = CategoriesDim | BandsDim | MonthsDim


@dataclass(frozen=True)
class Statistic:
    kind: StatisticKind
    # count_units: how many cells one unit may appear in.
    max_cells_per_unit: int = 1
    # count_records, sum, mean: how many records of one unit are used.
    max_records_per_unit: int = 1
    column: str | None = None
    lower: int = 0
    upper: int = 0
    # count_units: which record decides the unit's cell(s). None: the keyed
    # pseudo-random order of the unit's records (as for the record caps).
    choose: Choice | None = None
    # The date column `choose` orders by; ties go to the keyed pseudo-random order.
    by: str | None = None


@dataclass(frozen=True)
class Privacy:
    epsilon: float | None = None
    rho: float | None = None


@dataclass(frozen=True)
class Output:
    min_count: int
    round_to: int


@dataclass(frozen=True)
class Analyst:
    name: str
    key: str


@dataclass(frozen=True)
class Access:
    analysts: tuple[Analyst, ...]
    expires: date
    quorum: int
    per_node_breakdown: bool
    # The one audience the template may be asked of (sorted organisation names), when
    # the approvers declare it: then every answer has one set of contributors, and no
    # node's figure can be isolated by differencing audiences. Empty: any audience.
    participants: tuple[str, ...] = ()
    # Secure aggregation's Shamir threshold t (docs/secure-aggregation.md): the fewest
    # contributors whose sum may be released. 0: not declared (no secure aggregation).
    threshold: int = 0


class OverlapMatch(str, Enum):
    ALL = "all"  # in every dataset
    A_NOT_B = "a_not_b"  # in dataset a (categories_from), not in dataset b
    AT_LEAST_K = "at_least_k"  # in at least k of the n datasets


@dataclass(frozen=True)
class OverlapDataset:
    """One party of an overlap: which units of which source count as known to it."""

    dataset: str
    source: str
    linkage_key: str  # the source's NHS number column
    filters: tuple[Filter, ...]
    schema_version: int = 1


@dataclass(frozen=True)
class OverlapSpec:
    datasets: tuple[OverlapDataset, ...]  # 2..4 distinct datasets; order = party order
    match: OverlapMatch
    k: int | None  # at_least_k only
    categories_from: int  # index into datasets: group_by is evaluated on its source
    b: int | None  # a_not_b only; a is categories_from


@dataclass(frozen=True)
class Template:
    id: str
    version: int
    title: str
    purpose: str
    description: str
    legal_basis: str
    dataset: str
    schema_version: int
    source: str
    privacy_unit: str
    parameters: tuple[Parameter, ...]
    filters: tuple[Filter, ...]
    group_by: tuple[Dimension, ...]
    statistic: Statistic
    privacy: Privacy
    output: Output
    access: Access
    # Set only for statistic overlap_count; `dataset`, `source` and `group_by` are then
    # those of the categories_from dataset, and `filters` is empty (they are per dataset).
    overlap: OverlapSpec | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d.labels) for d in self.group_by)

    @property
    def n_cells(self) -> int:
        return math.prod(self.shape)

    def parameter(self, name: str) -> Parameter | None:
        for p in self.parameters:
            if p.name == name:
                return p
        return None

    def analyst(self, key: str) -> Analyst | None:
        for a in self.access.analysts:
            if a.key == key:
                return a
        return None


@dataclass(frozen=True)
class Sensitivity:
    """How much one unit can move the released vector, from the declared bounds."""

    l1: float
    l2: float


def measure_sensitivities(stat: Statistic) -> dict[str, Sensitivity]:
    """Per released measure ("count", "sum"): the L1 and L2 sensitivity under
    adding or removing one unit, given the caps the compiled query enforces."""
    if stat.kind is StatisticKind.OVERLAP_COUNT:
        # One child is one element per agency; adding or removing it at one agency
        # moves it between at most two cells of the counter's view (docs/overlap.md).
        # The protocol calibrates its own noise to this through OpenDP.
        return {"count": Sensitivity(2.0, math.sqrt(2.0))}
    if stat.kind is StatisticKind.COUNT_UNITS:
        m = stat.max_cells_per_unit
        return {"count": Sensitivity(float(m), math.sqrt(m))}
    c = stat.max_records_per_unit
    counts = Sensitivity(float(c), float(c))
    if stat.kind is StatisticKind.COUNT_RECORDS:
        return {"count": counts}
    bound = c * max(abs(stat.lower), abs(stat.upper))
    sums = Sensitivity(float(bound), float(bound))
    if stat.kind is StatisticKind.SUM:
        return {"sum": sums}
    return {"sum": sums, "count": counts}
