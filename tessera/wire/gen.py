"""Regenerate the checked-in gRPC code from protos/ (run: python -m tessera.wire.gen).

Generated code is committed, and tests/unit/wire/test_generated_fresh.py fails when
it is stale, so an install never needs grpcio-tools.
"""

from __future__ import annotations

import sys
from pathlib import Path


def generate(proto_root: Path, out_root: Path) -> None:
    from grpc_tools import protoc  # dev dependency only

    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # mypy-protobuf's plugins sit beside this interpreter, whether or not it is on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    generate(root / "protos", root)


if __name__ == "__main__":
    main()
    sys.exit(0)
