"""Date parsing for the formats councils actually send.

Accepted: ISO ``YYYY-MM-DD``, day-first ``D/M/YYYY`` and ``D/M/YY`` (``/``, ``-`` or
``.`` as separator, used consistently), each optionally followed by a time of day
that spreadsheet exports like to append (it is ignored). Anything else is
unreadable. Parsing never raises: callers get ``None`` and reject the row.
"""

from __future__ import annotations

import re
from datetime import date

# A trailing time such as " 00:00" or "T00:00:00.000" added by Excel or pandas exports.
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?"
# re.ASCII: \d must not match other scripts' digits, which int() would happily accept.
_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})" + _TIME, re.ASCII)
_DMY = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})" + _TIME, re.ASCII)


def expand_two_digit_year(yy: int, now_year: int) -> int:
    """The most recent year ending in ``yy`` that is not after ``now_year``.

    With ``now_year`` 2026: 26 -> 2026, 27 -> 1927. Dates of birth and episode
    dates are never in a future year, so this is the only sensible reading.
    """
    year = now_year - now_year % 100 + yy
    return year - 100 if year > now_year else year


def parse_date(text: str, now_year: int) -> date | None:
    """The date written in ``text``, or ``None`` if it is not a readable, real date."""
    s = text.strip()
    m = _ISO.fullmatch(s)
    if m is not None:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _DMY.fullmatch(s)
        if m is None:
            return None
        d, mo, raw_year = int(m[1]), int(m[3]), m[4]
        y = int(raw_year) if len(raw_year) == 4 else expand_two_digit_year(int(raw_year), now_year)
    try:
        return date(y, mo, d)
    except ValueError:  # 31/02, month 13, year 0
        return None
