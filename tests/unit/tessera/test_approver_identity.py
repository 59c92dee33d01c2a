"""Approvers are counted as people (name and organisation), not as keys: an old and a
new key of one approver count once, on the node and at the coordinator alike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from tessera import approvals, requests, templates
from tessera.config import ApproversConfig, TrustedApprover
from tessera.errors import Refusal
from tessera.keys import SigningKey
from tessera.node.authorize import authorize
from tessera.templates.model import Mode
from tests.support import federation as fedlib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def _digest() -> str:
    return "ab" * 32


def test_two_keys_of_one_person_count_once() -> None:
    old, new, other = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    section = ApproversConfig(
        2,
        (
            TrustedApprover("Ann Smith", old.public.key_id, "Leeds City Council"),
            TrustedApprover("ann  smith", new.public.key_id, "Leeds City Council"),
            TrustedApprover("Bo Jones", other.public.key_id, "Leeds City Council"),
        ),
    )
    trusted = {a.key: a.name for a in section.trusted}
    ids = section.identities()
    both_of_ann = [approvals.sign(_digest(), k) for k in (old, new)]
    with pytest.raises(approvals.ApprovalRefused) as err:
        approvals.check(_digest(), both_of_ann, trusted, 2, identities=ids)
    assert "1 of the 2" in err.value.message
    counted = approvals.check(
        _digest(), [*both_of_ann, approvals.sign(_digest(), other)], trusted, 2, identities=ids
    )
    assert len(counted) == 2
    # The same name in another organisation is another person.
    elsewhere = dataclasses.replace(section.trusted[1], organisation="Bradford Council")
    split = ApproversConfig(2, (section.trusted[0], elsewhere))
    assert (
        len(approvals.check(_digest(), both_of_ann, trusted, 2, identities=split.identities())) == 2
    )


def test_a_threshold_above_the_number_of_people_is_a_config_problem() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    section = ApproversConfig(
        2,
        (
            TrustedApprover("Ann", a.public.key_id, "Leeds"),
            TrustedApprover("Ann", b.public.key_id, "Leeds"),
        ),
    )
    assert any("counted as people" in p for p in section.problems())


def test_the_node_refuses_two_keys_of_one_approver(fed: fedlib.Federation) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    rotated = SigningKey.generate()
    first = cfg.approvers.trusted[0]
    trusted = (*cfg.approvers.trusted, TrustedApprover(first.name, rotated.public.key_id))
    cfg = dataclasses.replace(cfg, approvers=ApproversConfig(2, trusted))
    t = fed.template(T2)
    digest = templates.digest(t)
    req = requests.new_request(
        template_digest=digest,
        params=P2,
        mode=Mode.COMBINED,
        audience=["Leeds"],
        analyst_key=fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    signed = requests.sign(req, fed.analyst)
    same_person = [approvals.sign(digest, fed.approvers[0]), approvals.sign(digest, rotated)]
    with pytest.raises(Refusal) as err:
        authorize(cfg, templates.encode(t), same_person, signed, datetime.now(UTC))
    assert err.value.code == "PERMISSION_DENIED"
    two_people = [
        approvals.sign(digest, fed.approvers[0]),
        approvals.sign(digest, fed.approvers[1]),
    ]
    assert (
        len(authorize(cfg, templates.encode(t), two_people, signed, datetime.now(UTC)).approvers)
        == 2
    )
