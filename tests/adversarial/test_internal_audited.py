"""An unexpected fault (DuckDB, OpenDP, an overflow) answers INTERNAL only after an
audit entry naming the exception's type, never its text, and spends nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import pytest

from tessera.node import compiler, privacy
from tessera.node.engine import execute
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
    if target is compiler:
        # The fault may come from either engine: the vectorised one or the DuckDB compiler.
        monkeypatch.setattr(compiler, "run", _boom(exc))
        monkeypatch.setattr(execute, "run", _boom(exc))
    else:
        monkeypatch.setattr(target, "add_noise", _boom(exc))
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


def test_the_coordinator_audits_an_unexpected_error_by_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.client import ClientError
    from tessera.coordinator import service as coordinator_service
    from tests.support import coordinator as region_lib

    r = region_lib.start_region(tmp_path, councils=("Leeds",))
    try:
        analyst = r.analyst()
        monkeypatch.setattr(
            coordinator_service.templates,
            "parse_canonical",
            _boom(OverflowError(f"a value {SECRET}")),
        )
        with pytest.raises(ClientError) as e:
            analyst.submit_template(r.fed.template("cla-by-age-and-placement"))
        assert e.value.code == "INTERNAL" and SECRET not in e.value.message
        monkeypatch.undo()
        last = r.coordinator.service.store.audit_log.export(1, 1000)[-1]
        body = json.loads(last.body)
        assert body["outcome"] == "INTERNAL" and body["method"] == "SubmitTemplate"
        assert body["message"] == "internal error (OverflowError)"
        assert SECRET not in last.body.decode()
        analyst.submit_template(r.fed.template("cla-by-age-and-placement"))  # still serving
    finally:
        r.stop()
