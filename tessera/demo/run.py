"""`tessera demo`: a whole local federation, end to end, on loopback.

Certificates and keys, a synthetic region, seven nodes and a coordinator as
separate processes, two of three approvers signing, an analyst's queries and a
security drill; then everything is shut down.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tessera import templates
from tessera.demo import federation, report
from tessera.demo.drills import run_drills
from tessera.demo.processes import Processes
from tessera.templates.model import Analyst, Template

# The reference templates, shipped in the package (tessera/demo/templates links to
# examples/templates in a checkout; a wheel carries the files themselves).
EXAMPLES = importlib.resources.files("tessera.demo") / "templates"
COUNCILS = ("Bradford", "Calderdale", "Kirklees", "Leeds", "Wakefield")
REFERENCE_DATE = "2026-03-31"
POLICE = "West Yorkshire Police"
OVERLAP_TEMPLATE = "overlap-domestic-abuse-known-to-social-care"


@dataclass(frozen=True)
class DemoOptions:
    scale: float = 0.05
    seed: int = 1
    json_path: Path | None = None
    workdir: Path | None = None
    deadline_seconds: float = 10.0
    # Keep the federation running after the demo until interrupted (needs workdir).
    serve: bool = False


def load_template(name: str, analyst_key: str) -> Template:
    """A reference template, allowing the demo's analyst."""
    t = templates.load_toml((EXAMPLES / f"{name}.toml").read_text(encoding="utf-8"))
    access = dataclasses.replace(t.access, analysts=(Analyst("Regional analyst", analyst_key),))
    return dataclasses.replace(t, access=access)


def run(options: DemoOptions, console: Console) -> dict[str, Any]:
    if options.workdir is not None:
        # Absolute from here on: configs, logs and child processes all see one path.
        workdir = options.workdir.expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        return _run_in(workdir, dataclasses.replace(options, workdir=workdir), console)
    with tempfile.TemporaryDirectory(prefix="tessera-demo-") as tmp:
        return _run_in(Path(tmp), options, console)


def _step(console: Console, text: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    with console.status(text):
        out = fn()
    console.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f} s)[/dim]")
    return out


