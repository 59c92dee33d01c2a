"""An unexpected fault (DuckDB, OpenDP, an overflow) answers INTERNAL only after an
audit entry naming the exception's type, never its text, and spends nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb
import grpc
import pytest

from tessera.node import compiler, privacy
from tests.adversarial import support as sp

SECRET = "value-4242-from-a-record"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sp.Cluster]:
    with sp.cluster(tmp_path_factory.mktemp("internal")) as c:
        yield c


def _boom(exc: BaseException) -> object:
    def raiser(*args: object, **kwargs: object) -> object:
        raise exc

    return raiser


@pytest.mark.parametrize(
    ("target", "exc"),
    [
        (compiler, duckdb.InvalidInputException(f"could not convert {SECRET}")),
        (compiler, OverflowError(f"int too large: {SECRET}")),
        (privacy, RuntimeError(f"opendp failed on {SECRET}")),
    ],
    ids=["duckdb", "overflow", "opendp"],
)
def test_an_unexpected_error_is_audited_by_type_before_internal(
    node: sp.Cluster, monkeypatch: pytest.MonkeyPatch, target: object, exc: BaseException
) -> None:
    name = "run" if target is compiler else "add_noise"
    monkeypatch.setattr(target, name, _boom(exc))
    spent = sp.spent(node)
    before = sp.audit_seq(node)
    # A fresh question each time (the day varies), so nothing comes from the cache.
    day = 10 + sp.audit_seq(node) % 18
    request = sp.execute(node.fed, sp.template_dict(node.fed), {"on_date": f"2025-03-{day}"})
    with pytest.raises(grpc.RpcError) as e:
        node.stub().Execute(request, timeout=sp.TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (e.value.details() or "")
    bodies = sp.audit_bodies(node, from_seq=before + 1)
    assert len(bodies) == 1
    assert bodies[0]["outcome"] == "INTERNAL" and bodies[0]["cost"] == 0
    assert bodies[0]["message"] == f"internal error ({type(exc).__name__})"
    assert SECRET not in json.dumps(bodies[0])
    assert sp.spent(node) == spent
    monkeypatch.undo()
    assert sp.serving(node)
