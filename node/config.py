"""A node's configuration: who it is, what it hosts, whom it trusts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tessera import config, schemas
from tessera.config import ApproversConfig, TlsConfig
from tessera.node.ingest.census import CENSUS
from tessera.node.vault import EncryptionConfig

ROLES = ("coordinator", "operator")


@dataclass(frozen=True)
class ClientConfig:
    """A client certificate identity (subject common name) and its role."""

    identity: str
    role: str


@dataclass(frozen=True)
class DatasetConfig:
    """A hosted dataset and its source files for ingest. Budgets belong to accountants."""

    sources: Mapping[str, tuple[Path, ...]] = field(default_factory=lambda: MappingProxyType({}))


PERIODS = ("financial_year", "calendar_year", "month")


@dataclass(frozen=True)
class PrivacyConfig:
    """The node's privacy policy. Every limit is in zCDP ρ, composed over every release
    an accountant pays for, whatever dataset, version or mechanism it came from.

    `lifetime_rho` caps an accountant for ever; `period_rho` is an allowance per
    `period` (1 April to 31 March for a financial year, in UTC). Give either or both.
    `delta` is the δ at which (ε, δ) is reported. `watermark` is the rollback
    watermark's path, outside the state folder (default: in `data_dir`)."""

    delta: float
    lifetime_rho: float | None = None
    period: str | None = None
    period_rho: float | None = None
    watermark: Path | None = None


@dataclass(frozen=True)
class AccountantConfig:
    """An operator-declared grouping of datasets that share one accountant. Limits not
    given here are the `[privacy]` defaults."""

    datasets: tuple[str, ...]
    lifetime_rho: float | None = None
    period_rho: float | None = None


@dataclass(frozen=True)
class SecureAggregationConfig:
    """`roster`: the federation roster (`tessera roster make|approve`), signed by k of
    this node's trusted approvers. Secure aggregation takes the other nodes' identity
    keys from it, never from the coordinator; without it the node refuses sessions."""

    roster: Path | None = None


@dataclass(frozen=True)
class Policy:
    """One accountant's resolved limits."""

    name: str
    lifetime_rho: float | None
    period: str | None
    period_rho: float | None


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
    privacy: PrivacyConfig
    accountants: Mapping[str, AccountantConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
    accepted_purposes: tuple[str, ...] = schemas.PURPOSES
    max_message_bytes: int = 4 * 1024 * 1024
    max_workers: int = 16
    # Where the data key comes from (node/vault.py); never the key itself.
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)

    @property
    def trusted_approvers(self) -> dict[str, str]:
        return {a.key: a.name for a in self.approvers.trusted}

    @property
    def watermark_path(self) -> Path:
        if self.privacy.watermark is not None:
            return self.privacy.watermark
        return self.data_dir / f".tessera-watermark-{_safe(self.organisation)}.json"

    def accountant_of(self, dataset: str) -> str:
        """The accountant that pays for `dataset`: an operator-declared one, or by default
        the accountant of the dataset's population (every dataset whose privacy unit
        identifies the same people)."""
        for name, acc in self.accountants.items():
            if dataset in acc.datasets:
                return name
        return f"population:{_population(dataset)}"

    def policy(self, accountant: str) -> Policy:
        p = self.privacy
        acc = self.accountants.get(accountant)
        if acc is None:
            return Policy(accountant, p.lifetime_rho, p.period, p.period_rho)
        return Policy(
            accountant,
            acc.lifetime_rho if acc.lifetime_rho is not None else p.lifetime_rho,
            p.period,
            acc.period_rho if acc.period_rho is not None else p.period_rho,
        )

    def accountant_names(self) -> list[str]:
        return sorted({self.accountant_of(d) for d in self.datasets})

    def role_of(self, identity: str | None) -> str | None:
        for c in self.clients:
            if identity is not None and c.identity == identity:
                return c.role
        return None


def _population(dataset: str) -> str:
    d = schemas.dataset(dataset)
    return d.population if d is not None else dataset


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


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
        for table in ds.sources:
            # cin also takes the DfE census return (XML or its flat CSV) as `census`.
            if d.table(table) is None and not (name == "cin" and table == CENSUS):
                fail(f"datasets.{name}.sources: {table!r} is not a table of {name}")
    _validate_privacy(cfg, fail)
    for problem in cfg.encryption.problems():
        fail(problem)
    if not 1024 <= cfg.max_message_bytes <= 64 * 1024 * 1024:
        fail("max_message_bytes must be between 1 KiB and 64 MiB")


def _validate_privacy(cfg: NodeConfig, fail: Callable[[str], None]) -> None:
    p = cfg.privacy
    if not 0 < p.delta < 1e-3:
        fail("privacy.delta must be above 0 and below 0.001")
    if p.lifetime_rho is None and p.period_rho is None:
        fail("privacy: give lifetime_rho, period_rho (with period), or both")
    if (p.period is None) != (p.period_rho is None):
        fail("privacy: period and period_rho go together")
    if p.period is not None and p.period not in PERIODS:
        fail(f"privacy.period must be one of {', '.join(PERIODS)}")
    limits = [("privacy.lifetime_rho", p.lifetime_rho), ("privacy.period_rho", p.period_rho)]
    seen: dict[str, str] = {}
    for name, acc in cfg.accountants.items():
        if name.startswith("population:") or not name.strip():
            fail(f"accountants.{name}: choose another name")
        if not acc.datasets:
            fail(f"accountants.{name}: list at least one dataset")
        if acc.period_rho is not None and p.period is None:
            fail(f"accountants.{name}: period_rho needs privacy.period")
        for ds in acc.datasets:
            if ds not in cfg.datasets:
                fail(f"accountants.{name}: {ds!r} is not a dataset of this node")
            if ds in seen:
                fail(f"accountants.{name}: {ds!r} is already paid for by {seen[ds]}")
            seen[ds] = name
        # An accountant may merge populations but never split one: a child in two
        # datasets must not get two budgets.
        populations = {_population(ds) for ds in acc.datasets}
        for other in cfg.datasets:
            if other not in acc.datasets and _population(other) in populations:
                fail(
                    f"accountants.{name}: {other!r} holds the same people as "
                    f"{', '.join(acc.datasets)}; list it in this accountant too"
                )
        limits += [
            (f"accountants.{name}.lifetime_rho", acc.lifetime_rho),
            (f"accountants.{name}.period_rho", acc.period_rho),
        ]
    for where, value in limits:
        if value is not None and not 0 < value <= 1000:
            fail(f"{where} must be above 0 and at most 1000")
