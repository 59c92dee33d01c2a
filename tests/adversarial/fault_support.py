"""Helpers for the fault, load and DP-audit tests.

- real node processes (`python -m node.main --config`), started from their ready
  line, killed with SIGKILL or stopped, and their RSS read from /proc;
- a node served in-process around a NodeService we build ourselves (to inject a
  ledger whose writes fail as a full disk does);
- read-only figures from a node's ledger file (what was spent, what was paid for);
- a small real filesystem (a loop-mounted ext4 image), skipped where mounting is
  not permitted;
- Clopper-Pearson intervals and an empirical lower bound on epsilon;
- writing figures to tests/adversarial/results/ (not committed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from tessera import config, requests, serving
from tessera.clock import Clock
from tessera.keys import SigningKey
from tessera.node import main as node_main
from tessera.node import secret
from tessera.node.catalog import DatasetCatalog
from tessera.node.config import DatasetConfig, NodeConfig, PrivacyConfig
from tessera.node.ledger import Ledger
from tessera.node.service import NodeService
from tessera.node.servicer import NodeServicer
from tessera.tls import TlsFiles
from tessera.wire.v1 import node_pb2, node_pb2_grpc
from tests.support import federation as fedlib

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
READY_TIMEOUT = 60.0


# -- figures -----------------------------------------------------------------------------


def record(name: str, variant: str, figures: Mapping[str, Any]) -> Path:
    """Merge `figures` into the `variant` entry of results/<name>.json (quick and soak
    runs keep their own entries; several tests may add to one entry)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (FileNotFoundError, ValueError):
        data = {}
    entry = data.get(variant) if isinstance(data.get(variant), dict) else {}
    entry.update(figures)
    entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data[variant] = entry
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


# -- node configuration --------------------------------------------------------------------


def big_budget_config(
    fed: fedlib.Federation,
    name: str = "Leeds",
    *,
    epsilon: float = 1000.0,
    rho: float = 1000.0,
    state_dir: Path | None = None,
    data_dir: Path | None = None,
) -> NodeConfig:
    """A node config with a large test-only budget on both council datasets."""
    cfg = fedlib.node_config(fed, name)
    cfg = dataclasses.replace(
        cfg,
        datasets={"ssda903": DatasetConfig(), "cin": DatasetConfig()},
        # ssda903 and cin share the children's accountant: room for both figures, up to
        # the most a node allows (rho 1000).
        privacy=PrivacyConfig(delta=1e-6, lifetime_rho=min(epsilon**2 / 2 + rho, 1000.0)),
    )
    if state_dir is not None:
        cfg = dataclasses.replace(cfg, state_dir=state_dir)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    return cfg


def write_config(fed: fedlib.Federation, cfg: NodeConfig) -> Path:
    path = fed.root / f"{cfg.organisation.lower()}.toml"
    path.write_text(config.dump(cfg))
    return path


def request_id(req: node_pb2.ExecuteRequest) -> str:
    return requests.parse(req.request.canonical).request_id


# -- node processes ----------------------------------------------------------------------------


class NodeProcess:
    """`python -m node.main --config <path>` as a child process. Ready when it prints
    its ready line (never by sleeping); its log goes to `log_path`."""

    def __init__(self, cfg_path: Path, log_path: Path) -> None:
        self.cfg_path = cfg_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> NodeProcess:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tessera.node.main", "--config", str(self.cfg_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        self.proc = proc
        assert proc.stdout is not None
        line = _read_line(proc.stdout, READY_TIMEOUT)
        if not line:
            self.kill()
            raise RuntimeError(f"node exited before it was ready; see {self.log_path}")
        ready = json.loads(line)
        assert ready["ready"] is True
        self.port = int(ready["port"])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """SIGTERM, a graceful stop; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def rss_kib(self) -> int | None:
        """VmRSS of the node process, from /proc (None once it has gone)."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _read_line(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or b"" if the process closed it or `timeout` passed."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return b""
            chunk = os.read(fd, 1)
            if not chunk:
                return b""
            buf += chunk
    finally:
        sel.close()
    return buf


# -- an in-process node around a service we build ---------------------------------------------


class FaultyLedger(Ledger):
    """A real Ledger whose writes can be made to fail the way a full disk fails.

    `fault`:
    - None: works normally;
    - "commit": `commit()` raises before touching the database;
    - "sql-commit": the inserts run, then SQLite's COMMIT raises (the ledger must
      roll the whole transaction back: spend, request and audit entry);
    - "head": the transaction commits, then writing the signed audit head fails with
      ENOSPC (what a full disk does while the WAL still has room).
    """

    def __init__(self, path: Path, key: SigningKey, clock: Clock) -> None:
        super().__init__(path, key, clock)
        self.fault: str | None = None
        self.failures = 0
        self._conn = _FailingConnection(self._conn, self)  # type: ignore[assignment]
        write_head = self.audit_log.write_head

        def failing_write_head() -> None:
            if self.fault == "head":
                self.failures += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            write_head()

        self.audit_log.write_head = failing_write_head  # type: ignore[method-assign]

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if self.fault == "commit":
            self.failures += 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().commit(*args, **kwargs)


