"""Incidents involving children, held by the region's police force (`police`).

Incidents cluster among children known to social care: missing episodes among
children in care above all, domestic-abuse notifications among children in need.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.synth import calibration as cal
from tessera.synth import nhs_number
from tessera.synth.dates import age_years, iso
from tessera.synth.population import Population
from tessera.synth.rng import Generator
from tessera.synth.social_care import CareFlags
from tessera.synth.writer import Tables

Rates = npt.NDArray[np.float64]


def _rates(pop: Population, flags: CareFlags) -> dict[str, tuple[Rates, int]]:
    """Incidents a year per child, and the youngest age, for each incident type."""
    need, cp, care = flags.in_need, flags.cp, flags.looked_after_now
    sex = np.where(pop.male, 1.6, 0.4)
    return {
        "DOMESTIC_ABUSE_NOTIFICATION": (0.012 * (1 + 5.0 * need + 5.0 * cp), 4),
        "MISSING_EPISODE": (0.003 * (1 + 8.0 * need + 150.0 * care), 10),
        "EXPLOITATION_CONCERN": (0.001 * (1 + 10.0 * need + 40.0 * care), 10),
        "YOUTH_OFFENCE": (0.008 * (1 + 3.0 * need + 5.0 * care) * sex, 10),
    }


def simulate_police(rng: Generator, pop: Population, flags: CareFlags) -> Tables:
    n, ref = pop.size, pop.reference_day
    first = np.maximum(ref - cal.POLICE_HISTORY_DAYS, pop.dob)
    years = (ref - first) / 365.0
    propensity = rng.gamma(0.5, 2.0, size=n)  # a few children account for many incidents
    rates = _rates(pop, flags)
    types = list(rates)
    who_parts, when_parts, kind_parts = [], [], []
    for t, (rate, youngest) in enumerate(rates.values()):
        counts = rng.poisson(rate * propensity * years)
        who = np.repeat(np.arange(n, dtype=np.int64), counts)
        when = first[who] + np.floor(rng.random(who.size) * (ref - first[who])).astype(np.int64)
        old_enough = age_years(pop.dob[who], when) >= youngest
        who_parts.append(who[old_enough])
        when_parts.append(when[old_enough])
        kind_parts.append(np.full(int(old_enough.sum()), t, dtype=np.int64))
    who = np.concatenate(who_parts)
    when = np.concatenate(when_parts)
    kinds = np.concatenate(kind_parts)

    # The force's own person ids and its record of each person's NHS number.
    people = np.unique(who)
    ids = rng.choice(90_000_000, size=people.size, replace=False) + 10_000_000
    person_id = {
        i: f"{cal.POLICE_ID_PREFIX}{v}" for i, v in zip(people.tolist(), ids.tolist(), strict=True)
    }
    held = nhs_number.recorded(
        [pop.nhs[i] for i in people.tolist()],
        rng,
        present=cal.NHS_PRESENT["police"],
        transposed=cal.NHS_TRANSPOSED,
    )
    nhs = dict(zip(people.tolist(), held, strict=True))
    rows = sorted(
        (iso_day, person_id[i], nhs[i], types[k])
        for iso_day, i, k in zip(iso(when), who.tolist(), kinds.tolist(), strict=True)
    )
    return {
        "incidents": {
            "person_id": [r[1] for r in rows],
            "nhs_number": [r[2] for r in rows],
            "incident_date": [r[0] for r in rows],
            "incident_type": [r[3] for r in rows],
        }
    }
