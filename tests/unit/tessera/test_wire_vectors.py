"""Conformance: protos/testvectors/wire-v1.json, read as another implementation would.

Each digest and signature is recomputed here from the rules in docs/wire.md with
hashlib and the raw Ed25519 primitive (not through tessera's helpers), and then the
tessera code is checked to agree: encode, refuse, parse, verify. The file must also be
exactly what `python -m tessera.wire.vectors` writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tessera import answers, approvals, audit, canonical, keys, requests, roster, templates
from tessera.wire import vectors

ROOT = Path(__file__).resolve().parents[3]
FILE = ROOT / "protos" / "testvectors" / "wire-v1.json"


@pytest.fixture(scope="module")
def v() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FILE.read_text(encoding="utf-8"))
    return data


def _bytes(blob: dict[str, str]) -> bytes:
    data = bytes.fromhex(blob["hex"])
    assert hashlib.sha256(data).hexdigest() == blob["sha256"]
    if "utf8" in blob:
        assert blob["utf8"].encode("utf-8") == data
    return data


def _public(v: dict[str, Any], signer: str) -> Ed25519PublicKey:
    entry = v["keys"][signer]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(entry["ed25519_seed_hex"]))
    public = private.public_key()
    raw = bytes.fromhex(entry["key_id"].removeprefix("ed25519:"))
    assert public.public_bytes_raw() == raw
    return Ed25519PublicKey.from_public_bytes(raw)


def _verifies(v: dict[str, Any], signer: str, message: bytes, signature_hex: str) -> None:
    pub = _public(v, signer)
    pub.verify(bytes.fromhex(signature_hex), message)
    # Ed25519 is deterministic: the seed reproduces the exact signature.
    seed = bytes.fromhex(v["keys"][signer]["ed25519_seed_hex"])
    assert Ed25519PrivateKey.from_private_bytes(seed).sign(message).hex() == signature_hex
    with pytest.raises(InvalidSignature):
        pub.verify(bytes.fromhex(signature_hex), message + b"x")


def _domain(v: dict[str, Any], name: str) -> bytes:
    return _bytes(v["domains"][name])


def test_the_file_is_what_the_generator_writes() -> None:
    assert FILE.read_text(encoding="utf-8") == vectors.render()


def test_domain_tags(v: dict[str, Any]) -> None:
    tags = {name: _domain(v, name) for name in v["domains"]}
    assert tags == {
        "template_digest": b"tessera/v1/template\x00",
        "template_approval": keys.TEMPLATE_APPROVAL,
        "query_request": keys.QUERY_REQUEST,
        "answer": keys.ANSWER,
        "audit_entry": keys.AUDIT_ENTRY,
        "audit_head": keys.AUDIT_HEAD,
        "roster_digest": b"tessera/v1/roster\x00",
        "roster_approval": b"tessera/v1/roster-approval\x00",
    }
    assert all(t.startswith(b"tessera/v1/") and t.endswith(b"\x00") for t in tags.values())


def test_canonical_json_encodings(v: dict[str, Any]) -> None:
    cases = v["canonical_json"]
    assert len(cases["encode"]) >= 7
    for case in cases["encode"]:
        want = _bytes(case["canonical"])
        assert canonical.encode(json.loads(case["input"])) == want, case["name"]
        # Canonical bytes decode, and re-encode to themselves.
        assert canonical.encode(canonical.decode(want)) == want
    for case in cases["refuse"]:
        with pytest.raises(canonical.CanonicalError):
            canonical.encode(json.loads(case["input"]))
    for case in cases["not_canonical"]:
        with pytest.raises(canonical.CanonicalError):
            canonical.decode(case["bytes_utf8"].encode("utf-8"))


def test_template_digest_and_approvals(v: dict[str, Any]) -> None:
    t = v["template"]
    data = _bytes(t["canonical"])
    digest = hashlib.sha256(_domain(v, "template_digest") + data).hexdigest()
    assert digest == t["digest"] == templates.digest_of_bytes(data)
    # The digest is NOT the bare SHA-256 of the bytes.
    assert t["digest"] != t["canonical"]["sha256"]
    parsed = templates.parse_canonical(data)
    toml = (ROOT / t["toml_file"]).read_text(encoding="utf-8")
    assert templates.encode(templates.load_toml(toml)) == data
    # JCS writes epsilon = 1.0 as 1; the parser reads it as the number 1.0.
    assert b'"privacy":{"epsilon":1}' in data and parsed.privacy.epsilon == 1.0
    for a in t["approvals"]:
        message = _domain(v, "template_approval") + bytes.fromhex(digest)
        assert message.hex() == a["message_hex"]
        _verifies(v, a["signer"], message, a["signature_hex"])
        assert a["approver_key"] == v["keys"][a["signer"]]["key_id"]


def test_request_signature_and_hash(v: dict[str, Any]) -> None:
    r = v["request"]
    body = _bytes(r["canonical"])
    _verifies(v, r["signer"], _domain(v, "query_request") + body, r["signature_hex"])
    sig = bytes.fromhex(r["signature_hex"])
    assert hashlib.sha256(body + b"\x00" + sig).hexdigest() == r["request_hash"]
    parsed = requests.verify(requests.SignedRequest(body, sig))
    assert parsed.template_digest == v["template"]["digest"]
    assert requests.SignedRequest(body, sig).hash == r["request_hash"]


def test_answer_statement(v: dict[str, Any]) -> None:
    a = v["answer"]
    payload, statement = _bytes(a["payload"]), _bytes(a["statement"])
    _verifies(v, a["signer"], _domain(v, "answer") + statement, a["signature_hex"])
    fields = json.loads(statement)
    assert fields["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert fields["request_hash"] == v["request"]["request_hash"]
    assert fields["audit_hash"] == v["audit"]["entry"]["hash"]
    st = answers.verify(
        answers.SignedStatement(statement, bytes.fromhex(a["signature_hex"])),
        v["keys"][a["signer"]]["key_id"],
    )
    assert st.organisation == "Leeds" and st.audit_seq == v["audit"]["entry"]["seq"]
    kind, cost, measures = answers.measures_from_payload(payload)
    assert (kind, cost) == ("epsilon", 1.0) and measures["count"].values == (12, 0, -1, 7)


def test_roster_digest_and_approval(v: dict[str, Any]) -> None:
    r = v["roster"]
    body = _bytes(r["canonical"])
    digest = hashlib.sha256(_domain(v, "roster_digest") + body).hexdigest()
    assert digest == r["digest"]
    for a in r["approvals"]:
        message = _domain(v, "roster_approval") + bytes.fromhex(digest)
        assert message.hex() == a["message_hex"]
        _verifies(v, a["signer"], message, a["signature_hex"])
    entries = roster.verify(
        json.loads(body),
        [
            approvals.Approval(a["approver_key"], bytes.fromhex(a["signature_hex"]))
            for a in r["approvals"]
        ],
        [v["keys"]["approver-0"]["key_id"]],
        1,
    )
    assert entries["Leeds"].node_key == v["keys"]["node-leeds"]["key_id"]


def test_audit_entry_and_head(v: dict[str, Any]) -> None:
    e = v["audit"]["entry"]
    body = _bytes(e["body"])
    digest = hashlib.sha256(bytes.fromhex(e["prev_hash"]) + body).hexdigest()
    assert digest == e["hash"] == audit.entry_hash(e["prev_hash"], body)
    assert json.loads(body)["seq"] == e["seq"]
    assert json.loads(body)["payload_sha256"] == v["answer"]["payload"]["sha256"]
    _verifies(v, e["signer"], _domain(v, "audit_entry") + bytes.fromhex(digest), e["signature_hex"])
    h = v["audit"]["head"]
    message = _bytes(h["message"])
    assert (
        message
        == json.dumps(
            {"hash": h["hash"], "seq": h["seq"], "time": h["time"]}, separators=(",", ":")
        ).encode()
    )
    assert message == audit.head_message(h["seq"], h["hash"], h["time"])
    _verifies(v, e["signer"], _domain(v, "audit_head") + message, h["signature_hex"])
