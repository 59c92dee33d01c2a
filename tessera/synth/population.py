"""One population of synthetic children, 0-17 on the reference date, across the five councils."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from tessera.synth import calibration as cal
from tessera.synth import nhs_number
from tessera.synth.dates import Days, age_years, day, years_before, ymd
from tessera.synth.rng import Generator

_UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


@dataclass(frozen=True)
class Population:
    """Column arrays, one entry per child. Children are grouped by council."""

    reference_day: int
    council: npt.NDArray[np.int64]  # index into calibration.COUNCILS
    dob: Days
    male: npt.NDArray[np.bool_]
    nhs: list[str]  # the child's true NHS number
    upn: list[str]  # "" if the child has never been in a state school
    in_school: npt.NDArray[np.bool_]  # on a state school's roll now
    ethnic: list[str]
    home_post: list[str]  # partial postcode, as in SSDA903 HOME_POST
    deprivation: npt.NDArray[np.float64]  # latent, standard normal-ish
    fsm: npt.NDArray[np.bool_]

    @property
    def size(self) -> int:
        return int(self.dob.size)

    def age(self) -> npt.NDArray[np.int64]:
        """Age in completed years on the reference date."""
        return age_years(self.dob, self.reference_day)

    def members(self, council: int) -> npt.NDArray[np.int64]:
        result: npt.NDArray[np.int64] = np.flatnonzero(self.council == council).astype(np.int64)
        return result


def council_sizes(scale: float) -> list[int]:
    total = cal.CHILD_POPULATION_AT_SCALE_1 * scale
    return [max(10, round(total * c.share)) for c in cal.COUNCILS]


def upn_check_letter(body: npt.NDArray[np.int64]) -> list[str]:
    """DfE UPN check letter for 12-digit bodies (weights 2..13 on characters 2..13, mod 23)."""
    total = np.zeros(body.shape, dtype=np.int64)
    for k in range(12):
        digit = (body // 10 ** (11 - k)) % 10
        total += digit * (k + 2)
    remainders: list[int] = np.mod(total, 23).tolist()
    return [_UPN_LETTERS[r] for r in remainders]


def _upns(rng: Generator, la_code: int, dob: Days, has: npt.NDArray[np.bool_]) -> list[str]:
    """UPNs for one council: LA number, a school number, the year issued, a serial."""
    n = int(has.sum())
    serial = rng.permutation(n).astype(np.int64)  # unique within the council
    school = 2000 + serial // 1000
    year_issued = (ymd(dob[has])[0] + 4) % 100
    body = ((la_code * 10_000 + school) * 100 + year_issued) * 1000 + serial % 1000
    letters = upn_check_letter(body)
    out = [""] * dob.size
    for i, letter, b in zip(np.flatnonzero(has).tolist(), letters, body.tolist(), strict=True):
        out[i] = f"{letter}{b:012d}"
    return out


def _ethnicity(rng: Generator, council: cal.Council, n: int) -> list[str]:
    rest = sum(w for _, w in cal.ETHNIC_OTHER)
    dist = (("WBRI", 1.0 - rest - council.apkn_share), ("APKN", council.apkn_share))
    return cal.draw(rng, dist + cal.ETHNIC_OTHER, n)


def build_population(rng: Generator, scale: float, reference_date: date) -> Population:
    if scale <= 0:
        raise ValueError("scale must be positive")
    ref = day(reference_date)
    earliest = day(years_before(reference_date, 18)) + 1  # aged 17 at most on the day
    sizes = council_sizes(scale)
    n = sum(sizes)
    capacity = nhs_number.capacity()
    if n > capacity:
        most = capacity / cal.CHILD_POPULATION_AT_SCALE_1
        raise ValueError(
            f"scale {scale:g} is too large: the synthetic NHS numbers allow {most:.2f}"
        )
    council = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    dob = rng.integers(earliest, ref + 1, size=n).astype(np.int64)
    male = rng.random(n) < cal.MALE_SHARE_POPULATION
    nhs = nhs_number.generate_unique(rng, n)
    age = age_years(dob, ref)
    ever_in_school = (age >= 4) & (rng.random(n) < 0.95)
    in_school = ever_in_school & (age <= 16) & (rng.random(n) < 0.97)

    deprivation = rng.standard_normal(n)
    noisy = deprivation + 0.5 * rng.standard_normal(n)
    fsm = np.zeros(n, dtype=np.bool_)
    upn: list[str] = []
    ethnic: list[str] = []
    home_post: list[str] = []
    start = 0
    for c, size in zip(cal.COUNCILS, sizes, strict=True):
        part = slice(start, start + size)
        fsm[part] = noisy[part] > np.quantile(noisy[part], 1.0 - c.fsm_rate)
        upn += _upns(rng, c.la_code, dob[part], ever_in_school[part])
        ethnic += _ethnicity(rng, c, size)
        districts = rng.choice(len(c.districts), size=size)
        sector = rng.integers(0, 10, size=size)
        home_post += [
            f"{c.districts[d]} {s}"
            for d, s in zip(districts.tolist(), sector.tolist(), strict=True)
        ]
        start += size
    return Population(
        reference_day=ref,
        council=council,
        dob=dob,
        male=male,
        nhs=nhs,
        upn=upn,
        in_school=in_school,
        ethnic=ethnic,
        home_post=home_post,
        deprivation=deprivation,
        fsm=fsm,
    )
