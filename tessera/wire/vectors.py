"""Test vectors for other implementations of the Tessera wire (docs/wire.md).

`python -m tessera.wire.vectors` rewrites protos/testvectors/wire-v1.json from fixed
keys and fixed inputs (Ed25519 signatures are deterministic, so the file is too);
tests/unit/tessera/test_wire_vectors.py checks the file against this code and checks
every encoding, digest and signature in it independently.

The keys here are published test keys: never use them for anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tessera import answers, approvals, audit, canonical, keys, requests, roster, templates
from tessera.templates.model import Mode
from tessera.templates.parse import TEMPLATE_DIGEST_DOMAIN

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protos" / "testvectors" / "wire-v1.json"
TEMPLATE = ROOT / "examples" / "templates" / "police-incidents-by-type.toml"

# JSON texts (as another implementation might produce them) and their RFC 8785 form.
ENCODING_INPUTS = [
    ("numbers in shortest form", '{"one": 1.0, "big": 1e21, "small": 0.0000005, "neg0": -0.0}'),
    ("fractions", '{"a": 0.1, "b": 1.5, "c": 2.5e-7, "d": 123456789.125}'),
    ("integers up to 2^53-1", '{"max": 9007199254740991, "min": -9007199254740991}'),
    # U+FF01 sorts after U+1F600 (UTF-16 D83D DE00): not code point order.
    (
        "keys sorted by UTF-16 code units",
        '{"\\uff01": 5, "\\u20ac": 1, "\\ud83d\\ude00": 2, "z": 3, "A": 4}',
    ),
    ("minimal string escapes", '{"s": "tab\\t nl\\n quote\\" back\\\\ slash/ \\u0001 \\u2028 é"}'),
    ("nesting and whitespace", '{ "b" : [ true , false , null , { "y" : [ ] , "x" : { } } ] }'),
    ("non-ASCII kept as UTF-8", '{"name": "Bradford and Calderdale \\u00e9\\u4e2d"}'),
]
# JSON texts that have no RFC 8785 form: an implementation must refuse them.
REFUSED_INPUTS = [
    ("lone high surrogate", '{"s": "\\ud800"}'),
    ("lone low surrogate", '{"s": "\\udfff"}'),
    ("NaN", '{"n": NaN}'),
    ("infinity", '{"n": 1e400}'),
]
# Canonical-looking bytes a reader must refuse because they are not exactly canonical.
NON_CANONICAL = [
    ("trailing zero", '{"a":1.50}'),
    ("unsorted keys", '{"b":1,"a":2}'),
    ("whitespace", '{"a": 1}'),
    ("escaped non-ASCII", '{"a":"\\u00e9"}'),
    ("duplicate key", '{"a":1,"a":1}'),
    # Read as a binary64 number, 2^53 + 1 is 2^53: the literal is not its canonical form.
    ("integer not exactly a double", '{"n":9007199254740993}'),
]


def test_key(name: str) -> keys.SigningKey:
    seed = hashlib.sha256(b"tessera wire test vector key\x00" + name.encode()).digest()
    return keys.SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


def _seed_hex(key: keys.SigningKey) -> str:
    pem = key.private_pem()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return raw.hex()


def _blob(data: bytes) -> dict[str, str]:
    out = {"hex": data.hex(), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        out["utf8"] = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build() -> dict[str, Any]:
    names = ("approver-0", "approver-1", "analyst", "node-leeds", "coordinator")
    k = {n: test_key(n) for n in names}
    key_table = {
        n: {"ed25519_seed_hex": _seed_hex(key), "key_id": key.public.key_id} for n, key in k.items()
    }

    encoding = []
    for label, text in ENCODING_INPUTS:
        data = canonical.encode(json.loads(text))
        encoding.append({"name": label, "input": text, "canonical": _blob(data)})
    refused = [{"name": label, "input": text} for label, text in REFUSED_INPUTS]
    non_canonical = [{"name": label, "bytes_utf8": text} for label, text in NON_CANONICAL]

    # A template: TOML in, canonical JSON out, its digest, two approvals.
    t = templates.load_toml(TEMPLATE.read_text(encoding="utf-8"))
    t_bytes = templates.encode(t)
    digest = templates.digest_of_bytes(t_bytes)
    signed_approvals = [approvals.sign(digest, k[n]) for n in ("approver-0", "approver-1")]

    # The analyst's request for it.
    issued = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
    req = requests.QueryRequest(
        template_digest=digest,
        params={"period_start": "2025-04-01", "period_end": "2026-03-31"},
        mode=Mode.COMBINED,
        request_id="0b6f1e2a-5c3d-4e7f-9a8b-1c2d3e4f5a6b",
        nonce="00112233445566778899aabbccddeeff",
        issued_at=issued,
        expires_at=issued + timedelta(minutes=10),
        audience=("Bradford", "Leeds", "Wakefield"),
        analyst_key=k["analyst"].public.key_id,
    )
    signed = requests.sign(req, k["analyst"])

    # Leeds's answer: its payload, the signed statement naming it and its audit entry.
    payload = canonical.encode(
        {
            "cost": 1.0,
            "kind": "epsilon",
            "measures": [
                {
                    "ci95": 3.5,
                    "ci975": 4.25,
                    "mechanism": "discrete_laplace",
                    "name": "count",
                    "scale": 2.0,
                    "values": [12, 0, -1, 7],
                    "variance": 8.0,
                }
            ],
        }
    )
    prev = "11" * 32
    audit_fields = {
        "actor": {"analyst": req.analyst_key, "peer": "coordinator"},
        "cached": False,
        "cost": 1.0,
        "message": "answered",
        "mode": "combined",
        "outcome": "OK",
        "params": dict(req.params),
        "payload_sha256": answers.payload_digest(payload),
        "request_id": req.request_id,
        "seq": 42,
        "template_digest": digest,
        "time": "2026-04-01T09:30:01.000000Z",
    }
    audit_body = canonical.encode(audit_fields)
    entry_hash = audit.entry_hash(prev, audit_body)
    entry_sig = k["node-leeds"].sign(keys.AUDIT_ENTRY, bytes.fromhex(entry_hash))
    head_time = "2026-04-01T09:30:01.500000Z"
    head_msg = audit.head_message(42, entry_hash, head_time)
    head_sig = k["node-leeds"].sign(keys.AUDIT_HEAD, head_msg)
    statement = answers.Statement(
        organisation="Leeds",
        node_key=k["node-leeds"].public.key_id,
        request_id=req.request_id,
        request_hash=signed.hash,
        template_digest=digest,
        answer_key="22" * 32,
        dataset="police",
        dataset_version=3,
        payload_sha256=answers.payload_digest(payload),
        cost_kind="epsilon",
        cost=1.0,
        charged=1.0,
        from_cache=False,
        audit_seq=42,
        audit_hash=entry_hash,
    )
    signed_statement = answers.sign(statement, k["node-leeds"])

    # The roster of node keys the approvers vouch for.
    roster_body = roster.make(
        "West Yorkshire",
        [roster.Entry("Leeds", k["node-leeds"].public.key_id, "Leeds")],
        issued,
    )
    roster_digest = roster.digest(roster_body)
    roster_approval = roster.sign(roster_body, k["approver-0"])

    return {
        "about": (
            "Tessera wire v1 test vectors (docs/wire.md). Byte strings are given as hex "
            "(and as UTF-8 text where they are text); signatures as hex. Keys are "
            "published test keys: Ed25519 seeds, never to be used for anything else."
        ),
        "domains": {
            "template_digest": _blob(TEMPLATE_DIGEST_DOMAIN),
            "template_approval": _blob(keys.TEMPLATE_APPROVAL),
            "query_request": _blob(keys.QUERY_REQUEST),
            "answer": _blob(keys.ANSWER),
            "audit_entry": _blob(keys.AUDIT_ENTRY),
            "audit_head": _blob(keys.AUDIT_HEAD),
            "roster_digest": _blob(roster.ROSTER_DIGEST),
            "roster_approval": _blob(roster.ROSTER_APPROVAL),
        },
        "keys": key_table,
        "canonical_json": {
            "encode": encoding,
            "refuse": refused,
            "not_canonical": non_canonical,
        },
        "template": {
            "toml_file": "examples/templates/police-incidents-by-type.toml",
            "canonical": _blob(t_bytes),
            "digest": digest,
            "approvals": [
                {
                    "signer": n,
                    "approver_key": a.approver_key,
                    "message_hex": (keys.TEMPLATE_APPROVAL + bytes.fromhex(digest)).hex(),
                    "signature_hex": a.signature.hex(),
                }
                for n, a in zip(("approver-0", "approver-1"), signed_approvals, strict=True)
            ],
        },
        "request": {
            "canonical": _blob(signed.body),
            "signer": "analyst",
            "signature_hex": signed.signature.hex(),
            "request_hash": signed.hash,
        },
        "answer": {
            "payload": _blob(payload),
            "statement": _blob(signed_statement.statement),
            "signer": "node-leeds",
            "signature_hex": signed_statement.signature.hex(),
        },
        "roster": {
            "canonical": _blob(canonical.encode(roster_body)),
            "digest": roster_digest,
            "approvals": [
                {
                    "signer": "approver-0",
                    "approver_key": roster_approval.approver_key,
                    "message_hex": (roster.ROSTER_APPROVAL + bytes.fromhex(roster_digest)).hex(),
                    "signature_hex": roster_approval.signature.hex(),
                }
            ],
        },
        "audit": {
            "entry": {
                "seq": 42,
                "prev_hash": prev,
                "body": _blob(audit_body),
                "hash": entry_hash,
                "signer": "node-leeds",
                "signature_hex": entry_sig.hex(),
            },
            "head": {
                "seq": 42,
                "hash": entry_hash,
                "time": head_time,
                "message": _blob(head_msg),
                "signature_hex": head_sig.hex(),
            },
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render(), encoding="utf-8")
    print(f"wrote {VECTORS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
