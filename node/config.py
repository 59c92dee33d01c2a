"""A node's configuration: who it is, what it hosts, whom it trusts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tessera import config, schemas
from tessera.config import ApproversConfig, TlsConfig

ROLES = ("coordinator", "operator")


@dataclass(frozen=True)
class ClientConfig:
    """A client certificate identity (subject common name) and its role."""

    identity: str
    role: str


@dataclass(frozen=True)
class DatasetConfig:
    """A hosted dataset: the operator's budget per version, and its source files for ingest."""

    epsilon: float | None = None
    rho: float | None = None
    sources: Mapping[str, tuple[Path, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NodeConfig:
    organisation: str
    listen: str
    state_dir: Path
    data_dir: Path
    signing_key: Path
    tls: TlsConfig
    approvers: ApproversConfig
    clients: tuple[ClientConfig, ...]
    datasets: Mapping[str, DatasetConfig]
    accepted_purposes: tuple[str, ...] = schemas.PURPOSES
    max_message_bytes: int = 4 * 1024 * 1024
    max_workers: int = 16

    @property
    def trusted_approvers(self) -> dict[str, str]:
        return {a.key: a.name for a in self.approvers.trusted}

    def role_of(self, identity: str | None) -> str | None:
        for c in self.clients:
            if identity is not None and c.identity == identity:
                return c.role
        return None


def load(path: Path) -> NodeConfig:
    cfg = config.load(NodeConfig, path)
    validate(cfg, str(path))
    return cfg


def validate(cfg: NodeConfig, where: str) -> None:
    def fail(msg: str) -> None:
        raise config.ConfigError(f"{where}: {msg}")

    if not cfg.organisation.strip():
        fail("organisation must not be empty")
    for problem in cfg.approvers.problems():
        fail(problem)
    for c in cfg.clients:
        if c.role not in ROLES:
            fail(f"client {c.identity}: role must be one of {', '.join(ROLES)}")
    for p in cfg.accepted_purposes:
        if p not in schemas.PURPOSES:
            fail(f"accepted_purposes: unknown purpose {p!r}")
    for name, ds in cfg.datasets.items():
        d = schemas.dataset(name)
        if d is None:
            fail(f"datasets.{name}: not a dataset of the data model")
            continue
        if ds.epsilon is None and ds.rho is None:
            fail(f"datasets.{name}: give a budget (epsilon and/or rho)")
        for total in (ds.epsilon, ds.rho):
            if total is not None and not 0 < total <= 1000:
                fail(f"datasets.{name}: budgets must be above 0")
        for table in ds.sources:
            if d.table(table) is None:
                fail(f"datasets.{name}.sources: {table!r} is not a table of {name}")
    if not 1024 <= cfg.max_message_bytes <= 64 * 1024 * 1024:
        fail("max_message_bytes must be between 1 KiB and 64 MiB")
