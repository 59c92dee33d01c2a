"""An overlap request binds the party order: its audience is signed in the template's
dataset order, where every other mode's is sorted (whose digests do not change)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tessera import requests
from tessera.keys import SigningKey
from tessera.templates.model import Mode

NOW = datetime(2026, 4, 1, tzinfo=UTC)


def _request(mode: Mode, audience: list[str], key: SigningKey) -> requests.QueryRequest:
    return requests.new_request(
        template_digest="a" * 64,
        params={},
        mode=mode,
        audience=audience,
        analyst_key=key.public.key_id,
        now=NOW,
    )


def test_overlap_audience_keeps_the_party_order() -> None:
    key = SigningKey.generate()
    r = _request(Mode.OVERLAP, ["West Yorkshire Police", "Leeds"], key)
    assert r.audience == ("West Yorkshire Police", "Leeds")
    back = requests.verify(requests.sign(r, key))
    assert back.mode is Mode.OVERLAP and back.audience == r.audience
    # Another order is another signed request: the coordinator cannot swap the parties.
    swapped = requests.sign(
        requests.QueryRequest(**{**r.__dict__, "audience": ("Leeds", "West Yorkshire Police")}),
        key,
    )
    assert swapped.body != requests.sign(r, key).body


@pytest.mark.parametrize("mode", [Mode.COMBINED, Mode.PER_NODE, Mode.SECURE_AGGREGATION])
def test_other_modes_still_sort_the_audience(mode: Mode) -> None:
    r = _request(mode, ["Wakefield", "Bradford"], SigningKey.generate())
    assert r.audience == ("Bradford", "Wakefield")


def test_unknown_mode_names_overlap_among_the_choices() -> None:
    key = SigningKey.generate()
    body = requests.sign(_request(Mode.OVERLAP, ["A1", "B2"], key), key).body
    with pytest.raises(requests.RequestError, match="overlap"):
        requests.parse(body.replace(b'"overlap"', b'"sideways"'))