class _FailingConnection:
    """Delegates to a sqlite3 connection; COMMIT fails while the ledger says so."""

    def __init__(self, conn: sqlite3.Connection, owner: FaultyLedger) -> None:
        self._conn = conn
        self._owner = owner

    def commit(self) -> None:
        if self._owner.fault == "sql-commit":
            self._owner.failures += 1
            raise sqlite3.OperationalError("database or disk is full")
        self._conn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def serve_service(service: NodeService) -> node_main.RunningNode:
    """Serve a NodeService we built ourselves, exactly as node.main.start does."""
    cfg = service.cfg
    tls = TlsFiles(cfg.tls.cert, cfg.tls.key, cfg.tls.ca).load()
    servicer = NodeServicer(service)
    running = serving.serve(
        address=cfg.listen,
        tls=tls,
        register=lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s),
        service_names=[node_main.SERVICE_NAME],
        max_message_bytes=cfg.max_message_bytes,
        max_workers=cfg.max_workers,
    )
    return node_main.RunningNode(service, running)


def service_with_ledger(cfg: NodeConfig, ledger: Ledger, clock: Clock) -> NodeService:
    key = SigningKey.load(cfg.signing_key)
    return NodeService(
        cfg, DatasetCatalog(cfg.data_dir), ledger, key, clock, secret.load_or_create(cfg.state_dir)
    )


def status_of(call: Any) -> tuple[grpc.StatusCode, Any]:
    """Run an RPC; return (status, reply or None)."""
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as e:
        return e.code(), None


# -- the ledger file, read-only ------------------------------------------------------------------


@dataclass
class LedgerFigures:
    spent: dict[tuple[str, str], float] = field(default_factory=dict)  # (dataset, kind)
    release_costs: dict[str, list[float]] = field(default_factory=dict)  # kind -> costs
    charged: dict[str, float] = field(default_factory=dict)  # request id -> charged
    releases: int = 0

    def spent_kind(self, kind: str) -> float:
        return math.fsum(v for (_, k), v in self.spent.items() if k == kind)


