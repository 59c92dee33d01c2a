"""The common data model (version 1) as code: datasets, tables, columns, code lists.

Templates are checked against these schemas, ingest validates files against
them and the compiler reads from the fixed *sources* (views) they declare.
Nothing here is built from request input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType


class ColumnType(str, Enum):
    TEXT = "text"  # free identifier text (ids, postcodes)
    CODE = "code"  # one of a declared code list, normalised to upper case
    DATE = "date"
    INT = "int"
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = False
    codes: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    unit: str

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class Source:
    """A fixed view that templates read from: a table joined to its unit's attributes."""

    name: str
    sql: str
    columns: tuple[Column, ...]
    unit: str

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class Dataset:
    name: str
    schema_version: int
    tables: tuple[Table, ...]
    optional_tables: frozenset[str]
    sources: Mapping[str, Source]
    unit: str
    # Purposes for which opted-out persons are still included (health only).
    opt_out_column: str | None = None
    # Whose records these are: datasets of one population at a node share one privacy
    # accountant, because their privacy units identify the same people.
    population: str = ""

    def table(self, name: str) -> Table | None:
        for t in self.tables:
            if t.name == name:
                return t
        return None


def _c(
    name: str,
    type_: ColumnType,
    *,
    required: bool = False,
    codes: tuple[str, ...] = (),
    lo: int | None = None,
    hi: int | None = None,
) -> Column:
    return Column(name, type_, required, codes, lo, hi)


T, C, D, N, B = ColumnType.TEXT, ColumnType.CODE, ColumnType.DATE, ColumnType.INT, ColumnType.BOOL

LEGAL_STATUS = ("C1", "C2", "D1", "E1", "J1", "J2", "J3", "L1", "L2", "L3", "V2", "V3", "V4")
NEED_CODES = tuple(f"N{i}" for i in range(1, 10))
PLACEMENT_CODES = (
    "A3",
    "A4",
    "A5",
    "A6",
    "H5",
    "K1",
    "K2",
    "K3",
    "P1",
    "P2",
    "P3",
    "P4",
    "R1",
    "R2",
    "R3",
    "R5",
    "S1",
    "T0",
    "T1",
    "T2",
    "T3",
    "T4",
    "U1",
    "U2",
    "U3",
    "U4",
    "U5",
    "U6",
    "Z1",
)
REASON_NEW_EPISODE = ("L", "P", "T", "B", "U", "S")
PLACE_PROVIDER = ("PR0", "PR1", "PR2", "PR3", "PR4", "PR5")
REASON_CEASED = (
    "E11",
    "E12",
    "E13",
    "E14",
    "E15",
    "E16",
    "E17",
    "E2",
    "E3",
    "E4A",
    "E4B",
    "E41",
    "E45",
    "E46",
    "E47",
    "E48",
    "E5",
    "E6",
    "E7",
    "E8",
    "E9",
    "X1",
)
ETHNIC_CODES = (
    "WBRI",
    "WIRI",
    "WIRT",
    "WOTH",
    "WROM",
    "MWBC",
    "MWBA",
    "MWAS",
    "MOTH",
    "AIND",
    "APKN",
    "ABAN",
    "AOTH",
    "BCRB",
    "BAFR",
    "BOTH",
    "CHNE",
    "OOTH",
    "REFU",
    "NOBT",
)
REFERRAL_SOURCES = (
    "1A",
    "1B",
    "1C",
    "1D",
    "2A",
    "2B",
    "3A",
    "3B",
    "3C",
    "3D",
    "3E",
    "3F",
    "4",
    "5A",
    "5B",
    "5C",
    "5D",
    "6",
    "7",
    "8",
    "9",
    "10",
)
CP_CATEGORIES = ("NEGLECT", "PHYSICAL", "SEXUAL", "EMOTIONAL", "MULTIPLE")
SEN_STATUS = ("NONE", "SEN_SUPPORT", "EHC_PLAN")
TERMS = ("AUTUMN", "SPRING", "SUMMER")
EXCLUSION_KINDS = ("SUSPENSION", "PERMANENT")
ED_CATEGORIES = ("1", "2", "3", "4")
INCIDENT_TYPES = (
    "DOMESTIC_ABUSE_NOTIFICATION",
    "MISSING_EPISODE",
    "EXPLOITATION_CONCERN",
    "YOUTH_OFFENCE",
)

# Purpose codes a template may declare. Only direct care includes opted-out persons.
PURPOSES = ("direct_care", "service_planning", "research", "statutory_return")
DIRECT_CARE = "direct_care"

