"""Answer statements and canonical JSON: parsing never fails other than as refused, and
any change to a signed statement is caught."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import answers, canonical
from tessera.wire import vectors

NODE = vectors.test_key("node-leeds")
STATEMENT = answers.Statement(
    organisation="Leeds",
    node_key=NODE.public.key_id,
    request_id="0b6f1e2a-5c3d-4e7f-9a8b-1c2d3e4f5a6b",
    request_hash="aa" * 32,
    template_digest="bb" * 32,
    answer_key="cc" * 32,
    dataset="ssda903",
    dataset_version=2,
    payload_sha256="dd" * 32,
    cost_kind="rho",
    cost=0.125,
    charged=0.0,
    from_cache=True,
    audit_seq=9,
    audit_hash="ee" * 32,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_encoding_round_trips_or_refuses(value: Any) -> None:
    try:
        data = canonical.encode(value)
    except canonical.CanonicalError:
        return
    assert canonical.encode(canonical.decode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_as_statements(data: bytes) -> None:
    try:
        answers.parse(data)
    except answers.StatementError:
        return
    pytest.fail("random bytes parsed as a statement")


def test_a_signed_statement_round_trips() -> None:
    signed = answers.sign(STATEMENT, NODE)
    assert answers.verify(signed, NODE.public.key_id) == STATEMENT
    with pytest.raises(ValueError, match="not the statement's node key"):
        answers.sign(STATEMENT, vectors.test_key("other"))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STATEMENT.to_dict())), st.data())
def test_any_changed_field_fails_verification(name: str, data: st.DataObject) -> None:
    signed = answers.sign(STATEMENT, NODE)
    d = STATEMENT.to_dict()
    replacement = data.draw(
        st.one_of(st.integers(-5, 5), st.text(max_size=8), st.booleans(), st.just("ff" * 32))
    )
    if replacement == d[name]:
        return
    d[name] = replacement
    try:
        body = canonical.encode(d)
    except canonical.CanonicalError:
        return
    with pytest.raises(answers.StatementError):
        answers.verify(answers.SignedStatement(body, signed.signature), NODE.public.key_id)


def test_a_statement_is_checked_against_the_trusted_key_not_its_own() -> None:
    other = vectors.test_key("impostor")
    forged = answers.sign(
        answers.Statement(**{**STATEMENT.__dict__, "node_key": other.public.key_id}), other
    )
    with pytest.raises(answers.StatementError, match="another node key"):
        answers.verify(forged, NODE.public.key_id)