def read_ledger(db: Path) -> LedgerFigures:
    uri = "file:" + urllib.parse.quote(str(db.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    costs: dict[tuple[str, str], list[float]] = {}
    out = LedgerFigures()
    try:
        for ds, kind, cost in conn.execute("SELECT dataset, kind, cost FROM releases"):
            costs.setdefault((str(ds), str(kind)), []).append(float(cost))
            out.release_costs.setdefault(str(kind), []).append(float(cost))
            out.releases += 1
        for rid, charged in conn.execute("SELECT request_id, charged FROM requests"):
            out.charged[str(rid)] = float(charged)
    finally:
        conn.close()
    out.spent = {k: math.fsum(v) for k, v in costs.items()}
    out.release_costs = {k: sorted(v) for k, v in out.release_costs.items()}
    return out


# -- a small real filesystem -----------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(workdir: Path, size_mib: int = 8) -> Iterator[Path]:
    """A loop-mounted ext4 filesystem of `size_mib` MiB at workdir/mnt, unmounted
    afterwards. Raises `Unavailable` where loop mounts are not permitted."""
    mkfs = shutil.which("mkfs.ext4")
    if os.geteuid() != 0 or shutil.which("mount") is None or mkfs is None:
        raise Unavailable("loop mounts need root, mount and mkfs.ext4")
    image = workdir / "small.img"
    mnt = workdir / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    made = subprocess.run(
        [mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise Unavailable(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        raise Unavailable(f"loop mount not permitted: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        done = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        image.unlink(missing_ok=True)


class Unavailable(RuntimeError):
    """The environment cannot provide what a test needs (the test skips)."""


def fill_filesystem(path: Path) -> Path:
    """Fill the filesystem holding `path` with a filler file until writes fail."""
    filler = path / "filler.bin"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError:
                    break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return filler


# -- Clopper-Pearson and an empirical lower bound on epsilon ----------------------------


@lru_cache(maxsize=64)
def _log_factorials(n: int) -> npt.NDArray[np.float64]:
    return np.array([math.lgamma(i + 1) for i in range(n + 1)])


def _logsumexp(a: npt.NDArray[np.float64]) -> float:
    if a.size == 0:
        return -math.inf
    m = float(a.max())
    return m + math.log(float(np.exp(a - m).sum()))


def binom_log_cdf_ge(x: int, n: int, p: float) -> float:
    """log P[Bin(n, p) >= x]. Equals log I_p(x, n - x + 1), the regularized
    incomplete beta function that the Clopper-Pearson bounds invert."""
    if x <= 0:
        return 0.0
    if x > n:
        return -math.inf
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return 0.0
    lf = _log_factorials(n)
    k = np.arange(x, n + 1)
    logpmf = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    return min(0.0, _logsumexp(logpmf))


def binom_log_cdf_le(x: int, n: int, p: float) -> float:
    """log P[Bin(n, p) <= x]."""
    if x >= n:
        return 0.0
    if x < 0:
        return -math.inf
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return -math.inf
    lf = _log_factorials(n)
    k = np.arange(0, x + 1)
    logpmf = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    return min(0.0, _logsumexp(logpmf))


def _bisect(f: Any, target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@lru_cache(maxsize=100_000)
def clopper_pearson(x: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion, x of n:
    lower solves P[Bin(n, p) >= x] = alpha/2, upper solves P[Bin(n, p) <= x] = alpha/2
    (found by bisection; P[Bin >= x] increases with p, P[Bin <= x] decreases)."""
    if not 0 <= x <= n or n <= 0:
        raise ValueError("need 0 <= x <= n and n > 0")
    target = math.log(alpha / 2)
    lower = 0.0 if x == 0 else _bisect(lambda p: binom_log_cdf_ge(x, n, p), target, True)
    upper = 1.0 if x == n else _bisect(lambda p: binom_log_cdf_le(x, n, p), target, False)
    return lower, upper


def epsilon_from(
    x_p: int, n_p: int, x_q: int, n_q: int, *, alpha: float, delta: float = 0.0
) -> float:
    """Lower bound on epsilon from one output event S seen x_p of n_p times under one
    dataset and x_q of n_q times under its neighbour. (eps, delta)-DP says
    P[S] <= e^eps Q[S] + delta, so eps >= ln((P_lo - delta) / Q_hi)."""
    p_lo, _ = clopper_pearson(x_p, n_p, alpha)
    _, q_hi = clopper_pearson(x_q, n_q, alpha)
    if p_lo - delta <= 0 or q_hi <= 0:
        return 0.0
    return max(0.0, math.log((p_lo - delta) / q_hi))


@dataclass(frozen=True)
class Event:
    """{T >= t} or {T <= t}, with `first` the dataset whose probability is on top."""

    tail: str  # "ge" or "le"
    threshold: float
    first: str  # "D" or "D'"

    def hits(self, t: npt.NDArray[Any]) -> int:
        return int(
            (t >= self.threshold).sum() if self.tail == "ge" else (t <= self.threshold).sum()
        )


@dataclass(frozen=True)
class AuditBound:
    event: Event
    counts: tuple[int, int, int, int]  # hits under first, n, hits under the other, n
    eps_lb: float  # 95% Clopper-Pearson for this event
    eps_lb_family: float  # with alpha shared over all cases of the run (Bonferroni)
    selected_on: int  # draws used to choose the event (0: fixed in advance)


def audit_epsilon(
    t_d: npt.NDArray[Any],
    t_dprime: npt.NDArray[Any],
    *,
    delta: float = 0.0,
    alpha: float = 0.05,
    family_alpha: float = 0.05,
    event: Event | None = None,
    candidates: int = 41,
    select_alpha: float = 0.001,
) -> AuditBound:
    """An empirical lower bound on epsilon from a scalar test statistic of the
    outputs on D and D'.

    Unless `event` is fixed in advance, the first half of the draws chooses it (the
    threshold event and direction with the best Clopper-Pearson bound among
    `candidates` quantile thresholds, both tails, both directions) and the second
    half measures it, so the reported bound is a valid (1 - alpha) bound for one
    event and not the maximum of many. Choosing with a stricter `select_alpha`
    favours events seen often, whose second-half estimates are steadier."""
    t_d, t_dprime = np.asarray(t_d), np.asarray(t_dprime)
    selected_on = 0
    if event is None:
        h_d, h_q = len(t_d) // 2, len(t_dprime) // 2
        sel_d, sel_q = t_d[:h_d], t_dprime[:h_q]
        t_d, t_dprime = t_d[h_d:], t_dprime[h_q:]
        selected_on = h_d + h_q
        pooled = np.concatenate([sel_d, sel_q])
        qs = np.unique(np.quantile(pooled, np.linspace(0.01, 0.99, candidates), method="nearest"))
        best: tuple[float, Event] | None = None
        for thr in qs:
            for tail in ("ge", "le"):
                for first in ("D", "D'"):
                    ev = Event(tail, float(thr), first)
                    a, b = (sel_d, sel_q) if first == "D" else (sel_q, sel_d)
                    lb = epsilon_from(
                        ev.hits(a), len(a), ev.hits(b), len(b), alpha=select_alpha, delta=delta
                    )
                    if best is None or lb > best[0]:
                        best = (lb, ev)
        assert best is not None
        event = best[1]
    a, b = (t_d, t_dprime) if event.first == "D" else (t_dprime, t_d)
    xa, xb = event.hits(a), event.hits(b)
    return AuditBound(
        event=event,
        counts=(xa, len(a), xb, len(b)),
        eps_lb=epsilon_from(xa, len(a), xb, len(b), alpha=alpha, delta=delta),
        eps_lb_family=epsilon_from(xa, len(a), xb, len(b), alpha=family_alpha, delta=delta),
        selected_on=selected_on,
    )


def coverage(
    lows: Sequence[float], highs: Sequence[float], exact: Sequence[float]
) -> tuple[int, int]:
    """(covered, total) of intervals [low, high] against exact values."""
    hit = sum(1 for lo, hi, x in zip(lows, highs, exact, strict=True) if lo <= x <= hi)
    return hit, len(exact)
