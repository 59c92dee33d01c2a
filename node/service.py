"""The node's domain logic: answer an authorised request, or refuse it.

Every request, answered or refused, is written to the audit log. Refusals
spend nothing. An answer leaves only after its spend is committed.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from tessera import answers, approvals, canonical, requests, results, schemas
from tessera.clock import Clock
from tessera.errors import Refusal
from tessera.keys import SigningKey
from tessera.node import engine, privacy
from tessera.node.authorize import Authorized, authorize, check_peer
from tessera.node.catalog import DatasetCatalog
from tessera.node.config import NodeConfig, Policy
from tessera.node.figures import FiguresCache
from tessera.node.ledger import Ledger, NewRelease, RequestRecord
from tessera.templates import params as params_mod
from tessera.templates.columns import columns_used, dimension_columns
from tessera.templates.model import Template, measure_sensitivities

log = logging.getLogger("tessera.node")


@dataclass(frozen=True)
class Answer:
    organisation: str
    template: Template
    digest: str
    dataset_version: int
    measures: dict[str, results.Measure]
    cells: list[results.Cell]
    cost: privacy.Loss
    charged: float
    from_cache: bool
    audit_seq: int
    audit_hash: str
    # The signed answer statement (tessera.answers) and the payload it covers.
    statement: bytes = b""
    statement_signature: bytes = b""
    payload: bytes = b""
    # What the analyst must know about the data under the answer (children without a
    # header row, say); part of the signed payload.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetStatus:
    """A hosted dataset's latest version and its accountant's spend. `content_sha256`
    is for the operator only: on the wire a version is named by `version_id`."""

    name: str
    schema_version: int
    version: int
    content_sha256: str
    # {"rho": limit} and {"rho": spent}: of the lifetime cap and the period's allowance,
    # the one that leaves less.
    budget_total: dict[str, float]
    budget_spent: dict[str, float]
    version_id: str = ""
    accountant: str = ""
    lifetime_rho_spent: float = 0.0
    period: str | None = None
    period_rho_total: float | None = None
    period_rho_spent: float = 0.0
    epsilon_at_delta: float = 0.0
    delta: float = 0.0


def version_id(secret: bytes, dataset: str, content_sha256: str) -> str:
    """An opaque name for a version's content: keyed with the node secret, so it says
    nothing about the files (no one outside can test a guess), yet content-identical
    data keeps its identifier."""
    message = f"tessera/v1/version-id\x00{dataset}\x00{content_sha256}".encode()
    return hmac.new(secret, message, "sha256").hexdigest()[:32]


class NodeService:
    def __init__(
        self,
        cfg: NodeConfig,
        catalog: DatasetCatalog,
        ledger: Ledger,
        key: SigningKey,
        clock: Clock,
        secret: bytes,
    ) -> None:
        self.cfg = cfg
        # The node secret (node/secret.py): keys the order records are kept in under a cap.
        self.secret = secret
        self.catalog = catalog
        self.ledger = ledger
        self.key = key
        self.clock = clock
        self._figures = FiguresCache()

    # -- read-only methods ---------------------------------------------------------

    def datasets(self, identity: str | None, method: str) -> list[DatasetStatus]:
        self.check_peer(identity, method)
        return self.status()

    def status(self) -> list[DatasetStatus]:
        """Each hosted dataset's latest version and its budget (for the operator)."""
        out = []
        for name in sorted(self.cfg.datasets):
            v = self.catalog.latest(name)
            if v is None:
                continue
            policy = self.cfg.policy(self.cfg.accountant_of(name))
            spend = self.ledger.accountant_spend(policy)
            # The limit that leaves less: the lifetime cap or this period's allowance.
            limits = [
                (limit, used)
                for limit, used in (
                    (policy.lifetime_rho, spend.lifetime_rho),
                    (policy.period_rho, spend.period_rho),
                )
                if limit is not None
            ]
            limit, used = min(limits, key=lambda lu: lu[0] - lu[1])
            totals, spent = {"rho": limit}, {"rho": used}
            schema = schemas.dataset(name)
            assert schema is not None
            out.append(
                DatasetStatus(
                    name,
                    schema.schema_version,
                    v.version,
                    v.content_sha256,
                    totals,
                    spent,
                    version_id=version_id(self.secret, name, v.content_sha256),
                    accountant=policy.name,
                    lifetime_rho_spent=spend.lifetime_rho,
                    period=spend.period,
                    period_rho_total=policy.period_rho,
                    period_rho_spent=spend.period_rho,
                    epsilon_at_delta=privacy.approx_epsilon(
                        spend.lifetime_rho, self.cfg.privacy.delta
                    ),
                    delta=self.cfg.privacy.delta,
                )
            )
        return out

    def check_peer(self, identity: str | None, method: str) -> str:
        """Refuse (and audit) a client whose certificate or role does not allow `method`."""
        try:
            return check_peer(self.cfg, identity, method)
        except Refusal as r:
            self._audit_refusal(identity, None, r, method=method)
            raise

    # -- Execute -------------------------------------------------------------------

    def execute(
        self,
        identity: str | None,
        template_bytes: bytes,
        approval_list: list[approvals.Approval],
        signed: requests.SignedRequest,
    ) -> Answer:
        self.check_peer(identity, "Execute")
        auth: Authorized | None = None
        try:
            auth = authorize(self.cfg, template_bytes, approval_list, signed, self.clock.now())
            return self._answer(identity, auth, signed)
        except Refusal as r:
            self._audit_refusal(identity, signed, r, auth=auth)
            raise
        except (sqlite3.Error, OSError) as e:
            # Disk full, I/O error: refuse rather than answer unpaid. An OSError comes
            # from the audit head written after the commit (a full disk with room left
            # in the WAL): the spend may be recorded, so a retry of the same request id
            # returns that answer at no further cost once the disk has room.
            log.error("ledger write failed (%s); nothing was released", type(e).__name__)
            down = Refusal(
                "UNAVAILABLE", "the budget ledger could not be written; nothing released"
            )
            self._audit_refusal(identity, signed, down, auth=auth)
            raise down from None
        except Exception as e:
            # A fault of ours (DuckDB, OpenDP, an overflow): audited by its type only,
            # never its text (which can carry data values), then re-raised for the
            # servicer to log and answer INTERNAL. Nothing was released.
            internal = Refusal("INTERNAL", f"internal error ({type(e).__name__})")
            self._audit_refusal(identity, signed, internal, auth=auth)
            raise

    def _answer(
        self, identity: str | None, auth: Authorized, signed: requests.SignedRequest
    ) -> Answer:
        t = auth.template
        version = self.catalog.latest(t.dataset)
        if version is None:
            raise Refusal("FAILED_PRECONDITION", f"no version of {t.dataset} has been loaded")
        params_json = params_mod.to_json(auth.params)
        # The audience is part of the question: each distinct audience gets its own noise
        # and is paid for afresh, so no two releases share a node's noise (no differencing).
        # The data is named by its content: a content-identical re-ingest is the same
        # version, with the same answers and no new spend.
        audience = sorted(set(auth.request.audience))
        answer_key = canonical.sha256_hex(
            canonical.encode(
                {
                    "d": auth.digest,
                    "p": params_json,
                    "ds": t.dataset,
                    "c": version.content_sha256,
                    "a": audience,
                }
            )
        )
        req = RequestRecord(
            auth.request.request_id, signed.hash, auth.request.analyst_key, auth.request.nonce
        )
        # Cheap refusals first: replays and spent budgets never touch the data.
        stored_before = self.ledger.seen(req, answer_key)
        try:
            calibrations = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
        except privacy.CalibrationError as e:
            raise Refusal("INVALID_ARGUMENT", f"the template's privacy cost: {e}") from None
        cost = privacy.total_loss(calibrations)
        rho = privacy.release_rho(calibrations)
        release = None
        policy = self.cfg.policy(self.cfg.accountant_of(t.dataset))
        if not stored_before:
            self._check_affordable(policy, rho)
            release = self._compute(
                auth, version, calibrations, cost, answer_key, params_json, policy.name, rho
            )
        body = self._audit_body(identity, auth.request, "OK", "answered", auth=auth)
        body["dataset_version"] = version.version
        committed = self.ledger.commit(req, answer_key, release, policy, body)
        stored = self._figures.get(t, answer_key, committed.payload)
        signed_statement = answers.sign(
            answers.Statement(
                organisation=self.cfg.organisation,
                node_key=self.key.public.key_id,
                request_id=auth.request.request_id,
                request_hash=signed.hash,
                template_digest=auth.digest,
                answer_key=answer_key,
                dataset=t.dataset,
                dataset_version=version.version,
                payload_sha256=answers.payload_digest(committed.payload),
                cost_kind=stored.kind,
                cost=stored.cost,
                charged=committed.charged,
                from_cache=committed.from_cache,
                audit_seq=committed.audit.seq,
                audit_hash=committed.audit.hash,
            ),
            self.key,
        )
        return Answer(
            organisation=self.cfg.organisation,
            template=t,
            digest=auth.digest,
            dataset_version=version.version,
            measures=dict(stored.measures),
            cells=list(stored.cells),
            cost=privacy.Loss(stored.kind, stored.cost),
            charged=committed.charged,
            from_cache=committed.from_cache,
            audit_seq=committed.audit.seq,
            audit_hash=committed.audit.hash,
            statement=signed_statement.statement,
            statement_signature=signed_statement.signature,
            payload=committed.payload,
            notes=stored.notes,
        )

    def _compute(
        self,
        auth: Authorized,
        version: Any,
        calibrations: list[privacy.Calibration],
        cost: privacy.Loss,
        answer_key: str,
        params_json: dict[str, Any],
        accountant: str,
        rho: float,
    ) -> NewRelease:
        t = auth.template
        exclude = t.purpose != schemas.DIRECT_CARE
        exact = engine.answer(
            self.catalog, version, t, auth.params, exclude_opted_out=exclude, order_key=self.secret
        )
        noisy = [privacy.add_noise(c, exact[c.name]) for c in calibrations]
        payload = canonical.encode(
            {
                # The signed statement carries this payload's hash even where the payload
                # itself is withheld (combined-only): the salt keeps the figures from being
                # found by hashing guesses.
                "salt": secrets.token_hex(16),
                "notes": _data_notes(t, version),
                "kind": cost.kind,
                "cost": cost.value,
                "measures": [
                    {
                        "name": n.name,
                        "values": [int(x) for x in n.values],
                        "variance": n.variance,
                        "ci95": n.ci95_half_width,
                        "ci975": n.ci975_half_width,
                        "mechanism": results.mechanism(cost.kind),
                        "scale": n.scale,
                    }
                    for n in noisy
                ],
            }
        )
        return NewRelease(
            answer_key,
            t.dataset,
            version.version,
            auth.digest,
            params_json,
            cost.kind,
            cost.value,
            payload,
            accountant,
            rho,
        )

    def _check_affordable(self, policy: Policy, rho: float) -> None:
        """A cheap early refusal before the data is read; the binding check is the
        ledger's, inside the commit."""
        spend = self.ledger.accountant_spend(policy)
        for which, spent, limit in (
            ("lifetime", spend.lifetime_rho, policy.lifetime_rho),
            (f"{spend.period} allowance", spend.period_rho, policy.period_rho),
        ):
            if limit is not None and privacy.compose_rho([spent, rho]) > limit * (1 + 1e-9):
                raise Refusal(
                    "RESOURCE_EXHAUSTED",
                    f"the {which} of accountant {policy.name} (rho {limit:g}, {spent:.6g} "
                    f"spent) cannot pay rho {rho:.6g}",
                )

    # -- audit ---------------------------------------------------------------------

    def _audit_body(
        self,
        identity: str | None,
        request: requests.QueryRequest | None,
        outcome: str,
        message: str,
        *,
        auth: Authorized | None = None,
    ) -> dict[str, Any]:
        return {
            "actor": {"peer": identity, "analyst": request.analyst_key if request else None},
            "request_id": request.request_id if request else None,
            "template_digest": request.template_digest if request else None,
            "template_id": auth.template.id if auth else None,
            "params": dict(request.params) if request else None,
            "mode": request.mode.value if request else None,
            "cost": 0.0,
            "outcome": outcome,
            "message": message,
        }

    def audit_undecodable(self, identity: str | None, method: str) -> None:
        """A call whose payload did not decode (invalid UTF-8 in a string field, say):
        refused INVALID_ARGUMENT by the server, audited here."""
        r = Refusal("INVALID_ARGUMENT", "the request payload is not a valid protobuf message")
        self._audit_refusal(identity, None, r, method=method.rsplit("/", 1)[-1])

    def _audit_refusal(
        self,
        identity: str | None,
        signed: requests.SignedRequest | None,
        r: Refusal,
        *,
        auth: Authorized | None = None,
        method: str = "Execute",
    ) -> None:
        """Best effort: a refusal goes out even when the audit cannot be written."""
        request = None
        if signed is not None:
            try:
                request = requests.parse(signed.body)
            except requests.RequestError:
                request = None
        body = self._audit_body(identity, request, r.code, r.message, auth=auth)
        body["method"] = method
        try:
            self.ledger.audit(body)
        except Exception as e:  # never let auditing a refusal hide the refusal
            log.error("could not audit a refusal (%s)", type(e).__name__)


def _data_notes(t: Template, version: Any) -> list[str]:
    """Children whose episodes (or referrals, plans) have no header row keep counting,
    but a template that reads a header field (DOB, SEX) cannot place them: say how many,
    rounded to 5, so an analyst knows what the figures leave out."""
    ds = schemas.dataset(t.dataset)
    table = ds.table(t.source) if ds is not None else None
    if ds is None or table is None:
        return []
    own = {c.name for c in table.columns}
    header_fields = sorted(columns_used(t) - own)
    missing = dict(getattr(version, "children_without_header", ())).get(t.source, 0)
    if not header_fields or missing <= 0:
        return []
    about = "fewer than 5" if missing < 5 else f"about {5 * round(missing / 5)}"
    unknown = [
        label
        for d in t.group_by
        if (label := getattr(d, "unknown", None)) is not None
        and dimension_columns(d) & set(header_fields)
    ]
    where = f"they are counted under {unknown[0]!r}" if unknown else "they are left out"
    return [
        f"{about} children have {t.source} but no header row, so no "
        f"{'/'.join(header_fields)}: {where}"
    ]