_SSDA903_HEADER = Table(
    "header",
    (
        _c("CHILD", T, required=True),
        _c("SEX", C, required=True, codes=("1", "2")),
        _c("DOB", D, required=True),
        _c("ETHNIC", C, codes=ETHNIC_CODES),
        _c("UPN", T),
        _c("MOTHER", C, codes=("0", "1")),
        _c("MC_DOB", D),
    ),
    unit="CHILD",
)
_SSDA903_EPISODES = Table(
    "episodes",
    (
        _c("CHILD", T, required=True),
        _c("DECOM", D, required=True),
        _c("RNE", C, codes=REASON_NEW_EPISODE),
        _c("LS", C, required=True, codes=LEGAL_STATUS),
        _c("CIN", C, required=True, codes=NEED_CODES),
        _c("PLACE", C, required=True, codes=PLACEMENT_CODES),
        _c("PLACE_PROVIDER", C, codes=PLACE_PROVIDER),
        _c("DEC", D),
        _c("REC", C, codes=REASON_CEASED),
        _c("REASON_PLACE_CHANGE", T),
        _c("HOME_POST", T),
        _c("PL_POST", T),
        _c("URN", T),
    ),
    unit="CHILD",
)

_CIN_CHILDREN = Table(
    "children",
    (
        _c("child_id", T, required=True),
        _c("dob", D, required=True),
        _c("sex", C, required=True, codes=("1", "2")),
        _c("upn", T),
        _c("nhs_number", T),
    ),
    unit="child_id",
)
_CIN_REFERRALS = Table(
    "referrals",
    (
        _c("child_id", T, required=True),
        _c("referral_date", D, required=True),
        _c("referral_source", C, codes=REFERRAL_SOURCES),
        _c("primary_need", C, codes=NEED_CODES),
        _c("nfa", B),
    ),
    unit="child_id",
)
_CIN_EPISODES = Table(
    "cin_episodes",
    (
        _c("child_id", T, required=True),
        _c("start_date", D, required=True),
        _c("end_date", D),
        _c("primary_need", C, required=True, codes=NEED_CODES),
    ),
    unit="child_id",
)
_CIN_CP = Table(
    "cp_plans",
    (
        _c("child_id", T, required=True),
        _c("start_date", D, required=True),
        _c("end_date", D),
        _c("initial_category", C, required=True, codes=CP_CATEGORIES),
    ),
    unit="child_id",
)

_EDU_PUPILS = Table(
    "pupils",
    (
        _c("upn", T, required=True),
        _c("nhs_number", T),
        _c("dob", D, required=True),
        _c("fsm", B),
        _c("sen", C, codes=SEN_STATUS),
    ),
    unit="upn",
)
_EDU_ATTENDANCE = Table(
    "attendance",
    (
        _c("upn", T, required=True),
        _c("academic_year", T, required=True),
        _c("term", C, required=True, codes=TERMS),
        _c("sessions_possible", N, required=True, lo=0, hi=400),
        _c("sessions_missed", N, required=True, lo=0, hi=400),
    ),
    unit="upn",
)
_EDU_EXCLUSIONS = Table(
    "exclusions",
    (
        _c("upn", T, required=True),
        _c("exclusion_date", D, required=True),
        _c("kind", C, required=True, codes=EXCLUSION_KINDS),
    ),
    unit="upn",
)

_HEALTH_ED = Table(
    "ed_attendances",
    (
        _c("nhs_number", T, required=True),
        _c("arrival_date", D, required=True),
        _c("age_years", N, required=True, lo=0, hi=120),
        _c("attendance_category", C, codes=ED_CATEGORIES),
        _c("injury", B, required=True),
        _c("safeguarding_concern", B),
        _c("opted_out", B, required=True),
    ),
    unit="nhs_number",
)

_POLICE_INCIDENTS = Table(
    "incidents",
    (
        _c("person_id", T, required=True),
        _c("nhs_number", T),
        _c("incident_date", D, required=True),
        _c("incident_type", C, required=True, codes=INCIDENT_TYPES),
    ),
    unit="person_id",
)


def _pick(table: Table, *names: str) -> Table:
    """The columns of `table` that a source's SQL actually selects from it."""
    cols = tuple(c for c in table.columns if c.name in names)
    assert len(cols) == len(names), "a picked column is not in the table"
    return Table(table.name, cols, table.unit)


def _source(name: str, sql: str, tables: tuple[Table, ...], unit: str) -> Source:
    """A source's columns are the union of its tables' columns (first wins): exactly
    what its SQL selects, so a template can name no column the query lacks."""
    seen: dict[str, Column] = {}
    for t in tables:
        for c in t.columns:
            seen.setdefault(c.name, c)
    return Source(name, sql, tuple(seen.values()), unit)


