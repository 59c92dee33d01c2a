"""The analyst's signed query request.

The body is canonical JSON, signed with the analyst's Ed25519 key under a
domain separator. It binds the template digest, parameter values, mode, a
request id and nonce, a validity window and the organisations it is addressed
to, so a coordinator can neither change it nor replay it elsewhere.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tessera import canonical, keys
from tessera.clock import isoformat, parse_iso
from tessera.templates.fields import safe_key
from tessera.templates.model import Mode

MAX_LIFETIME = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
_HEX = re.compile(r"^[0-9a-f]+$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
MAX_REQUEST_BYTES = 64 * 1024


class RequestError(ValueError):
    """A request body that is malformed (INVALID_ARGUMENT)."""


class RequestSignatureError(ValueError):
    """A request whose signature does not verify (UNAUTHENTICATED)."""


class StaleRequest(ValueError):
    """A request outside its validity window (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class QueryRequest:
    template_digest: str
    params: Mapping[str, Any]
    mode: Mode
    request_id: str
    nonce: str
    issued_at: datetime
    expires_at: datetime
    audience: tuple[str, ...]
    analyst_key: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "template_digest": self.template_digest,
            "params": dict(self.params),
            "mode": self.mode.value,
            "request_id": self.request_id,
            "nonce": self.nonce,
            "issued_at": isoformat(self.issued_at),
            "expires_at": isoformat(self.expires_at),
            "audience": list(self.audience),
            "analyst_key": self.analyst_key,
        }


@dataclass(frozen=True)
class SignedRequest:
    body: bytes
    signature: bytes

    @property
    def hash(self) -> str:
        return canonical.sha256_hex(self.body + b"\x00" + self.signature)


def new_request(
    *,
    template_digest: str,
    params: Mapping[str, Any],
    mode: Mode,
    audience: Sequence[str],
    analyst_key: str,
    now: datetime,
    lifetime: timedelta = timedelta(minutes=10),
) -> QueryRequest:
    return QueryRequest(
        template_digest=template_digest,
        params=dict(params),
        mode=mode,
        request_id=str(uuid.uuid4()),
        nonce=secrets.token_hex(16),
        issued_at=now,
        expires_at=now + lifetime,
        # An overlap request's audience is in the template's dataset order: the party order.
        audience=tuple(audience) if mode is Mode.OVERLAP else tuple(sorted(audience)),
        analyst_key=analyst_key,
    )


def sign(request: QueryRequest, key: keys.SigningKey) -> SignedRequest:
    if key.public.key_id != request.analyst_key:
        raise ValueError("the signing key is not the request's analyst key")
    body = canonical.encode(request.to_dict())
    return SignedRequest(body, key.sign(keys.QUERY_REQUEST, body))


def parse(body: bytes) -> QueryRequest:
    """Parse a canonical body, refusing anything malformed. Does not check the signature."""
    try:
        d = canonical.decode(body, max_bytes=MAX_REQUEST_BYTES)
    except canonical.CanonicalError as e:
        raise RequestError(f"request body: {e}") from None
    if not isinstance(d, dict):
        raise RequestError("request body must be an object")
    want = {
        "v",
        "template_digest",
        "params",
        "mode",
        "request_id",
        "nonce",
        "issued_at",
        "expires_at",
        "audience",
        "analyst_key",
    }
    if set(d) != want:
        missing, extra = sorted(want - set(d)), sorted(set(d) - want)
        # Unknown keys are the sender's text: shown short and printable only.
        unknown = [safe_key(k) for k in extra[:3]]
        raise RequestError(f"request body: missing {missing} / unknown {unknown}")
    if d["v"] != 1:
        raise RequestError("request body: unsupported version")
    digest = d["template_digest"]
    if not (isinstance(digest, str) and len(digest) == 64 and _HEX.match(digest)):
        raise RequestError("template_digest must be 64 lower-case hex digits")
    if not isinstance(d["params"], dict):
        raise RequestError("params must be an object")
    try:
        mode = Mode(d["mode"])
    except ValueError:
        raise RequestError(
            "mode must be combined, per_node, secure_aggregation or overlap"
        ) from None
    rid = d["request_id"]
    if not (isinstance(rid, str) and _REQUEST_ID.match(rid)):
        raise RequestError("request_id must be 8 to 64 letters, digits or '-'")
    nonce = d["nonce"]
    if not (isinstance(nonce, str) and 32 <= len(nonce) <= 64 and _HEX.match(nonce)):
        raise RequestError("nonce must be 32 to 64 lower-case hex digits")
    try:
        issued, expires = parse_iso(d["issued_at"]), parse_iso(d["expires_at"])
    except (TypeError, ValueError, AttributeError, OverflowError):
        # OverflowError: a time at the edge of the calendar moved out of range into UTC.
        raise RequestError("issued_at and expires_at must be ISO times with a zone") from None
    aud = d["audience"]
    if not (
        isinstance(aud, list)
        and 0 < len(aud) <= 1000
        and all(isinstance(a, str) and 0 < len(a) <= 200 for a in aud)
    ):
        raise RequestError("audience must list 1 to 1000 organisation names")
    try:
        keys.PublicKey.from_id(d["analyst_key"])
    except keys.KeyError_ as e:
        raise RequestError(f"analyst_key: {e}") from None
    return QueryRequest(
        digest, d["params"], mode, rid, nonce, issued, expires, tuple(aud), d["analyst_key"]
    )


def verify(signed: SignedRequest, parsed: QueryRequest | None = None) -> QueryRequest:
    """Parse and check the analyst's signature over the exact body bytes. `parsed`, if
    given, must be `parse(signed.body)`: a caller that parsed already saves a parse."""
    request = parse(signed.body) if parsed is None else parsed
    if not keys.PublicKey.from_id(request.analyst_key).verify(
        keys.QUERY_REQUEST, signed.body, signed.signature
    ):
        raise RequestSignatureError("the analyst's signature over the request does not verify")
    return request


def check_fresh(request: QueryRequest, now: datetime) -> None:
    if request.expires_at <= request.issued_at:
        raise StaleRequest("request expires before it was issued")
    if request.expires_at - request.issued_at > MAX_LIFETIME:
        raise StaleRequest("request validity window is longer than one hour")
    if request.issued_at > now + CLOCK_SKEW:
        raise StaleRequest("request is issued in the future")
    if request.expires_at <= now:
        raise StaleRequest("request has expired")
