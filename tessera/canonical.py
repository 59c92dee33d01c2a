"""Canonical JSON: the one byte encoding that is hashed and signed.

The encoding is RFC 8785, the JSON Canonicalization Scheme (JCS), via the `rfc8785`
library: object keys sorted by their UTF-16 code units, no insignificant whitespace,
strings escaped minimally (only `"`, `\\` and control characters below U+0020, the
latter as \\b \\t \\n \\f \\r or \\u00XX), UTF-8, numbers written as ECMAScript's
shortest round-trip form (so 1.0 is `1`, 1e21 is `1e+21`). Integers must lie within
±(2^53 - 1); NaN, infinities and lone surrogates cannot be encoded. See docs/wire.md.

A value is canonical when encoding its decoded form gives back the same bytes; a
reader must therefore accept an integer where a number is expected (1.0 arrives as 1).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalError(ValueError):
    pass


def encode(value: Any) -> bytes:
    # Most values hold no float and no non-ASCII key: for those the C JSON encoder,
    # sorted and compact, writes exactly RFC 8785's bytes, several times faster than
    # the library's pure-Python writer (tests/unit/tessera/test_canonical_fast.py).
    try:
        plain = _plain(value)
        if plain:
            if plain is _INTEGRAL:
                value = _integral_to_int(value)
            return json.dumps(
                value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
            ).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        pass  # a lone surrogate or deep nesting: the library's own error, below
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as e:
        # The message names the kind of value only (never the value itself).
        raise CanonicalError(f"not encodable as canonical JSON: {_kind(e)}") from None


_PLAIN_ITEMS = 200_000
# _plain's answer for a value that is plain once its integral floats are written as ints.
_INTEGRAL = 2


def _plain(value: Any) -> int:
    """Only exact dicts with ASCII string keys, lists, tuples, strings, bools, None and
    safe integers, and floats that Python and ECMAScript write alike (not integral,
    1e-4 <= |x| < 1e16: no exponent either way). Python's JSON encoder matches RFC 8785
    on these: it escapes the same characters the same way, and code-point order is
    UTF-16 order for ASCII keys. An integral float within the safe integers (0.0, a
    cost of 1.0) is plain too, once written as the int ECMAScript writes: then this
    returns _INTEGRAL. Any other float, a non-ASCII key (UTF-16 order), a subclass or
    anything else goes to the library (0)."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    budget = _PLAIN_ITEMS  # a cycle would never end: past this, the library decides
    integral = False
    while stack:
        budget -= 1
        if budget < 0:
            return 0
        v = pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                return 0
        elif t is float:
            # The library writes str(v) itself when it has no exponent and no ".0",
            # and an integral float below 2^53 as the integer's digits (-0.0 as 0).
            if v.is_integer():
                if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                    return 0
                integral = True
            elif not 1e-4 <= abs(v) < 1e16:
                return 0
        elif t is dict:
            for k in v:
                if type(k) is not str or not k.isascii():
                    return 0
            push(v.values())
        elif t is list or t is tuple:
            push(v)
        else:
            return 0
    return _INTEGRAL if integral else 1


def _integral_to_int(v: Any) -> Any:
    """A copy of a plain value (checked by _plain) with its integral floats as ints."""
    t = type(v)
    if t is float:
        return int(v) if v.is_integer() else v
    if t is dict:
        return {k: _integral_to_int(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_integral_to_int(x) for x in v]
    return v


def _kind(e: BaseException) -> str:
    if isinstance(e, rfc8785.IntegerDomainError):
        return "an integer outside +/-(2^53 - 1)"
    if isinstance(e, rfc8785.FloatDomainError):
        return "NaN or an infinite number"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    text = str(e)
    if "UTF-8" in text:
        return "a string that is not valid Unicode (a lone surrogate)"
    if "keys must be strings" in text:
        return "an object key that is not a string"
    return "a value of an unsupported type"


def decode(data: bytes, *, max_bytes: int = 1 << 20) -> Any:
    """Decode canonical bytes, refusing anything that is not exactly canonical."""
    if len(data) > max_bytes:
        raise CanonicalError(f"encoding is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_number)
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as e:
        # ValueError beyond JSONDecodeError and UnicodeDecodeError: an integer literal
        # over Python's 4300-digit conversion limit.
        raise CanonicalError(f"not valid JSON: {type(e).__name__}") from None
    if encode(value) != data:
        raise CanonicalError("bytes are not in canonical form")
    return value


def _number(text: str) -> int | float:
    """JSON numbers are binary64 in RFC 8785: an integer literal beyond 2^53 - 1 is read
    as the double it denotes (and is canonical only if that double is written so)."""
    n = int(text)
    return n if abs(n) <= MAX_SAFE_INTEGER else float(text)


def _refuse_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not allowed")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