def _dataset(
    name: str,
    tables: tuple[Table, ...],
    sources: tuple[Source, ...],
    unit: str,
    optional: frozenset[str] = frozenset(),
    opt_out_column: str | None = None,
    population: str = "children",
) -> Dataset:
    return Dataset(
        name=name,
        schema_version=1,
        tables=tables,
        optional_tables=optional,
        sources=MappingProxyType({s.name: s for s in sources}),
        unit=unit,
        opt_out_column=opt_out_column,
        population=population,
    )


DATASETS: Mapping[str, Dataset] = MappingProxyType(
    {
        "ssda903": _dataset(
            "ssda903",
            (_SSDA903_HEADER, _SSDA903_EPISODES),
            (
                _source(
                    "episodes",
                    # LEFT JOIN: a child with episodes but no header row stays in
                    # every statistic; its header fields (DOB, SEX, ETHNIC) are NULL.
                    "SELECT e.*, h.SEX, h.DOB, h.ETHNIC FROM episodes e "
                    "LEFT JOIN header h USING (CHILD)",
                    (_SSDA903_EPISODES, _pick(_SSDA903_HEADER, "SEX", "DOB", "ETHNIC")),
                    "CHILD",
                ),
                _source("header", "SELECT * FROM header", (_SSDA903_HEADER,), "CHILD"),
            ),
            "CHILD",
        ),
        "cin": _dataset(
            "cin",
            (_CIN_CHILDREN, _CIN_REFERRALS, _CIN_EPISODES, _CIN_CP),
            (
                _source(
                    "referrals",
                    "SELECT r.*, c.dob, c.sex FROM referrals r "
                    "LEFT JOIN children c USING (child_id)",
                    (_CIN_REFERRALS, _pick(_CIN_CHILDREN, "dob", "sex")),
                    "child_id",
                ),
                _source(
                    "cin_episodes",
                    "SELECT e.*, c.dob, c.sex FROM cin_episodes e "
                    "LEFT JOIN children c USING (child_id)",
                    (_CIN_EPISODES, _pick(_CIN_CHILDREN, "dob", "sex")),
                    "child_id",
                ),
                _source(
                    "cp_plans",
                    "SELECT p.*, c.dob, c.sex FROM cp_plans p "
                    "LEFT JOIN children c USING (child_id)",
                    (_CIN_CP, _pick(_CIN_CHILDREN, "dob", "sex")),
                    "child_id",
                ),
                _source("children", "SELECT * FROM children", (_CIN_CHILDREN,), "child_id"),
            ),
            "child_id",
        ),
        "education": _dataset(
            "education",
            (_EDU_PUPILS, _EDU_ATTENDANCE, _EDU_EXCLUSIONS),
            (
                _source(
                    "attendance",
                    "SELECT a.*, p.dob, p.fsm, p.sen FROM attendance a JOIN pupils p USING (upn)",
                    (_EDU_ATTENDANCE, _pick(_EDU_PUPILS, "dob", "fsm", "sen")),
                    "upn",
                ),
                _source(
                    "exclusions",
                    "SELECT x.*, p.dob, p.fsm, p.sen FROM exclusions x JOIN pupils p USING (upn)",
                    (_EDU_EXCLUSIONS, _pick(_EDU_PUPILS, "dob", "fsm", "sen")),
                    "upn",
                ),
                _source("pupils", "SELECT * FROM pupils", (_EDU_PUPILS,), "upn"),
            ),
            "upn",
            optional=frozenset({"exclusions"}),
        ),
        "health": _dataset(
            "health",
            (_HEALTH_ED,),
            (
                _source(
                    "ed_attendances", "SELECT * FROM ed_attendances", (_HEALTH_ED,), "nhs_number"
                ),
            ),
            "nhs_number",
            opt_out_column="opted_out",
            population="patients",
        ),
        "police": _dataset(
            "police",
            (_POLICE_INCIDENTS,),
            (_source("incidents", "SELECT * FROM incidents", (_POLICE_INCIDENTS,), "person_id"),),
            "person_id",
            population="police_subjects",
        ),
    }
)


# The flat CSV export many LAs make of the DfE CIN census (one row per referral, with
# its child's identifiers and, where there is one, its child protection plan).
CIN_CENSUS_FLAT_COLUMNS = (
    "LAchildID",
    "UPN",
    "PersonBirthDate",
    "GenderCurrent",
    "CINreferralDate",
    "ReferralSource",
    "PrimaryNeedCode",
    "CINclosureDate",
    "ReferralNFA",
    "CPPstartDate",
    "CPPendDate",
    "InitialCategoryOfAbuse",
)


def column_names(dataset_name: str, table_name: str) -> tuple[str, ...]:
    """A table's column names in schema order (the order of the statutory files)."""
    table = DATASETS[dataset_name].table(table_name)
    assert table is not None, f"{dataset_name} has no table {table_name}"
    return tuple(c.name for c in table.columns)


def dataset(name: str) -> Dataset | None:
    return DATASETS.get(name)
