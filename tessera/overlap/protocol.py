"""Multi-party private set intersection cardinality with DP dummies.

Two to four parties (datasets at different nodes) and a counter (the
coordinator). One query, in four steps, every message bound to the query id
and its step:

1. HELLO. Every party and the counter announce a fresh X25519 key for sealed
   messages. Every party also draws a fresh X25519 blinding key, which
   never leaves it and is forgotten with the query.
2. DUMMY_PLAN. The noise party draws, through the node's OpenDP noise source,
   a count of dummy elements for every cell of the counter's view (membership
   pattern x category). It makes a random seed per dummy and seals to each
   party the seeds of every cell that party belongs to, as one shuffled list,
   and seals to the counter the shift to subtract.
3. BLIND. Each party normalises and validates its NHS numbers (invalid or
   missing ones are counted as "not linkable"), hashes them with the query id
   to the group, adds its dummies, raises everything to its key, pads the set
   with random elements up to a size bucket, shuffles, and sends it on. Each
   set goes round the ring: every other party raises it to its own key and
   shuffles it again. After the last key the set goes to the counter. The
   category party sends one sub-set per category. Each party seals to the
   counter how many padding elements it added and its noisy "not linkable"
   counts.
4. COUNT. The counter matches the fully blinded elements across sets. An
   element's membership pattern (which parties hold it) and category place it
   in one cell of the view; the counter removes the padding, subtracts the
   dummy shift and releases the asked-for statistic (sums of view cells).

What the counter sees is the view with dummies added: each cell is exact
count + shift + discrete Laplace noise, so what it learns, and everything it
releases, is differentially private. docs/overlap.md has the argument.

`Party` and `Counter` are pure message handlers (serialized `OverlapMessage`
bytes in, bytes out), so the same code runs in one process (`run_local`, the
tests), in one process per party (the benchmark) or behind gRPC.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tessera.overlap import group, matching, seal
from tessera.overlap.nhs import normalise
from tessera.wire.v1 import overlap_pb2 as pb

COUNTER = 0xFFFF
MIN_BUCKET = 64
MAX_PARTIES = 4
SEED_BYTES = 32
CHUNK = 1 << 15  # elements per message: 1 MiB of points


def _shuffle(items: list[Any]) -> None:
    """A uniformly random permutation, in place, from the operating system's CSPRNG:
    sorting by 64-bit random keys (ties have probability about n^2 / 2^65). Several
    times faster than random.SystemRandom().shuffle, which reads the CSPRNG per swap."""
    if len(items) < 2:
        return
    keys = np.frombuffer(os.urandom(8 * len(items)), dtype=np.uint64)
    order = np.argsort(keys, kind="stable").tolist()
    items[:] = [items[i] for i in order]


class OverlapError(ValueError):
    """A message that does not belong to this query, step or party; or a step out of order."""


class Kind(enum.Enum):
    ALL = "all"  # present in every dataset
    A_NOT_B = "a_not_b"  # present in dataset a, absent from dataset b
    AT_LEAST_K = "at_least_k"  # present in at least k of the n datasets


@dataclass(frozen=True)
class OverlapQuery:
    """One overlap question. `epsilon=None` switches noise off: a test-only path."""

    query_id: bytes
    parties: tuple[str, ...]
    categories: tuple[str, ...]
    kind: Kind
    category_party: int = 0
    k: int = 2
    a: int = 0
    b: int = 1
    epsilon: float | None = None
    min_count: int = 0
    noise_party: int | None = None
    chunk_size: int = CHUNK

    def __post_init__(self) -> None:
        n = len(self.parties)
        if not 2 <= n <= MAX_PARTIES:
            raise ValueError(f"an overlap names 2 to {MAX_PARTIES} datasets, not {n}")
        if len(set(self.parties)) != n:
            raise ValueError("an overlap names each dataset once")
        if not 16 <= len(self.query_id) <= 64:
            raise ValueError("the query id must be 16 to 64 bytes")
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError("the categories must be distinct and at least one")
        if not 0 <= self.category_party < n:
            raise ValueError("the category party is not one of the parties")
        if self.noise_party is not None and not 0 <= self.noise_party < n:
            raise ValueError("the noise party is not one of the parties")
        if self.kind is Kind.AT_LEAST_K and not 2 <= self.k <= n:
            raise ValueError(f"k must be between 2 and {n}")
        if self.kind is Kind.A_NOT_B:
            if self.a == self.b or not (0 <= self.a < n and 0 <= self.b < n):
                raise ValueError("a and b must be two different parties")
            if self.a != self.category_party:
                raise ValueError("'a not b' is counted by the categories of dataset a")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError("epsilon must be positive")
        if self.chunk_size < 1:
            raise ValueError("the chunk size must be positive")
        if self.min_count < 0:
            raise ValueError("the minimum reportable count cannot be negative")

    @property
    def n(self) -> int:
        return len(self.parties)

    @property
    def noiser(self) -> int:
        return self.category_party if self.noise_party is None else self.noise_party

    def subsets(self, party: int) -> int:
        return len(self.categories) if party == self.category_party else 1

    def view_cells(self) -> list[tuple[int, int]]:
        """Every cell of the counter's view: (membership mask, category or -1).

        A pattern that includes the category party is split by its categories; one
        that does not has a single cell (-1)."""
        cells: list[tuple[int, int]] = []
        for mask in range(1, 1 << self.n):
            if mask >> self.category_party & 1:
                cells += [(mask, c) for c in range(len(self.categories))]
            else:
                cells.append((mask, -1))
        return cells

    def labels(self) -> tuple[str, ...]:
        """The released cells."""
        if self.kind is Kind.AT_LEAST_K:
            return (*self.categories, f"not in {self.parties[self.category_party]}")
        return self.categories

    def release_cell(self, mask: int, category: int) -> int | None:
        """Which released cell a view cell adds to (None: it is not asked for)."""
        if self.kind is Kind.ALL:
            return category if mask == (1 << self.n) - 1 else None
        if self.kind is Kind.A_NOT_B:
            return category if mask >> self.a & 1 and not mask >> self.b & 1 else None
        if mask.bit_count() < self.k:
            return None
        return category if category >= 0 else len(self.categories)


def bucket(size: int) -> int:
    """The padded size for `size` elements: at least 64, else the next m * 2^e with
    8 <= m <= 16 (at most 12.5% padding), so sizes reveal only about three bits."""
    if size <= MIN_BUCKET:
        return MIN_BUCKET
    e = max(0, size.bit_length() - 4)
    step = 1 << e
    return -(-size // step) * step


@dataclass(frozen=True)
class DummyDraw:
    """A noise source's dummy counts for the view's cells (each >= 0)."""

    counts: Sequence[int]
    shift: int  # subtracted from every view cell by the counter
    scale: float
    variance: float  # of one cell's noise
    epsilon: float  # the loss of the counter's view, from OpenDP's privacy map
    delta: float  # the chance that some cell's draw fell below -shift and was clamped


class NoiseSource(Protocol):
    """A node's OpenDP noise (tessera.node.privacy); tessera.overlap draws none itself."""

    def dummies(self, epsilon: float, cells: int) -> DummyDraw:
        """Dummy counts for a view in which one child moves at most between two cells."""
        ...

    def counts(self, epsilon: float, exact: Sequence[int]) -> list[int]:
        """`exact` with noise for L1 sensitivity 1 (one child, one record per agency)."""
        ...


