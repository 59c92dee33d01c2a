"""`python -m tessera.probe HOST:PORT`: exit 0 if the plaintext health port there says
SERVING, 1 otherwise. For container health checks (compose, systemd); Kubernetes
uses its own gRPC probe against the same port."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tessera.probe HOST:PORT", file=sys.stderr)
        return 2
    return 0 if check(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
