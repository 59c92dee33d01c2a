"""The node's domain logic: answer an authorised request, or refuse it.

Every request, answered or refused, is written to the audit log. Refusals
spend nothing. An answer leaves only after its spend is committed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from tessera import approvals, canonical, requests, results, schemas
from tessera.clock import Clock
from tessera.errors import Refusal
from tessera.keys import SigningKey
from tessera.node import compiler, privacy
from tessera.node.authorize import Authorized, authorize, check_peer
from tessera.node.catalog import DatasetCatalog
from tessera.node.config import NodeConfig
from tessera.node.ledger import Ledger, NewRelease, RequestRecord
from tessera.templates import params as params_mod
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


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    schema_version: int
    version: int
    content_sha256: str
    budget_total: dict[str, float]
    budget_spent: dict[str, float]


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

    # -- read-only methods ---------------------------------------------------------

    def datasets(self, identity: str | None, method: str) -> list[DatasetStatus]:
        self.check_peer(identity, method)
        return self.status()

    def status(self) -> list[DatasetStatus]:
        """Each hosted dataset's latest version and its budget (for the operator)."""
        out = []
        for name, ds_cfg in sorted(self.cfg.datasets.items()):
            v = self.catalog.latest(name)
            if v is None:
                continue
            totals = {
                k: t for k, t in (("epsilon", ds_cfg.epsilon), ("rho", ds_cfg.rho)) if t is not None
            }
            spent = {k: self.ledger.spent(name, v.version, k) for k in totals}
            schema = schemas.dataset(name)
            assert schema is not None
            out.append(
                DatasetStatus(
                    name, schema.schema_version, v.version, v.content_sha256, totals, spent
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

    def _answer(
        self, identity: str | None, auth: Authorized, signed: requests.SignedRequest
    ) -> Answer:
        t = auth.template
        version = self.catalog.latest(t.dataset)
        if version is None:
            raise Refusal("FAILED_PRECONDITION", f"no version of {t.dataset} has been loaded")
        params_json = params_mod.to_json(auth.params)
        answer_key = canonical.sha256_hex(
            canonical.encode(
                {"d": auth.digest, "p": params_json, "ds": t.dataset, "v": version.version}
            )
        )
        req = RequestRecord(
            auth.request.request_id, signed.hash, auth.request.analyst_key, auth.request.nonce
        )
        # Cheap refusals first: replays and spent budgets never touch the data.
        self.ledger.seen(req)
        try:
            calibrations = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
        except privacy.CalibrationError as e:
            raise Refusal("INVALID_ARGUMENT", f"the template's privacy cost: {e}") from None
        cost = privacy.total_loss(calibrations)
        release = None
        ds_cfg = self.cfg.datasets[t.dataset]
        total = ds_cfg.epsilon if cost.kind == "epsilon" else ds_cfg.rho
        if total is None:
            raise Refusal(
                "FAILED_PRECONDITION", f"this node sets no {cost.kind} budget for {t.dataset}"
            )
        if self.ledger.stored_answer(answer_key) is None:
            if self.ledger.spent(t.dataset, version.version, cost.kind) + cost.value > total * (
                1 + 1e-9
            ):
                raise Refusal(
                    "RESOURCE_EXHAUSTED",
                    f"the {cost.kind} budget for {t.dataset} version {version.version} "
                    f"cannot pay {cost.value:g}",
                )
            release = self._compute(auth, version, calibrations, cost, answer_key, params_json)
        body = self._audit_body(identity, auth.request, "OK", "answered", auth=auth)
        body["dataset_version"] = version.version
        committed = self.ledger.commit(req, answer_key, release, total, body)
        stored = json.loads(committed.payload)
        measures = {
            m["name"]: results.Measure(
                m["name"], tuple(m["values"]), m["variance"], m["ci95"], m["ci975"]
            )
            for m in stored["measures"]
        }
        return Answer(
            organisation=self.cfg.organisation,
            template=t,
            digest=auth.digest,
            dataset_version=version.version,
            measures=measures,
            cells=results.release(t, measures),
            cost=privacy.Loss(stored["kind"], stored["cost"]),
            charged=committed.charged,
            from_cache=committed.from_cache,
            audit_seq=committed.audit.seq,
            audit_hash=committed.audit.hash,
        )

    def _compute(
        self,
        auth: Authorized,
        version: Any,
        calibrations: list[privacy.Calibration],
        cost: privacy.Loss,
        answer_key: str,
        params_json: dict[str, Any],
    ) -> NewRelease:
        t = auth.template
        exclude = t.purpose != schemas.DIRECT_CARE
        query = compiler.compile_query(t, auth.params, exclude_opted_out=exclude)
        cursor = self.catalog.connect(version).cursor()
        try:
            exact = compiler.run(cursor, query)
        finally:
            cursor.close()
        noisy = [privacy.add_noise(c, exact[c.name]) for c in calibrations]
        payload = canonical.encode(
            {
                "kind": cost.kind,
                "cost": cost.value,
                "measures": [
                    {
                        "name": n.name,
                        "values": [int(x) for x in n.values],
                        "variance": n.variance,
                        "ci95": n.ci95_half_width,
                        "ci975": n.ci975_half_width,
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
        except (sqlite3.Error, OSError) as e:
            log.error("could not audit a refusal (%s)", type(e).__name__)
