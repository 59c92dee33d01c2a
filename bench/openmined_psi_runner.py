"""Computes one intersection cardinality with OpenMined PSI and times it, in its own venv.

Not part of the `bench` package's imports: `python openmined_psi_runner.py spec.json`
is started by bench.overlap_bench with the venv's interpreter (openmined-psi pins an
old protobuf). The spec names two files of identifiers, one a line: the client's
(smaller) and the server's. Client and server run in this one process, one after the
other, and each message is serialised and parsed as if it crossed a network. Prints
one JSON line.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from typing import Any


def _read(path: str) -> list[str]:
    with open(path, encoding="ascii") as f:
        return f.read().split()


def main(spec_path: str) -> int:
    import private_set_intersection.python as psi  # type: ignore[import-not-found]

    with open(spec_path, encoding="utf-8") as f:
        spec: dict[str, Any] = json.load(f)
    client_items, server_items = _read(spec["client"]), _read(spec["server"])
    fpr = float(spec["fpr"])
    t0, cpu0 = time.perf_counter(), time.process_time()
    client = psi.client.CreateWithNewKey(False)  # cardinality only
    server = psi.server.CreateWithNewKey(False)
    setup_bytes = server.CreateSetupMessage(
        fpr, len(client_items), server_items
    ).SerializeToString()
    t1 = time.perf_counter()
    request_bytes = client.CreateRequest(client_items).SerializeToString()
    t2 = time.perf_counter()
    request = psi.Request()
    request.ParseFromString(request_bytes)
    response_bytes = server.ProcessRequest(request).SerializeToString()
    t3 = time.perf_counter()
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(setup_bytes)
    response.ParseFromString(response_bytes)
    size = client.GetIntersectionSize(setup, response)
    t4, cpu = time.perf_counter(), time.process_time() - cpu0
    print(
        json.dumps(
            {
                "openmined_psi": importlib.metadata.version("openmined-psi"),
                "client_items": len(client_items),
                "server_items": len(server_items),
                "cardinality": int(size),
                "fpr": fpr,
                "seconds": round(t4 - t0, 3),
                "cpu_s": round(cpu, 3),
                "server_setup_s": round(t1 - t0, 3),
                "client_request_s": round(t2 - t1, 3),
                "server_process_s": round(t3 - t2, 3),
                "client_size_s": round(t4 - t3, 3),
                "bytes": len(setup_bytes) + len(request_bytes) + len(response_bytes),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
