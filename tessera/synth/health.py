"""Emergency department attendances at the region's NHS trust (`health`)."""

from __future__ import annotations

import numpy as np

from tessera.synth import calibration as cal
from tessera.synth import nhs_number
from tessera.synth.dates import age_years, iso
from tessera.synth.population import Population
from tessera.synth.rng import Generator
from tessera.synth.social_care import CareFlags
from tessera.synth.writer import Tables, bools


def simulate_health(rng: Generator, pop: Population, flags: CareFlags) -> Tables:
    n, ref = pop.size, pop.reference_day
    first = np.maximum(ref - cal.HEALTH_HISTORY_DAYS, pop.dob)
    exposure = (ref - first) / 365.0
    rate = np.array(cal.ED_RATE_BY_AGE)[cal.age_bracket(pop.age())]
    rate = rate * (1.0 + 0.8 * flags.in_need + 0.8 * flags.looked_after_now)
    rate = rate * np.exp(0.15 * pop.deprivation) * rng.gamma(1.5, 1.0 / 1.5, size=n)
    counts = rng.poisson(rate * exposure)
    # Per person: how the trust holds the number (a few carry a keying slip) and the opt-out.
    held = nhs_number.recorded(pop.nhs, rng, present=1.0, transposed=cal.NHS_TRANSPOSED)
    opted_out = rng.random(n) < 0.05

    who = np.repeat(np.arange(n, dtype=np.int64), counts)
    span = ref - first[who]
    arrival = first[who] + np.floor(rng.random(who.size) * span).astype(np.int64)
    order = np.lexsort((who, arrival))
    who, arrival = who[order], arrival[order]
    m = who.size
    age = age_years(pop.dob[who], arrival)
    injury = rng.random(m) < np.array(cal.ED_INJURY_BY_AGE)[cal.age_bracket(age)]
    concern_p = 0.015 + 0.10 * flags.in_need[who] + 0.03 * (injury & (age < 1))
    concern = rng.random(m) < concern_p
    blank = rng.random(m) >= cal.NHS_PRESENT["health"]  # number not captured at arrival
    return {
        "ed_attendances": {
            "nhs_number": [
                "" if b else held[i] for i, b in zip(who.tolist(), blank.tolist(), strict=True)
            ],
            "arrival_date": iso(arrival),
            "age_years": [str(a) for a in age.tolist()],
            "attendance_category": cal.draw(rng, cal.ED_CATEGORY, m),
            "injury": bools(injury),
            "safeguarding_concern": bools(concern),
            "opted_out": bools(opted_out[who]),
        }
    }