def _serve_until_interrupted(console: Console, root: Path, address: str) -> None:
    certs = root / "certs"
    console.rule("The federation keeps running: try it from another terminal")
    console.print(
        f"export TESSERA_COORDINATOR={address} TESSERA_TLS_DIR={certs}\n"
        f"# as the analyst:\nexport TESSERA_IDENTITY=analyst TESSERA_KEY={root}/keys/analyst.key\n"
        f"# or as an approver:\n"
        f"export TESSERA_IDENTITY=approver-3 TESSERA_KEY={root}/keys/approver-3.key\n"
        "Press Ctrl-C to stop every process."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


def _run_in(root: Path, options: DemoOptions, console: Console) -> dict[str, Any]:
    from tessera.client import Client  # the analysts' and approvers' own client

    layout = _step(
        console,
        f"Certificates, keys, a federation roster two approvers sign (the nodes' keys, "
        f"for secure aggregation) and a synthetic region at scale {options.scale} "
        "(a scaled-down West Yorkshire; every person is made up)",
        lambda: federation.build(root, scale=options.scale, seed=options.seed),
    )
    rejected = _step(
        console,
        "Each organisation loads its own data into its node",
        lambda: federation.ingest_all(layout),
    )
    with Processes(root / "logs") as procs:

        def start_node(site: federation.NodeSite) -> None:
            site.port = procs.start(
                site.slug, "tessera.node.main", ["--config", str(site.config_path)]
            ).port

        def start_all() -> None:
            with ThreadPoolExecutor(max_workers=len(layout.nodes)) as pool:
                list(pool.map(start_node, layout.nodes))

        _step(console, "Seven nodes start, each as its own process, over mutual TLS", start_all)
        federation.write_coordinator_config(layout, options.deadline_seconds)
        coordinator = _step(
            console,
            "The coordinator starts",
            lambda: procs.start(
                "coordinator",
                "tessera.coordinator.main",
                ["--config", str(layout.coordinator_config)],
            ),
        )
        address = f"localhost:{coordinator.port}"

        def client(name: str) -> Client:
            return Client(address, layout.tls(name), layout.keys.get(name))

        analyst = client(federation.ANALYST)
        approvers = [client(n) for n in federation.APPROVERS]
        analyst_key = layout.keys[federation.ANALYST].public.key_id
        names = (
            "cla-by-age-and-placement",
            "referrals-by-need-and-age",
            "absence-by-sen",
            "ed-injuries-under-fives-by-month",
            OVERLAP_TEMPLATE,
        )
        chosen = {n: load_template(n, analyst_key) for n in names}
        # Secure aggregation: the approvers allow it for the combined-only referrals
        # template, with a threshold of 3 of the five councils (docs/secure-aggregation.md).
        referrals = chosen["referrals-by-need-and-age"]
        chosen["referrals-by-need-and-age"] = dataclasses.replace(
            referrals, access=dataclasses.replace(referrals.access, threshold=3)
        )

        def approve_all() -> None:
            for t in chosen.values():
                digest = analyst.submit_template(t).digest
                for a in approvers[:2]:  # two of three approvers sign
                    a.approve(digest)

        _step(
            console,
            f"The analyst submits {len(chosen)} templates; two of three approvers sign each",
            approve_all,
        )
        queries = []

        def ask(name: str, params: dict[str, Any], mode: str, nodes: list[str] | None) -> None:
            result = analyst.run_query(name, params, mode=mode, nodes=nodes)
            queries.append(result)

        plan = [
            ("cla-by-age-and-placement", {"on_date": REFERENCE_DATE}, "combined", list(COUNCILS)),
            ("cla-by-age-and-placement", {"on_date": "2025-03-31"}, "per_node", list(COUNCILS)),
            (
                "referrals-by-need-and-age",
                {"period_start": "2025-04-01", "period_end": REFERENCE_DATE},
                "secure_aggregation",
                list(COUNCILS),
            ),
            ("absence-by-sen", {"academic_year": "2024/25"}, "combined", None),
            ("ed-injuries-under-fives-by-month", {}, "combined", None),
            # Reference template 5 (docs/overlap.md): the audience is the party order.
            (
                OVERLAP_TEMPLATE,
                {
                    "period_start": "2025-04-01",
                    "period_end": REFERENCE_DATE,
                    "on_date": REFERENCE_DATE,
                },
                "overlap",
                [POLICE, "Leeds"],
            ),
        ]
        for name, params, mode, nodes in plan:
            _step(
                console,
                f"Query: {name} ({mode})",
                functools.partial(ask, name, params, mode, nodes),
            )

        leeds = layout.node("Leeds")
        police = layout.node(POLICE)
        police_t = load_template("police-incidents-by-type", analyst_key)
        periods = [
            {"period_start": f"{y}-04-01", "period_end": f"{y + 1}-03-31"}
            for y in (2023, 2024, 2025)
        ]
        drills, setup = _step(
            console,
            "Security drill: a compromised coordinator and a careless client try their luck",
            lambda: run_drills(
                tls=layout.tls(federation.COORDINATOR),
                councils=(leeds.organisation, leeds.port or 0),
                police=(police.organisation, police.port or 0),
                t_council=chosen["cla-by-age-and-placement"],
                council_params={"on_date": "2024-03-31"},
                t_police=police_t,
                police_periods=periods,
                approvers=[layout.keys[n] for n in federation.APPROVERS],
                analyst=layout.keys[federation.ANALYST],
                identities={s.organisation: s.slug for s in layout.nodes},
            ),
        )
        nodes_info = [
            {"organisation": s.organisation, "datasets": sorted(s.datasets)} for s in layout.nodes
        ]
        summary = {
            "nodes": nodes_info,
            "queries": [q.to_json_dict() for q in queries],
            "drills": [
                {"name": d.name, "status": d.status, "budget_spent": d.budget_spent} for d in drills
            ],
        }
        report.render(console, summary, drills, setup, rejected, options.scale)
        if options.serve:
            _serve_until_interrupted(console, root, address)
    console.print("[green]✓[/green] Every process has stopped.")
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(summary, indent=2))
        console.print(f"Wrote {options.json_path}")
    return summary
