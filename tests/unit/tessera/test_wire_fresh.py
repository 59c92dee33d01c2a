"""The checked-in generated gRPC code must match protos/ exactly."""

from __future__ import annotations

from pathlib import Path

from tessera.wire.gen import generate

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(ROOT / "protos", tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made, "protoc generated nothing"
    for rel in made:
        checked_in = ROOT / rel
        assert checked_in.exists(), f"{rel} is not checked in: run python -m tessera.wire.gen"
        assert checked_in.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run python -m tessera.wire.gen"
        )