# One row per privacy unit: the NHS number as recorded, and the unit's category index
# (used only at the party that holds the query's categories).
Records = Iterable[tuple[str | None, int]]


def _msg(data: bytes) -> pb.OverlapMessage:
    m = pb.OverlapMessage()
    try:
        m.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise OverlapError("not an overlap message") from e
    return m


def _wrap(body: pb.OverlapHello | pb.OverlapSealed | pb.OverlapBlindedSet) -> bytes:
    if isinstance(body, pb.OverlapHello):
        return pb.OverlapMessage(hello=body).SerializeToString()
    if isinstance(body, pb.OverlapSealed):
        return pb.OverlapMessage(sealed=body).SerializeToString()
    return pb.OverlapMessage(blinded=body).SerializeToString()


def recipient(query: OverlapQuery, data: bytes) -> int:
    """Where a party's outgoing message goes next (COUNTER for the counter)."""
    m = _msg(data)
    which = m.WhichOneof("body")
    if which == "sealed":
        return m.sealed.recipient
    if which == "blinded":
        b = m.blinded
        return COUNTER if b.hops == query.n else (b.owner + b.hops) % query.n
    raise OverlapError("hello messages are broadcast, not routed")


class Party:
    """One dataset's side of one overlap query."""

    def __init__(
        self,
        query: OverlapQuery,
        index: int,
        records: Records,
        noise: NoiseSource | None = None,
        key: Callable[[str | None], str | None] = normalise,
    ) -> None:
        """`key` normalises and validates one recorded key (None: not linkable); the NHS
        number check unless a benchmark passes its own synthetic keys."""
        if not 0 <= index < query.n:
            raise ValueError("no such party in this query")
        if (query.epsilon is None) != (noise is None):
            raise ValueError("a noisy query needs a noise source; an exact one takes none")
        self.query, self.index, self._noise = query, index, noise
        self._key = group.random_scalar()
        self._seal = seal.new_key()
        subsets = query.subsets(index)
        self._ids: list[list[str]] = [[] for _ in range(subsets)]
        self._not_linkable = [0] * subsets
        seen: set[str] = set()
        for raw, category in records:
            subset = category if index == query.category_party else 0
            if not 0 <= subset < subsets:
                raise ValueError(f"sub-set {subset} out of range for party {index}")
            nhs = key(raw)
            if nhs is None:
                self._not_linkable[subset] += 1
            elif nhs not in seen:  # one child is one element per agency
                seen.add(nhs)
                self._ids[subset].append(nhs)
        self._peers: dict[int, bytes] = {}
        self._seeds: list[list[bytes]] | None = None
        self._pads: list[int] = [0] * subsets
        self._started = False
        self._gather: dict[tuple[int, int], dict[int, bytes]] = {}
        self._gather_total: dict[tuple[int, int], int] = {}

    # -- step 1 --------------------------------------------------------------------

    def hello(self) -> bytes:
        return _wrap(
            pb.OverlapHello(
                query_id=self.query.query_id,
                step=pb.OVERLAP_STEP_HELLO,
                party=self.index,
                seal_public_key=seal.public_bytes(self._seal),
            )
        )

    def _check(self, query_id: bytes, step: int, expected: int) -> None:
        if query_id != self.query.query_id:
            raise OverlapError("a message for another query")
        if step != expected:
            raise OverlapError(f"a message for step {step} where step {expected} was due")

    def _on_hello(self, h: pb.OverlapHello) -> None:
        self._check(h.query_id, h.step, pb.OVERLAP_STEP_HELLO)
        if not (h.party == COUNTER or 0 <= h.party < self.query.n) or h.party == self.index:
            raise OverlapError("a hello from no party of this query")
        if h.party in self._peers:
            raise OverlapError("a second hello from the same party")
        if len(h.seal_public_key) != 32:
            raise OverlapError("a sealing key must be 32 bytes")
        self._peers[h.party] = h.seal_public_key

    # -- step 2 --------------------------------------------------------------------

    def dummy_plan(self) -> list[bytes]:
        """The noise party's sealed plans: one per other party and one for the counter."""
        q = self.query
        if self.index != q.noiser:
            raise OverlapError("only the noise party draws the dummies")
        if len(self._peers) != q.n:  # the other parties and the counter
            raise OverlapError("the dummy plan needs every party's hello first")
        cells = q.view_cells()
        plans: list[list[list[bytes]]] = [[[] for _ in range(q.subsets(j))] for j in range(q.n)]
        info = pb.OverlapNoiseInfo(query_id=q.query_id)
        if q.epsilon is not None:
            assert self._noise is not None
            draw = self._noise.dummies(q.epsilon, len(cells))
            if len(draw.counts) != len(cells) or min(draw.counts, default=0) < 0:
                raise ValueError("the noise source returned unusable dummy counts")
            for (mask, category), count in zip(cells, draw.counts, strict=True):
                for _ in range(count):
                    s = group.random_seed()
                    for j in range(q.n):
                        if mask >> j & 1:
                            plans[j][category if j == q.category_party else 0].append(s)
            info = pb.OverlapNoiseInfo(
                query_id=q.query_id,
                shift=draw.shift,
                scale=draw.scale,
                epsilon=draw.epsilon,
                delta=draw.delta,
                variance=draw.variance,
            )
        out: list[bytes] = []
        for j in range(q.n):
            for lst in plans[j]:
                _shuffle(lst)
            if j == self.index:
                self._seeds = plans[j]
                continue
            body = pb.OverlapDummyPlan(
                query_id=q.query_id, party=j, seeds=[b"".join(lst) for lst in plans[j]]
            )
            out.append(self._seal_to(j, pb.OVERLAP_STEP_DUMMY_PLAN, body.SerializeToString()))
        out.append(self._seal_to(COUNTER, pb.OVERLAP_STEP_DUMMY_PLAN, info.SerializeToString()))
        return out

    def _seal_to(self, to: int, step: int, body: bytes) -> bytes:
        return _wrap(seal.seal(self.query.query_id, step, self.index, to, self._peers[to], body))

    def _on_plan(self, s: pb.OverlapSealed) -> None:
        q = self.query
        if s.sender != q.noiser:
            raise OverlapError("a dummy plan from a party that is not the noise party")
        if self._seeds is not None:
            raise OverlapError("a second dummy plan")
        body = seal.open_sealed(s, self._seal, q.query_id, pb.OVERLAP_STEP_DUMMY_PLAN, self.index)
        plan = pb.OverlapDummyPlan()
        plan.ParseFromString(body)
        if plan.query_id != q.query_id or plan.party != self.index:
            raise OverlapError("a dummy plan for another query or party")
        if len(plan.seeds) != q.subsets(self.index):
            raise OverlapError("a dummy plan with the wrong number of sub-sets")
        seeds = []
        for blob in plan.seeds:
            if len(blob) % SEED_BYTES:
                raise OverlapError("a dummy plan with a truncated seed")
            seeds.append([blob[i : i + SEED_BYTES] for i in range(0, len(blob), SEED_BYTES)])
        self._seeds = seeds

    # -- step 3 --------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Everything `stream` yields, at once."""
        return list(self.stream())

    def stream(self) -> Iterator[bytes]:
        """This party's own sub-sets, blinded with its key, padded and shuffled, one
        chunk at a time (so the next party can start on a chunk while this one works
        on the next); then its sealed pad report for the counter."""
        q = self.query
        if self._started:
            raise OverlapError("this party has already sent its sets")
        if COUNTER not in self._peers:
            raise OverlapError("the counter's hello has not arrived")
        if self._seeds is None:
            if q.epsilon is not None:
                raise OverlapError("the dummy plan has not arrived")
            self._seeds = [[] for _ in range(q.subsets(self.index))]
        self._started = True
        for s, ids in enumerate(self._ids):
            # Shuffle the inputs (ids, dummies and padding) before blinding: the same as
            # shuffling the output, and it lets the set leave in chunks.
            real = len(ids) + len(self._seeds[s])
            self._pads[s] = bucket(real) - real
            items: list[tuple[int, str | bytes | None]] = [(0, x) for x in ids]
            items += [(1, seed) for seed in self._seeds[s]]
            items += [(2, None)] * self._pads[s]
            _shuffle(items)
            chunks = max(1, -(-len(items) // q.chunk_size))
            for c in range(chunks):
                part = items[c * q.chunk_size : (c + 1) * q.chunk_size]
                yield self._set_message(self.index, s, 1, c, chunks, self._own(part))
        self._ids = []  # the identifiers are not needed again
        if self._noise is not None and q.epsilon is not None:
            not_linkable = self._noise.counts(q.epsilon, self._not_linkable)
        else:
            not_linkable = list(self._not_linkable)
        report = pb.OverlapPadReport(
            query_id=q.query_id, party=self.index, pads=self._pads, not_linkable=not_linkable
        )
        yield self._seal_to(COUNTER, pb.OVERLAP_STEP_PAD_REPORT, report.SerializeToString())

    def _own(self, part: list[tuple[int, str | bytes | None]]) -> bytes:
        """One chunk of this party's own set: hashed (padding as random elements) and
        blinded with this party's key, packed."""
        kinds = [k for k, _ in part]
        points = group.hash_items(self.query.query_id, kinds, [x for _, x in part])
        return group.blind_packed(self._key, points)

    def _set_message(
        self, owner: int, subset: int, hops: int, chunk: int, chunks: int, points: bytes
    ) -> bytes:
        return _wrap(
            pb.OverlapBlindedSet(
                query_id=self.query.query_id,
                step=pb.OVERLAP_STEP_BLIND,
                owner=owner,
                subset=subset,
                hops=hops,
                chunk=chunk,
                chunks=chunks,
                points=points,
            )
        )

    def _on_blinded(self, b: pb.OverlapBlindedSet) -> list[bytes]:
        q = self.query
        self._check(b.query_id, b.step, pb.OVERLAP_STEP_BLIND)
        if not 0 <= b.owner < q.n or b.owner == self.index:
            raise OverlapError("a set whose owner is not another party of this query")
        if not 1 <= b.hops < q.n or (b.owner + b.hops) % q.n != self.index:
            raise OverlapError("a set that is not due at this party at this hop")
        if not 0 <= b.subset < q.subsets(b.owner):
            raise OverlapError("a sub-set index out of range")
        if not 0 <= b.chunk < b.chunks:
            raise OverlapError("a chunk index out of range")
        points = group.blind_packed(self._key, b.points)
        if b.hops + 1 < q.n:  # not the last key: shuffle the chunk and pass it on
            points = group.shuffle_packed(points)
            return [self._set_message(b.owner, b.subset, b.hops + 1, b.chunk, b.chunks, points)]
        # The last key: gather the whole set, shuffle it all, then send it to the counter,
        # so no chunk of the final set can be traced to a chunk of an earlier step.
        key = (b.owner, b.subset)
        got = self._gather.setdefault(key, {})
        total = self._gather_total.setdefault(key, b.chunks)
        if b.chunks != total or b.chunk in got:
            raise OverlapError("a chunk that does not fit the set it claims to belong to")
        got[b.chunk] = points
        if len(got) < total:
            return []
        whole = group.shuffle_packed(b"".join(got.pop(c) for c in range(total)))
        del self._gather[key]
        size = q.chunk_size * group.POINT_BYTES
        chunks = max(1, -(-len(whole) // size))
        return [
            self._set_message(b.owner, b.subset, q.n, c, chunks, whole[c * size : (c + 1) * size])
            for c in range(chunks)
        ]

    # -- dispatch ------------------------------------------------------------------

    def handle(self, data: bytes) -> list[bytes]:
        """Take one incoming message; return what this party sends in reply."""
        m = _msg(data)
        which = m.WhichOneof("body")
        if which == "hello":
            self._on_hello(m.hello)
            return []
        if which == "sealed":
            self._check(m.sealed.query_id, m.sealed.step, pb.OVERLAP_STEP_DUMMY_PLAN)
            self._on_plan(m.sealed)
            return []
        if which == "blinded":
            return self._on_blinded(m.blinded)
        raise OverlapError("an empty overlap message")


@dataclass(frozen=True)
class Cell:
    label: str
    value: int | None  # None: below the minimum reportable count, suppressed
    variance: float  # of the noise in `value` before clamping (0 when exact)


@dataclass(frozen=True)
class OverlapResult:
    query_id: bytes
    cells: tuple[Cell, ...]
    # Per party, per sub-set: records without a valid NHS number (noisy unless exact).
    not_linkable: dict[str, tuple[int, ...]]
    epsilon: float | None
    delta: float
    exact: bool


class Counter:
    """The coordinator's side: matches the fully blinded sets and releases the statistic."""

    def __init__(self, query: OverlapQuery) -> None:
        self.query = query
        self._seal = seal.new_key()
        self._finals: dict[tuple[int, int], bytes] = {}  # packed points
        self._chunks: dict[tuple[int, int], dict[int, bytes]] = {}
        self._totals: dict[tuple[int, int], int] = {}
        self._reports: dict[int, pb.OverlapPadReport] = {}
        self._info: pb.OverlapNoiseInfo | None = None

    def hello(self) -> bytes:
        return _wrap(
            pb.OverlapHello(
                query_id=self.query.query_id,
                step=pb.OVERLAP_STEP_HELLO,
                party=COUNTER,
                seal_public_key=seal.public_bytes(self._seal),
            )
        )

    def handle(self, data: bytes) -> None:
        q = self.query
        m = _msg(data)
        which = m.WhichOneof("body")
        if which == "hello":  # the parties' keys are not needed by the counter
            return
        if which == "blinded":
            b = m.blinded
            if b.query_id != q.query_id or b.step != pb.OVERLAP_STEP_BLIND:
                raise OverlapError("a set for another query or step")
            if b.hops != q.n or not 0 <= b.owner < q.n or not 0 <= b.subset < q.subsets(b.owner):
                raise OverlapError("a set that has not been through every party's key")
            key = (b.owner, b.subset)
            if key in self._finals:
                raise OverlapError("a chunk of a set that is already complete")
            got = self._chunks.setdefault(key, {})
            total = self._totals.setdefault(key, b.chunks)
            if b.chunks != total or not 0 <= b.chunk < total or b.chunk in got:
                raise OverlapError("a chunk that does not fit the set it claims to belong to")
            group.check_packed(b.points)
            got[b.chunk] = b.points
            if len(got) == total:
                self._finals[key] = b"".join(got[c] for c in range(total))
                del self._chunks[key]
            return
        if which != "sealed":
            raise OverlapError("an empty overlap message")
        s = m.sealed
        if s.step == pb.OVERLAP_STEP_DUMMY_PLAN:
            if s.sender != q.noiser or self._info is not None:
                raise OverlapError("noise figures from a party that is not the noise party")
            body = seal.open_sealed(s, self._seal, q.query_id, s.step, COUNTER)
            info = pb.OverlapNoiseInfo()
            info.ParseFromString(body)
            if info.query_id != q.query_id:
                raise OverlapError("noise figures for another query")
            self._info = info
            return
        if s.step == pb.OVERLAP_STEP_PAD_REPORT:
            if not 0 <= s.sender < q.n or s.sender in self._reports:
                raise OverlapError("a pad report from no party, or a second one")
            body = seal.open_sealed(s, self._seal, q.query_id, s.step, COUNTER)
            report = pb.OverlapPadReport()
            report.ParseFromString(body)
            want = q.subsets(s.sender)
            if report.query_id != q.query_id or report.party != s.sender:
                raise OverlapError("a pad report for another query or party")
            if len(report.pads) != want or len(report.not_linkable) != want:
                raise OverlapError("a pad report with the wrong number of sub-sets")
            self._reports[s.sender] = report
            return
        raise OverlapError(f"no sealed message is due at the counter in step {s.step}")

    def complete(self) -> bool:
        q = self.query
        sets = sum(q.subsets(i) for i in range(q.n))
        return (
            len(self._finals) == sets
            and len(self._reports) == q.n
            and (self._info is not None or q.epsilon is None)
        )

    def view(self) -> dict[tuple[int, int], int]:
        """The counter's view: per (mask, category), matched elements less the padding.

        With noise on, every cell holds its dummies too; this is all the counter learns."""
        q = self.query
        if not self.complete():
            raise OverlapError("the counter has not received every set and report")
        tally = matching.patterns(self._finals, q.category_party)
        for party, report in self._reports.items():
            for subset, pads in enumerate(report.pads):
                category = subset if party == q.category_party else -1
                tally[(1 << party, category)] -= pads
        return {cell: tally.get(cell, 0) for cell in q.view_cells()}

    def result(self) -> OverlapResult:
        q = self.query
        view = self.view()
        shift = self._info.shift if self._info is not None else 0
        variance = self._info.variance if self._info is not None else 0.0
        sums = [0] * len(q.labels())
        terms = [0] * len(q.labels())
        for (mask, category), value in view.items():
            cell = q.release_cell(mask, category)
            if cell is not None:
                sums[cell] += value - shift
                terms[cell] += 1
        cells = []
        for label, total, t in zip(q.labels(), sums, terms, strict=True):
            value = max(total, 0)  # post-processing
            shown = value if value >= q.min_count else None
            cells.append(Cell(label, shown, t * variance))
        exact = q.epsilon is None
        return OverlapResult(
            query_id=q.query_id,
            cells=tuple(cells),
            not_linkable={q.parties[i]: tuple(self._reports[i].not_linkable) for i in range(q.n)},
            epsilon=self._info.epsilon if self._info is not None and not exact else None,
            delta=self._info.delta if self._info is not None else 0.0,
            exact=exact,
        )


Deliver = Callable[[int, bytes], None]


def run_local(
    parties: Sequence[Party], counter: Counter, record: Deliver | None = None
) -> OverlapResult:
    """Run one query in this process. `record(recipient, data)` sees every message
    as it is delivered (COUNTER for the counter); the relay sees them all."""
    q = counter.query
    if [p.index for p in parties] != list(range(q.n)):
        raise ValueError("pass every party, in order")
    by_index = {p.index: p for p in parties}

    def deliver(to: int, data: bytes) -> None:
        if record is not None:
            record(to, data)
        if to == COUNTER:
            counter.handle(data)
            return
        for reply in by_index[to].handle(data):
            deliver(recipient(q, reply), reply)

    hellos = [(p.index, p.hello()) for p in parties] + [(COUNTER, counter.hello())]
    for sender, h in hellos:
        for to in [*range(q.n), COUNTER]:
            if to != sender:
                deliver(to, h)
    if q.epsilon is not None:
        for data in by_index[q.noiser].dummy_plan():
            deliver(recipient(q, data), data)
    for p in parties:
        for data in p.start():
            deliver(recipient(q, data), data)
    return counter.result()
