"""Dates as int64 day numbers (days since 1970-01-01), vectorised, and their text forms."""

from __future__ import annotations

from datetime import date

import numpy as np
import numpy.typing as npt

Days = npt.NDArray[np.int64]

NO_DATE = np.iinfo(np.int64).min  # a blank date (an open episode's end)
_EPOCH = date(1970, 1, 1)


def day(d: date) -> int:
    return (d - _EPOCH).days


def years_before(d: date, years: int) -> date:
    """The same calendar day `years` earlier (29 February becomes 28 February)."""
    try:
        return d.replace(year=d.year - years)
    except ValueError:
        return d.replace(year=d.year - years, day=28)


def ymd(days: Days) -> tuple[Days, Days, Days]:
    """Year, month (1-12) and day (1-31) of each day number."""
    dt = days.astype("datetime64[D]")
    months = dt.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    dom = (dt - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, dom


def age_years(dob: Days, on: Days | int) -> Days:
    """Completed years of age on a date (or on each of several dates)."""
    by, bm, bd = ymd(dob)
    on_arr = np.broadcast_to(np.asarray(on, dtype=np.int64), dob.shape)
    ty, tm, td = ymd(on_arr)
    before_birthday = (tm < bm) | ((tm == bm) & (td < bd))
    result: Days = ty - by - before_birthday.astype(np.int64)
    return result


def iso(days: Days) -> list[str]:
    """YYYY-MM-DD, blank for NO_DATE."""
    blank = days == NO_DATE
    text = np.datetime_as_string(np.where(blank, 0, days).astype("datetime64[D]"), unit="D")
    return ["" if b else str(t) for t, b in zip(text.tolist(), blank.tolist(), strict=True)]


def dmy(days: Days) -> list[str]:
    """DD/MM/YYYY, as councils send SSDA903 files; blank for NO_DATE."""
    return [s and f"{s[8:10]}/{s[5:7]}/{s[0:4]}" for s in iso(days)]


def weekday(days: Days) -> Days:
    """Monday 0 ... Sunday 6."""
    result: Days = (days + 3) % 7  # 1970-01-01 was a Thursday
    return result


def to_date(d: int) -> date:
    return date.fromordinal(_EPOCH.toordinal() + d)


def iso_one(d: int) -> str:
    return "" if d == NO_DATE else to_date(d).isoformat()


def dmy_one(d: int) -> str:
    return "" if d == NO_DATE else to_date(d).strftime("%d/%m/%Y")
