"""tessera.secagg.protocol stays the public face of the split client/server/session code
(node/secagg_node and coordinator/secagg_run import from it)."""

from __future__ import annotations

from tessera.secagg import client, protocol, server, session


def test_protocol_re_exports_the_split_modules_names() -> None:
    assert protocol.SecAggClient is client.SecAggClient
    assert protocol.SecAggServer is server.SecAggServer
    assert protocol.SecAggResult is server.SecAggResult
    for name in protocol.__all__:
        obj = getattr(protocol, name)
        assert any(getattr(m, name, None) is obj for m in (client, server, session)), name
