"""The federation roster: node keys vouched for by k of n approvers, the analyst's way to
trust node answers without trusting the coordinator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera import approvals, roster, verify
from tessera.cli.main import main as cli
from tessera.keys import SigningKey

NOW = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture
def people() -> dict[str, SigningKey]:
    names = ("a0", "a1", "a2", "leeds", "bradford")
    return {n: SigningKey.generate() for n in names}


def _roster(people: dict[str, SigningKey]) -> dict[str, object]:
    return roster.make(
        "West Yorkshire",
        [
            roster.Entry("Leeds", people["leeds"].public.key_id, "Leeds"),
            roster.Entry("Bradford", people["bradford"].public.key_id, "Bradford"),
        ],
        NOW,
    )


def _approvers(people: dict[str, SigningKey]) -> list[str]:
    return [people[n].public.key_id for n in ("a0", "a1", "a2")]


def test_k_of_n_approvers_vouch_for_the_node_keys(people: dict[str, SigningKey]) -> None:
    body = _roster(people)
    signed = [roster.sign(body, people["a0"]), roster.sign(body, people["a1"])]
    entries = roster.verify(body, signed, _approvers(people), 2)
    assert entries["Leeds"].node_key == people["leeds"].public.key_id
    with pytest.raises(roster.RosterError, match="1 of the 2"):
        roster.verify(body, signed[:1] * 500, _approvers(people), 2)  # copies count once
    # A roster changed after signing (a node key swapped) does not verify.
    forged = dict(body)
    forged["nodes"] = [
        {**n, "node_key": people["a2"].public.key_id}
        for n in body["nodes"]  # type: ignore[attr-defined]
    ]
    with pytest.raises(roster.RosterError, match="does not verify"):
        roster.verify(forged, signed, _approvers(people), 2)
    # Untrusted signers do not count, and a template approval is no roster approval.
    outsider = [roster.sign(body, people["leeds"]), roster.sign(body, people["bradford"])]
    with pytest.raises(roster.RosterError, match="0 of the 2"):
        roster.verify(body, outsider, _approvers(people), 2)
    cross = approvals.sign(roster.digest(body), people["a0"])
    with pytest.raises(roster.RosterError, match="does not verify"):
        roster.verify(body, [cross, signed[1]], _approvers(people), 2)


def test_the_cli_and_a_trust_file_naming_the_approvers(
    tmp_path: Path, people: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "roster.json"
    nodes = [
        f"Leeds={people['leeds'].public.key_id}",
        f"Bradford={people['bradford'].public.key_id}=bradford-node",
    ]
    args = ["roster", "make", str(path), "--federation", "WY"]
    assert cli([*args, *(x for n in nodes for x in ("--node", n))], {}) == 0
    for n in ("a0", "a2"):
        key = tmp_path / f"{n}.key"
        people[n].save(key)
        assert cli(["roster", "approve", str(path), "--key", str(key)], {}) == 0
    trust = tmp_path / "trust.json"
    trust.write_text(
        json.dumps({"approvers": {"threshold": 2, "keys": _approvers(people)}, "roster": path.name})
    )
    assert verify.load_trust(trust) == {
        "Leeds": people["leeds"].public.key_id,
        "Bradford": people["bradford"].public.key_id,
    }
    trust.write_text(
        json.dumps({"approvers": {"threshold": 3, "keys": _approvers(people)}, "roster": path.name})
    )
    with pytest.raises(verify.TrustError, match="2 of the 3"):
        verify.load_trust(trust)
    assert cli(["roster", "show", str(path)], {}) == 0
    assert "bradford-node" in capsys.readouterr().out
