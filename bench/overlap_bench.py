"""Overlap scenario: private set intersection cardinality (tessera.overlap).

Two agencies with 10^5 and 10^6 identifiers, measured side by side with OpenMined
PSI (`openmined-psi`, in a virtualenv of its own, run as a subprocess) computing
the same cardinality; and four agencies with 10^5 identifiers each. Tessera runs
each party in a process of its own, as each would run at its own node; this
process relays the messages and is the counter. DP noise is on (ε = 1, dummies
drawn through the node's OpenDP module), as in production.

`python -m bench.overlap_bench [--quick]` runs it alone and prints JSON;
`python -m bench --only overlap` runs it inside the harness.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from bench import venv
from tessera.overlap import group
from tessera.overlap.protocol import (
    COUNTER,
    Counter,
    DummyDraw,
    Kind,
    OverlapQuery,
    Party,
    recipient,
)

OPENMINED_SPEC = "openmined-psi==2.0.4"  # 2.0.5 and 2.0.6 pin a protobuf that clashes
BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-openmined-psi"
RUNNER = BENCH_DIR / "openmined_psi_runner.py"
FPR = 1e-9
_LIBRARY = {group.OPENSSL: "OpenSSL (cryptography)", group.SODIUM: "libsodium (PyNaCl)"}
EPSILON = 1.0


def _threads_per_party(parties: int) -> int:
    """The parties share this machine's cores, as separate nodes would not."""
    return max(1, (os.cpu_count() or 1) // parties)


def ensure_venv(log: Callable[[str], None]) -> tuple[Path, float]:
    """OpenMined PSI's own virtualenv (bench/venv.py)."""
    return venv.ensure(VENV, OPENMINED_SPEC, log)


def bench_key(raw: str | None) -> str | None:
    """The benchmark's keys are distinct ten-digit strings, not NHS numbers: the NHS's
    999 test range holds fewer than 10^6 valid numbers, and no real number may be used."""
    return raw if raw is not None and len(raw) == 10 and raw.isdigit() else None


def make_sets(
    work: Path, sizes: Sequence[int], common: int, seed: int
) -> tuple[list[Path], list[list[int]]]:
    """Sets of distinct keys sharing `common` keys among all of them and, in a chain,
    another `common` between each neighbouring pair. Returns the files (one key a
    line) and each key's category (0..4, for the first set only)."""
    rng = np.random.default_rng(seed)
    need = sum(sizes) + common * len(sizes)
    pool = np.unique(rng.integers(0, 10**10, size=int(need * 1.01) + 100))
    rng.shuffle(pool)
    if pool.size < need:
        raise RuntimeError("not enough distinct keys drawn")
    keys = [f"{v:010d}" for v in pool[:need].tolist()]
    it = iter(keys)
    shared = [next(it) for _ in range(common)]
    chain = [[next(it) for _ in range(common)] for _ in sizes]
    paths, categories = [], []
    for i, n in enumerate(sizes):
        members = shared + (chain[i - 1] if i else []) + (chain[i] if i < len(sizes) - 1 else [])
        members = members[:n] + [next(it) for _ in range(n - min(n, len(members)))]
        path = work / f"overlap-set-{i}.txt"
        path.write_text("\n".join(members) + "\n", encoding="ascii")
        paths.append(path)
        categories.append(rng.integers(0, 5, size=n).tolist() if i == 0 else [0] * n)
    return paths, categories


class _Noise:
    """node.privacy's OpenDP draws behind tessera.overlap's NoiseSource."""

    def dummies(self, epsilon: float, cells: int) -> DummyDraw:
        from tessera.node import privacy

        d = privacy.overlap_dummies(epsilon, cells)
        return DummyDraw(
            [int(c) for c in d.counts], d.shift, d.scale, d.variance, d.epsilon, d.delta
        )

    def counts(self, epsilon: float, exact: Sequence[int]) -> list[int]:
        from tessera.node import privacy
        from tessera.templates.model import Privacy, Sensitivity

        (cal,) = privacy.calibrate(Privacy(epsilon=epsilon), {"n": Sensitivity(1.0, 1.0)})
        return [int(v) for v in privacy.add_noise(cal, np.asarray(exact, dtype=np.int64)).values]


def _party_main(
    conn: Connection,
    query: OverlapQuery,
    index: int,
    path: str,
    cats: list[int],
    blinding: tuple[str, int | None],
) -> None:
    """One party in a process of its own: commands and messages in, messages out.
    While it sends its own set it also serves what arrives, chunk by chunk."""
    from tessera.node import privacy  # OpenDP's import is not part of a query's time

    group.configure(*blinding)

    privacy.overlap_dummies(EPSILON, 1)
    keys = Path(path).read_text(encoding="ascii").split()
    conn.send(("ok", None))
    party: Party | None = None
    own: Iterator[bytes] | None = None

    def serve(cmd: str, payload: Any) -> bool:
        nonlocal party, own
        if cmd == "init":
            party = Party(query, index, zip(keys, cats, strict=True), _Noise(), key=bench_key)
            conn.send(("ok", None))
            return True
        if cmd == "cpu":
            conn.send(("ok", time.process_time()))
            return True
        if cmd == "stop":
            conn.send(("ok", None))
            return False
        assert party is not None
        if cmd == "hello":
            conn.send(("ok", party.hello()))
        elif cmd == "plan":
            conn.send(("ok", party.dummy_plan()))
        elif cmd == "start":
            own = party.stream()
        elif cmd == "msg":
            replies = party.handle(payload)
            if replies:
                conn.send(("out", replies))
        return True

    try:
        while True:
            if own is not None:
                data = next(own, None)
                if data is None:
                    own = None
                else:
                    conn.send(("out", [data]))
                while conn.poll():
                    if not serve(*conn.recv()):
                        return
            elif not serve(*conn.recv()):
                return
    except Exception as e:  # report, so the driver fails loudly rather than hangs
        conn.send(("error", f"{type(e).__name__}: {e}"))


class _Link:
    """The driver's end of one party: a thread sends, so the driver only ever reads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while (item := self.queue.get()) is not None:
            self.conn.send(item)

    def send(self, cmd: str, payload: Any = None) -> None:
        self.queue.put((cmd, payload))

    def recv(self) -> Any:
        kind, payload = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"a party failed: {payload}")
        return payload

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)


def run_tessera(
    query: OverlapQuery,
    paths: Sequence[Path],
    cats: Sequence[list[int]],
    blinding: tuple[str, int | None] = (group.AUTO, None),
) -> dict[str, Any]:
    """One query, one process per party; this process relays and counts. Each party
    blinds on its share of this machine's cores unless `blinding` says otherwise."""
    if blinding[1] is None:
        blinding = (blinding[0], _threads_per_party(query.n))
    ctx = mp.get_context("spawn")
    links, procs = [], []
    for i, path in enumerate(paths):
        here, there = ctx.Pipe()
        args = (there, query, i, str(path), cats[i], blinding)
        p = ctx.Process(target=_party_main, args=args)
        p.start()
        links.append(_Link(here))
        procs.append(p)
    try:
        for link in links:
            link.recv()

        def everyone(cmd: str) -> list[Any]:
            for link in links:  # send to all first, so the parties work in parallel
                link.send(cmd)
            return [link.recv() for link in links]

        cpu0 = everyone("cpu")
        start = time.perf_counter()
        everyone("init")
        counter = Counter(query)
        hellos = [*everyone("hello"), counter.hello()]
        senders = [*range(query.n), COUNTER]
        for sender, h in zip(senders, hellos, strict=True):
            for to in range(query.n):
                if to != sender:
                    links[to].send("msg", h)
        moved = 0

        def route(data: bytes) -> None:
            nonlocal moved
            moved += len(data)
            to = recipient(query, data)
            if to == COUNTER:
                counter.handle(data)
            else:
                links[to].send("msg", data)

        links[query.noiser].send("plan")
        for data in links[query.noiser].recv():
            route(data)
        for link in links:
            link.send("start")
        by_conn = {link.conn: link for link in links}
        while not counter.complete():
            for conn in wait(list(by_conn)):
                for data in by_conn[conn].recv():  # type: ignore[index]
                    route(data)
        t_count = time.perf_counter()
        result = counter.result()
        count_s = time.perf_counter() - t_count
        seconds = time.perf_counter() - start
        cpu = [b - a for a, b in zip(cpu0, everyone("cpu"), strict=True)]
        everyone("stop")
    finally:
        for link in links:
            link.close()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return {
        "seconds": round(seconds, 2),
        "counter_match_s": round(count_s, 2),
        "party_cpu_s": [round(c, 2) for c in cpu],
        "bytes_relayed": moved,
        "released": [c.value for c in result.cells],
        "epsilon": result.epsilon,
        "delta": result.delta,
    }


def run_openmined(python: Path, client: Path, server: Path, work: Path) -> dict[str, Any]:
    spec = work / "openmined-spec.json"
    spec.write_text(json.dumps({"client": str(client), "server": str(server), "fpr": FPR}))
    done = subprocess.run(
        [str(python), str(RUNNER), str(spec)], capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the OpenMined PSI runner failed ({done.returncode}): {tail}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def run(
    work: Path,
    log: Callable[[str], None],
    *,
    quick: bool = False,
    openmined: bool = True,
    four_agencies: bool = True,
    blinding: tuple[str, int | None] = (group.AUTO, None),
) -> dict[str, Any]:
    """`blinding` is each party's (backend, threads); None threads: its share of the cores."""
    small, large, four = (10**3, 10**4, 10**3) if quick else (10**5, 10**6, 10**5)
    common = small // 4
    threads = _threads_per_party(2) if blinding[1] is None else blinding[1]
    backend = blinding[0]
    if backend == group.AUTO:  # what group.blind_packed picks for a whole chunk
        backend = group.OPENSSL if threads == 1 else group.SODIUM
    out: dict[str, Any] = {
        "epsilon": EPSILON,
        "blinding": {"backend": backend, "threads_per_party": threads},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "notes": [],
    }

    log(f"  two agencies: {small:,} x {large:,}")
    paths, _ = make_sets(work, (small, large), common, seed=13)
    truth = common + common  # the shared block and the chain block between the two
    q2 = OverlapQuery(os.urandom(16), ("a", "b"), ("all",), Kind.ALL, 0, epsilon=EPSILON)
    two = run_tessera(q2, paths, [[0] * small, [0] * large], blinding)
    two["sizes"] = [small, large]
    two["true_cardinality"] = truth
    out["two"] = two
    log(f"  tessera: {two['seconds']} s, released {two['released']} (truth {truth})")
    out["openmined_psi"] = None
    if openmined:
        try:
            python, built = ensure_venv(log)
            if built:
                out["notes"].append(f"built {VENV.name} in {built:.0f} s")
            om = run_openmined(python, paths[0], paths[1], work)
            out["openmined_psi"] = om
            log(f"  openmined-psi: {om['seconds']} s, cardinality {om['cardinality']}")
            out["overlap_speedup_vs_openmined_psi"] = round(om["seconds"] / two["seconds"], 2)
            # With each party on a machine of its own, the query takes at least the
            # busiest party's CPU time: the same ratio without this machine's sharing.
            out["overlap_cpu_speedup_vs_openmined_psi"] = round(
                om["cpu_s"] / max(two["party_cpu_s"]), 2
            )
        except Exception as e:  # no venv (no network) or a failed run: say so, keep the rest
            out["notes"].append(f"OpenMined PSI skipped: {type(e).__name__}: {e}")
    if not four_agencies:
        return out
    log(f"  four agencies: 4 x {four:,}, at least 3 of 4, by 5 categories")
    paths4, cats4 = make_sets(work, (four,) * 4, four // 4, seed=14)
    q4 = OverlapQuery(
        os.urandom(16),
        ("a", "b", "c", "d"),
        ("c0", "c1", "c2", "c3", "c4"),
        Kind.AT_LEAST_K,
        0,
        k=3,
        epsilon=EPSILON,
    )
    four_r = run_tessera(q4, paths4, cats4, blinding)
    four_r["sizes"] = [four] * 4
    out["four"] = four_r
    log(f"  tessera, four agencies: {four_r['seconds']} s")
    out["notes"].append(
        "Tessera: one process per party (as at separate nodes) on this machine's "
        f"{os.cpu_count()} cores, X25519 blinding via {_LIBRARY[backend]} on {threads} "
        "thread(s) per party, DP dummies on; OpenMined "
        "PSI: client and server in one process, P-256, GCS setup at fpr 1e-9, cardinality "
        "only; both include serialising every message"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-openmined", action="store_true")
    parser.add_argument("--no-four", action="store_true", help="skip the four-agency run")
    parser.add_argument("--backend", choices=group.BACKENDS, default=group.AUTO)
    parser.add_argument("--threads", type=int, help="per party (default: its share of the cores)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tessera-overlap-") as tmp:
        result = run(
            Path(tmp),
            lambda s: print(s, file=sys.stderr, flush=True),
            quick=args.quick,
            openmined=not args.no_openmined,
            four_agencies=not args.no_four,
            blinding=(args.backend, args.threads),
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
