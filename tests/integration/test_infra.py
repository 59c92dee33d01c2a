"""The deployment files agree with the code: the example configs in infra/k8s load,
and the compose federation's layout gives nodes and a coordinator that reach each
other by service name, with state on their own volumes."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tessera.coordinator import config as coordinator_config
from tessera.demo import compose
from tessera.node import config as node_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s" / "overlays"


def test_the_example_kubernetes_configs_load() -> None:
    node = node_config.load(K8S / "example-node" / "node.toml")
    assert node.listen == "0.0.0.0:50051"
    assert str(node.signing_key) == "/run/tessera/keys/node.key"
    assert str(node.state_dir).startswith("/var/lib/tessera/")
    coord = coordinator_config.load(K8S / "example-coordinator" / "coordinator.toml")
    assert [n.identity for n in coord.nodes] == ["leeds"]
    # The node lets the coordinator in by the CN the coordinator's certificate carries.
    assert ("coordinator", "coordinator") in [(c.identity, c.role) for c in node.clients]


def test_the_compose_layout(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    assert compose.lay_out(root, ["leeds", "bradford", "wakefield"], scale=0.01, seed=1)
    assert not compose.lay_out(root, ["leeds"], scale=0.01, seed=1)  # kept as it is
    coord_path = root / "coordinator" / "coordinator.toml"
    coord = coordinator_config.load(coord_path)
    assert coord.listen == f"0.0.0.0:{compose.PORT}"
    assert {n.address for n in coord.nodes} == {
        f"{s}:{compose.PORT}" for s in ("leeds", "bradford", "wakefield")
    }
    assert str(coord.state_dir) == compose.STATE
    compose_file = (ROOT / "infra" / "compose" / "compose.yaml").read_text()
    for slug in ("leeds", "bradford", "wakefield"):
        path = root / "nodes" / slug / "node.toml"
        cfg = node_config.load(path)
        assert cfg.listen == f"0.0.0.0:{compose.PORT}"
        assert str(cfg.state_dir) == compose.STATE
        assert cfg.signing_key.is_file() and cfg.tls.cert.is_file()
        # The compose file starts each node from the config the layout wrote.
        assert f"/federation/nodes/{slug}/node.toml" in compose_file
        assert tomllib.loads(path.read_text())["organisation"] == cfg.organisation
