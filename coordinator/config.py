"""The coordinator's configuration: who it is, whom it serves, which nodes it routes to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tessera import config, keys, schemas
from tessera.config import ApproversConfig, TlsConfig

ROLES = ("analyst", "approver")


@dataclass(frozen=True)
class Person:
    """A client certificate identity (subject CN), the person behind it, their role and
    their Ed25519 key id (an analyst signs requests with it; an approver, approvals)."""

    identity: str
    name: str
    role: str
    key: str


@dataclass(frozen=True)
class NodeConfig:
    organisation: str
    # host:port
    address: str
    # The node certificate's subject CN.
    identity: str
    # Datasets hosted, until the node's Describe says otherwise.
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoordinatorConfig:
    organisation: str
    listen: str
    state_dir: Path
    signing_key: Path
    tls: TlsConfig
    approvers: ApproversConfig
    people: tuple[Person, ...]
    nodes: tuple[NodeConfig, ...]
    # Deadline of each call to a node.
    deadline_seconds: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_workers: int = 16

    @property
    def trusted_approvers(self) -> dict[str, str]:
        return {a.key: a.name for a in self.approvers.trusted}

    def person(self, identity: str | None) -> Person | None:
        for p in self.people:
            if identity is not None and p.identity == identity:
                return p
        return None


def load(path: Path) -> CoordinatorConfig:
    cfg = config.load(CoordinatorConfig, path)
    validate(cfg, str(path))
    return cfg


def validate(cfg: CoordinatorConfig, where: str) -> None:
    def fail(msg: str) -> None:
        raise config.ConfigError(f"{where}: {msg}")

    def key_ok(key: str, what: str) -> None:
        try:
            keys.PublicKey.from_id(key)
        except keys.KeyError_ as e:
            fail(f"{what}: {e}")

    if not cfg.organisation.strip():
        fail("organisation must not be empty")
    for problem in cfg.approvers.problems():
        fail(problem)
    trusted = cfg.trusted_approvers
    for p in cfg.people:
        if p.role not in ROLES:
            fail(f"people {p.identity}: role must be one of {', '.join(ROLES)}")
        key_ok(p.key, f"people {p.identity}")
        if p.role == "approver" and p.key not in trusted:
            fail(f"people {p.identity}: an approver's key must be in approvers.trusted")
    for table, what, values in (
        ("people", "identity", [p.identity for p in cfg.people]),
        ("people", "key", [p.key for p in cfg.people]),
        ("nodes", "organisation", [n.organisation for n in cfg.nodes]),
    ):
        twice = _first_duplicate(values)
        if twice is not None:
            fail(f"{table}: {what} {twice!r} is listed twice")
    for n in cfg.nodes:
        if not n.organisation.strip() or not n.address.strip() or not n.identity.strip():
            fail("nodes: organisation, address and identity must not be empty")
        for ds in n.datasets:
            if schemas.dataset(ds) is None:
                fail(f"nodes {n.organisation}: {ds!r} is not a dataset of the data model")
    if not 0 < cfg.deadline_seconds <= 600:
        fail("deadline_seconds must be above 0 and at most 600")
    if not 1024 <= cfg.max_message_bytes <= 64 * 1024 * 1024:
        fail("max_message_bytes must be between 1 KiB and 64 MiB")
    if not 1 <= cfg.max_workers <= 256:
        fail("max_workers must be between 1 and 256")


def _first_duplicate(values: list[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
