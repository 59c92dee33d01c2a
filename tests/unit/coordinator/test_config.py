"""Coordinator config: TOML into frozen dataclasses, unknown keys and unsafe settings refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.config import ConfigError
from tessera.coordinator import config
from tessera.keys import SigningKey

A1, A2, AN = (SigningKey.generate().public.key_id for _ in range(3))

GOOD = f"""
organisation = "West Yorkshire Combined Authority"
listen = "0.0.0.0:7443"
state_dir = "state"
signing_key = "keys/coordinator.key"
deadline_seconds = 4

[tls]
cert = "certs/coordinator.crt"
key = "certs/coordinator.key"
ca = "certs/ca.crt"

[approvers]
threshold = 2
trusted = [{{ name = "Ann", key = "{A1}" }}, {{ name = "Bo", key = "{A2}" }}]

[[people]]
identity = "ann"
name = "Ann"
role = "approver"
key = "{A1}"

[[people]]
identity = "cy"
name = "Cy"
role = "analyst"
key = "{AN}"

[[nodes]]
organisation = "Leeds"
address = "leeds.example:7443"
identity = "leeds-node"
datasets = ["ssda903", "cin"]
"""


def _load(tmp_path: Path, text: str) -> config.CoordinatorConfig:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    return config.load(path)


def test_a_good_config_loads_with_paths_resolved(tmp_path: Path) -> None:
    cfg = _load(tmp_path, GOOD)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.tls.ca == tmp_path / "certs" / "ca.crt"
    assert cfg.deadline_seconds == 4.0 and cfg.max_message_bytes == 4 * 1024 * 1024
    assert cfg.person("cy") == config.Person("cy", "Cy", "analyst", AN)
    assert cfg.person("nobody") is None and cfg.person(None) is None
    assert cfg.trusted_approvers == {A1: "Ann", A2: "Bo"}
    assert cfg.nodes[0].datasets == ("ssda903", "cin")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("deadline_seconds = 4", "deadline_seconds = 4\ncolour = 'red'"), "unknown key 'colour'"),
        (("threshold = 2", "threshold = 3"), "larger than the number of trusted"),
        (('role = "analyst"', 'role = "admin"'), "role must be one of"),
        (
            (f'role = "approver"\nkey = "{A1}"', f'role = "approver"\nkey = "{AN}"'),
            "must be in approvers.trusted",
        ),
        (('identity = "cy"', 'identity = "ann"'), "identity 'ann' is listed twice"),
        (('"ssda903", "cin"', '"ssda903", "crime"'), "not a dataset of the data model"),
        (("deadline_seconds = 4", "deadline_seconds = 0"), "deadline_seconds"),
        (('address = "leeds.example:7443"', 'address = ""'), "must not be empty"),
    ],
)
def test_bad_configs_are_refused(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, GOOD.replace(old, new, 1))
