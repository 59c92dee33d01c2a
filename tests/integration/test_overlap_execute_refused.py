"""A node's Execute refuses an overlap template (they run through the overlap
protocol): a precise status, no spend, an audit entry, and the node keeps serving."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from tessera.wire.v1 import node_pb2
from tests.support import federation as fedlib

T5 = "overlap-domestic-abuse-known-to-social-care"
P5 = {"period_start": "2025-04-01", "period_end": "2026-03-31", "on_date": "2026-03-31"}


def _spent(stub: Any) -> dict[str, float]:
    reply = stub.GetBudget(node_pb2.GetBudgetRequest())
    return {
        d.name: getattr(d.budget_spent, d.budget_spent.WhichOneof("loss")) for d in reply.datasets
    }


def test_execute_refuses_an_overlap_template(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    signed = fedlib.sign_template(fed.template(T5), fed.approvers[:2])
    before = _spent(stub)
    n_audit = len(node.service.ledger.audit_log.export(1, 1000))
    with pytest.raises(grpc.RpcError) as err:
        stub.Execute(fedlib.execute_request(fed, signed, P5))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "overlap" in (err.value.details() or "")
    assert _spent(stub) == before
    entries = node.service.ledger.audit_log.export(1, 1000)
    assert len(entries) == n_audit + 1
    assert json.loads(entries[-1].body)["outcome"] == "FAILED_PRECONDITION"
    assert stub.GetBudget(node_pb2.GetBudgetRequest()).organisation == "Leeds"
