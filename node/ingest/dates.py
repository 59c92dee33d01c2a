"""Date parsing for the formats councils actually send.

Accepted: ISO ``YYYY-MM-DD``, day-first ``D/M/YYYY`` and ``D/M/YY`` (``/``, ``-`` or
``.`` as separator, used consistently), each optionally followed by a time of day
that spreadsheet exports like to append (it is ignored), and Excel serial day
numbers (``43831`` or ``43831.0``: days since 30 December 1899, as a spreadsheet
stores a date cell that lost its formatting) between 1 January 1901 and
31 December 2099. Anything else is unreadable. Parsing never raises: callers get
``None`` and reject the row.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Final

# A trailing time such as " 00:00" or "T00:00:00.000" added by Excel or pandas exports.
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?"
# re.ASCII: \d must not match other scripts' digits, which int() would happily accept.
_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(" + _TIME + ")", re.ASCII)
_DMY = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})(" + _TIME + ")", re.ASCII)
_SERIAL = re.compile(r"(\d{3,5})(?:\.0*)?", re.ASCII)

_EXCEL_EPOCH: Final = date(1899, 12, 30)
_SERIAL_MIN: Final = (date(1901, 1, 1) - _EXCEL_EPOCH).days
_SERIAL_MAX: Final = (date(2099, 12, 31) - _EXCEL_EPOCH).days

# The form a date was written in, as counted in the ingest report.
ISO: Final = "ISO (YYYY-MM-DD)"
DMY: Final = "DD/MM/YYYY"
DMY_SHORT: Final = "DD/MM/YY (two-digit year)"
EXCEL: Final = "Excel serial number"
WITH_TIME: Final = "with a time of day (ignored)"


def expand_two_digit_year(yy: int, now_year: int) -> int:
    """The most recent year ending in ``yy`` that is not after ``now_year``.

    With ``now_year`` 2026: 26 -> 2026, 27 -> 1927. Dates of birth and episode
    dates are never in a future year, so this is the only sensible reading.
    """
    year = now_year - now_year % 100 + yy
    return year - 100 if year > now_year else year


def parse_date_form(text: str, now_year: int) -> tuple[date, str] | None:
    """The date written in ``text`` and the form it was written in, or ``None``."""
    s = text.strip()
    form = ISO
    m = _ISO.fullmatch(s)
    if m is not None:
        y, mo, d, time = int(m[1]), int(m[2]), int(m[3]), m[4]
    else:
        m = _DMY.fullmatch(s)
        if m is None:
            serial = _SERIAL.fullmatch(s)
            if serial is None:
                return None
            n = int(serial[1])
            if not _SERIAL_MIN <= n <= _SERIAL_MAX:
                return None
            return _EXCEL_EPOCH + timedelta(days=n), EXCEL
        d, mo, raw_year, time = int(m[1]), int(m[3]), m[4], m[5]
        if len(raw_year) == 4:
            y, form = int(raw_year), DMY
        else:
            y, form = expand_two_digit_year(int(raw_year), now_year), DMY_SHORT
    try:
        parsed = date(y, mo, d)
    except ValueError:  # 31/02, month 13, year 0
        return None
    return parsed, (f"{form}, {WITH_TIME}" if time else form)


def parse_date(text: str, now_year: int) -> date | None:
    """The date written in ``text``, or ``None`` if it is not a readable, real date."""
    parsed = parse_date_form(text, now_year)
    return None if parsed is None else parsed[0]
