"""The region's organisations and the published figures the synthetic data is tuned to.

Figures are approximate national figures for England (children looked after,
children in need, school census, ECDS), used for realism only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.synth.rng import Generator

Dist = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Council:
    name: str
    slug: str
    prefix: str  # local child ids: prefix + six digits
    la_code: int  # DfE local-authority number (first digits of a UPN)
    share: float  # of the region's child population
    fsm_rate: float
    care_factor: float  # relative rate of social-care involvement
    apkn_share: float  # Pakistani heritage share of children (ethnicity mix)
    districts: tuple[str, ...]  # postcode districts, for HOME_POST / PL_POST


def _districts(area: str, numbers: range) -> tuple[str, ...]:
    return tuple(f"{area}{i}" for i in numbers)


COUNCILS: tuple[Council, ...] = (
    Council("Bradford", "bradford", "BRD", 380, 0.27, 0.30, 1.10, 0.30,
            _districts("BD", range(1, 23))),
    Council("Calderdale", "calderdale", "CAL", 381, 0.08, 0.23, 1.00, 0.09,
            _districts("HX", range(1, 8))),
    Council("Kirklees", "kirklees", "KIR", 382, 0.19, 0.24, 0.85, 0.15,
            _districts("HD", range(1, 10)) + _districts("WF", range(12, 18))),
    Council("Leeds", "leeds", "LDS", 383, 0.32, 0.26, 1.00, 0.05,
            _districts("LS", range(1, 30))),
    Council("Wakefield", "wakefield", "WAK", 384, 0.14, 0.24, 1.05, 0.02,
            _districts("WF", range(1, 12))),
)  # fmt: skip
TRUST_NAME, TRUST_SLUG = "West Yorkshire NHS Trust", "west-yorkshire-nhs-trust"
POLICE_NAME, POLICE_SLUG = "West Yorkshire Police", "west-yorkshire-police"
POLICE_ID_PREFIX = "WYP"
OUT_OF_REGION_DISTRICTS = ("M14", "S10", "DN4", "HU5", "YO24", "BB1", "OL1", "LA1", "NE6", "DE23")

CHILD_POPULATION_AT_SCALE_1 = 500_000
MALE_SHARE_POPULATION = 0.512

# Rates per 10,000 children (England, approximate).
LOOKED_AFTER_PER_10K = 70.0
IN_NEED_PER_10K = 330.0
CP_PLAN_PER_10K = 42.0
REFERRALS_PER_10K_YEAR = 520.0
NFA_SHARE = 0.10  # referrals with no further action
FORMER_LAC_PER_LAC = 0.9  # children who left care in the 3-year history, per child in care
HISTORY_YEARS = 3

# Age brackets (years at the reference date): under 1, 1-4, 5-9, 10-15, 16+.
AGE_EDGES = (0, 1, 5, 10, 16, 18)
LAC_AGE_MIX = (0.05, 0.14, 0.17, 0.38, 0.26)
LAC_MALE_SHARE = 0.56
CP_AGE_MIX = (0.09, 0.27, 0.28, 0.31, 0.05)
CP_MALE_SHARE = 0.50
CIN_AGE_MIX = (0.04, 0.13, 0.23, 0.39, 0.21)  # in need, other than in care or on a plan
CIN_MALE_SHARE = 0.54
FORMER_LAC_AGE_MIX = (0.02, 0.25, 0.25, 0.33, 0.15)

NEED: Dist = (("N1", 0.56), ("N2", 0.10), ("N3", 0.03), ("N4", 0.08), ("N5", 0.14),
              ("N6", 0.03), ("N7", 0.005), ("N8", 0.03), ("N9", 0.025))  # fmt: skip
LAC_NEED: Dist = (("N1", 0.65), ("N2", 0.03), ("N3", 0.02), ("N4", 0.07), ("N5", 0.13),
                  ("N6", 0.02), ("N7", 0.005), ("N8", 0.07), ("N9", 0.005))  # fmt: skip
REFERRAL_SOURCE: Dist = (
    ("1A", 0.03), ("1B", 0.01), ("1C", 0.02), ("1D", 0.01), ("2A", 0.19), ("2B", 0.01),
    ("3A", 0.03), ("3B", 0.02), ("3C", 0.01), ("3D", 0.01), ("3E", 0.03), ("3F", 0.05),
    ("4", 0.02), ("5A", 0.07), ("5B", 0.03), ("5C", 0.03), ("5D", 0.01), ("6", 0.29),
    ("7", 0.03), ("8", 0.06), ("9", 0.02), ("10", 0.02),
)  # fmt: skip
CP_CATEGORY: Dist = (("NEGLECT", 0.50), ("EMOTIONAL", 0.37), ("PHYSICAL", 0.07),
                     ("SEXUAL", 0.04), ("MULTIPLE", 0.02))  # fmt: skip

# Placements, drawn by category for the child's age bracket, then by code in the category.
PLACEMENT_CATEGORY_BY_AGE: tuple[Dist, ...] = (
    (("foster", 0.80), ("parents", 0.07), ("residential", 0.02), ("other", 0.11)),
    (("foster", 0.75), ("parents", 0.08), ("residential", 0.02), ("other", 0.15)),
    (("foster", 0.80), ("parents", 0.09), ("residential", 0.06), ("other", 0.05)),
    (("foster", 0.69), ("parents", 0.07), ("residential", 0.19), ("other", 0.05)),
    (("foster", 0.55), ("parents", 0.05), ("residential", 0.30), ("other", 0.10)),
)
FOSTER: Dist = (("U1", 0.06), ("U2", 0.05), ("U3", 0.14), ("U4", 0.15), ("U5", 0.15),
                ("U6", 0.45))  # fmt: skip
RESIDENTIAL_UNDER_16: Dist = (("K2", 0.70), ("K1", 0.10), ("R1", 0.08), ("P3", 0.04),
                              ("S1", 0.08))  # fmt: skip
RESIDENTIAL_16_PLUS: Dist = (("K2", 0.45), ("H5", 0.40), ("K1", 0.05), ("P3", 0.05),
                             ("S1", 0.05))  # fmt: skip
OTHER_UNDER_10: Dist = (("A3", 0.10), ("A4", 0.15), ("A5", 0.20), ("A6", 0.35), ("Z1", 0.10),
                        ("R2", 0.05), ("T0", 0.05))  # fmt: skip
OTHER_10_TO_15: Dist = (("Z1", 0.30), ("R2", 0.20), ("R3", 0.10), ("R5", 0.20), ("T0", 0.20))
OTHER_16_PLUS: Dist = (("P2", 0.60), ("R5", 0.15), ("Z1", 0.15), ("R2", 0.05), ("T0", 0.05))

FIRST_LEGAL_STATUS: Dist = (("C1", 0.36), ("C2", 0.30), ("V2", 0.26), ("E1", 0.02),
                            ("L1", 0.01), ("L2", 0.01), ("J2", 0.02), ("D1", 0.02))  # fmt: skip
NEW_EPISODE_REASON: Dist = (("P", 0.75), ("L", 0.08), ("T", 0.07), ("B", 0.05), ("U", 0.05))
PLACE_CHANGE_REASON: Dist = (
    ("CARPL", 0.25), ("PLACE", 0.15), ("CLOSE", 0.05), ("ALLEG", 0.03), ("STAND", 0.10),
    ("APPRR", 0.05), ("CREQB", 0.08), ("CREQO", 0.07), ("CHILD", 0.07), ("LAREQ", 0.10),
    ("CUSTOD", 0.02), ("OTHER", 0.03),
)  # fmt: skip
CEASED_UNDER_5: Dist = (("E11", 0.30), ("E12", 0.05), ("E4A", 0.25), ("E4B", 0.03),
                        ("E13", 0.07), ("E41", 0.05), ("E45", 0.10), ("E46", 0.03),
                        ("E47", 0.07), ("E48", 0.02), ("E8", 0.03))  # fmt: skip
CEASED_5_TO_15: Dist = (("E4A", 0.45), ("E4B", 0.08), ("E13", 0.10), ("E41", 0.05),
                        ("E45", 0.08), ("E47", 0.06), ("E8", 0.10), ("E3", 0.02),
                        ("E11", 0.02), ("E9", 0.02), ("E14", 0.02))  # fmt: skip
CEASED_16_PLUS: Dist = (("E4A", 0.30), ("E4B", 0.08), ("E13", 0.08), ("E7", 0.25),
                        ("E8", 0.12), ("E9", 0.04), ("E14", 0.04), ("E15", 0.02),
                        ("E45", 0.02), ("E47", 0.02), ("E16", 0.01), ("E3", 0.02))  # fmt: skip

ETHNIC_OTHER: Dist = (
    ("WIRI", 0.003), ("WIRT", 0.002), ("WOTH", 0.03), ("WROM", 0.005), ("MWBC", 0.02),
    ("MWBA", 0.005), ("MWAS", 0.01), ("MOTH", 0.01), ("AIND", 0.015), ("ABAN", 0.005),
    ("AOTH", 0.01), ("BCRB", 0.005), ("BAFR", 0.02), ("BOTH", 0.005), ("CHNE", 0.003),
    ("OOTH", 0.01), ("REFU", 0.01), ("NOBT", 0.01),
)  # fmt: skip

# Education.
SEN_SHARES = (("EHC_PLAN", 0.03), ("SEN_SUPPORT", 0.13))  # the rest NONE
TERM_SESSIONS = (("AUTUMN", 136, 141), ("SPRING", 118, 125), ("SUMMER", 126, 133))
ABSENCE_MEAN = 0.055

# Health: ED attendances a year by age bracket; injury share by age bracket.
ED_RATE_BY_AGE = (0.55, 0.40, 0.22, 0.28, 0.38)
ED_INJURY_BY_AGE = (0.40, 0.40, 0.45, 0.45, 0.35)
ED_CATEGORY: Dist = (("1", 0.90), ("2", 0.03), ("3", 0.05), ("4", 0.02))
HEALTH_HISTORY_DAYS = 730
POLICE_HISTORY_DAYS = 730

# Linkage key: the share of records carrying an NHS number, by agency.
NHS_PRESENT = {"health": 0.99, "education": 0.90, "cin": 0.75, "police": 0.60}
NHS_TRANSPOSED = 0.01


def draw(rng: Generator, dist: Dist, n: int) -> list[str]:
    """`n` codes drawn independently from a weighted code list."""
    codes = [c for c, _ in dist]
    weights = np.array([w for _, w in dist], dtype=np.float64)
    picks = rng.choice(len(codes), size=n, p=weights / weights.sum())
    return [codes[i] for i in picks.tolist()]


def draw_one(rng: Generator, dist: Dist) -> str:
    return draw(rng, dist, 1)[0]


def age_bracket(age: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0 under 1, 1 aged 1-4, 2 aged 5-9, 3 aged 10-15, 4 aged 16 and over."""
    result: npt.NDArray[np.int64] = np.searchsorted(AGE_EDGES[1:-1], age, side="right")
    return result.astype(np.int64)
