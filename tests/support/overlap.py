"""A two-node overlap federation for tests: a police force and a council's social care,
each a real node over mutual TLS, with small files whose overlap is known exactly."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera import schemas, templates
from tessera.keys import SigningKey
from tessera.node.config import NodeConfig
from tessera.node.ingest import ingest_dataset
from tessera.overlap.nhs import check_digit
from tessera.templates.model import Analyst, Template
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

POLICE, COUNCIL, TRUST = "Police", "Leeds", "Trust"
ORGS = (POLICE, COUNCIL)  # the template's dataset order: police, then cin
TEMPLATE = fedlib.EXAMPLES / "overlap-domestic-abuse-known-to-social-care.toml"  # reference 5
# The three-agency "at least 2 of 3" template: health, police, cin, in that order.
THREE = (TRUST, POLICE, COUNCIL)
TEMPLATE_3 = fedlib.EXAMPLES / "overlap-known-to-two-of-three-agencies.toml"
# At least two of three, by the council's bracket, then "not in cin": the shared children
# (all in police; the first 10 also at the trust), 3 council-only children the trust
# also saw (one per bracket 1-4, 5-9, 10-15) and 5 police-only children the trust saw.
EXACT_3 = (0, 8, 10, 12, 0, 0, 5)
PARAMS = {"period_start": "2025-04-01", "period_end": "2026-03-31", "on_date": "2026-03-31"}
# Children in both, by the council's age bracket: 1-4, 5-9 and 10-15 (of the template's
# under 1, 1-4, 5-9, 10-15, 16 and over, Age not recorded).
BOTH = (7, 9, 11)
EXACT = (0, *BOTH, 0, 0)
ONLY_POLICE, ONLY_COUNCIL, NO_NUMBER = 13, 17, 4
DOB = {0: "2023-06-01", 1: "2018-06-01", 2: "2012-06-01"}


def nhs_numbers(n: int, seed: int) -> list[str]:
    rng, out = random.Random(seed), set[str]()
    while len(out) < n:
        nine = f"{rng.randrange(10**8, 10**9):09d}"
        check = check_digit(nine)
        if check is not None:
            out.add(nine + str(check))
    return sorted(out)


@dataclass
class OverlapRegion:
    fed: fedlib.Federation
    nodes: dict[str, Any]
    template: Template
    numbers: list[str]

    def port(self, org: str) -> int:
        return int(self.nodes[org].port)

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop(0)


def template(fed: fedlib.Federation, path: Path = TEMPLATE) -> Template:
    t = templates.load_toml(path.read_text())
    acc = dataclasses.replace(
        t.access, analysts=(Analyst("Test Analyst", fed.analyst.public.key_id),)
    )
    return dataclasses.replace(t, access=acc)


def write_files(root: Path, numbers: list[str]) -> dict[str, dict[str, list[Path]]]:
    root.mkdir(parents=True, exist_ok=True)
    both = sum(BOTH)
    shared, police_only = numbers[:both], numbers[both : both + ONLY_POLICE]
    council_only = numbers[both + ONLY_POLICE : both + ONLY_POLICE + ONLY_COUNCIL]
    incidents = ["person_id,nhs_number,incident_date,incident_type"]
    for i, nhs in enumerate(shared + police_only):
        # As recorded: with spaces, some twice (one child is one element per agency).
        shown = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if i % 3 == 0 else nhs
        incidents.append(f"P{i},{shown},2025-06-0{1 + i % 9},DOMESTIC_ABUSE_NOTIFICATION")
        if i % 5 == 0:
            incidents.append(f"P{i},{nhs},2025-09-01,DOMESTIC_ABUSE_NOTIFICATION")
    for j in range(NO_NUMBER):
        incidents.append(f"PX{j},,2025-07-01,DOMESTIC_ABUSE_NOTIFICATION")
    incidents.append(f"PY0,{council_only[0]},2025-07-01,MISSING_EPISODE")  # filtered out
    children = ["child_id,dob,sex,upn,nhs_number"]
    k = 0
    for bracket, count in enumerate(BOTH):
        for _ in range(count):
            children.append(f"K{k},{DOB[bracket]},1,,{shared[k]}")
            k += 1
    for j, nhs in enumerate(council_only):
        children.append(f"KC{j},{DOB[j % 3]},2,,{nhs}")
    files = {
        "incidents.csv": "\n".join(incidents) + "\n",
        "children.csv": "\n".join(children) + "\n",
        "referrals.csv": "child_id,referral_date,referral_source,primary_need,nfa\n",
        "cin_episodes.csv": "child_id,start_date,end_date,primary_need\n",
        "cp_plans.csv": "child_id,start_date,end_date,initial_category\n",
    }
    ed = [
        "nhs_number,arrival_date,age_years,attendance_category,injury,safeguarding_concern,opted_out"
    ]
    for nhs in shared[:10] + police_only[:5] + council_only[:3] + numbers[-6:]:
        ed.append(f"{nhs},2025-08-01,7,1,true,false,false")
    files["ed_attendances.csv"] = "\n".join(ed) + "\n"
    for name, text in files.items():
        (root / name).write_text(text)
    return {
        "health": {"ed_attendances": [root / "ed_attendances.csv"]},
        "police": {"incidents": [root / "incidents.csv"]},
        "cin": {
            "children": [root / "children.csv"],
            "referrals": [root / "referrals.csv"],
            "cin_episodes": [root / "cin_episodes.csv"],
            "cp_plans": [root / "cp_plans.csv"],
        },
    }


def prepare(
    root: Path,
    *,
    roster_keys: dict[str, str] | None = None,
    max_message_bytes: int = 0,
    orgs: tuple[str, ...] = ORGS,
) -> tuple[fedlib.Federation, dict[str, NodeConfig], list[str]]:
    """Keys, certificates, the roster and both nodes' ingested data; nothing started.
    `roster_keys` puts other keys in the approver-signed roster (a misissued one)."""
    fed = fedlib.make(root, node_names=list(orgs))
    fed.node_keys.update({org: SigningKey.generate() for org in orgs})
    numbers = nhs_numbers(sum(BOTH) + ONLY_POLICE + ONLY_COUNCIL + 6, seed=5)
    sources = write_files(root / "sources", numbers)
    roster_path = fed.write_roster(orgs, keys=roster_keys)
    budgets = {
        POLICE: {"police": (4.0, None)},
        COUNCIL: {"cin": (4.0, None)},
        TRUST: {"health": (4.0, None)},
    }
    cfgs = {}
    for org in orgs:
        cfg = fedlib.node_config(fed, org, budgets=budgets[org], roster_path=roster_path)
        if max_message_bytes:
            cfg = dataclasses.replace(cfg, max_message_bytes=max_message_bytes)
        for name in cfg.datasets:
            ds = schemas.dataset(name)
            assert ds is not None
            ingest_dataset(ds, sources[name], cfg.data_dir, datetime(2026, 4, 1, tzinfo=UTC))
        cfgs[org] = cfg
    return fed, cfgs, numbers


def start(root: Path, *, orgs: tuple[str, ...] = ORGS, **kw: Any) -> OverlapRegion:
    from tessera.node.main import start as start_node

    fed, cfgs, numbers = prepare(root, orgs=orgs, **kw)
    nodes: dict[str, Any] = {}
    try:
        for org in orgs:
            nodes[org] = start_node(cfgs[org])
    except BaseException:
        for n in nodes.values():
            n.stop(0)
        raise
    path = TEMPLATE_3 if orgs == THREE else TEMPLATE
    return OverlapRegion(fed, nodes, template(fed, path), numbers)


def running(root: Path, **kw: Any) -> Iterator[OverlapRegion]:
    r = start(root, **kw)
    try:
        yield r
    finally:
        r.stop()


def with_coordinator(r: OverlapRegion, **options: Any) -> region_lib.Region:
    """A coordinator routing to the region's two nodes, and the people's certificates."""
    from tessera.coordinator import main as coordinator_main

    region_lib.issue_user_certs(r.fed, [region_lib.ANALYST, *region_lib.APPROVERS])
    cfg = region_lib.coordinator_config(r.fed, {o: r.port(o) for o in ORGS}, **options)
    hosted = {POLICE: ("police",), COUNCIL: ("cin",)}
    cfg = dataclasses.replace(
        cfg,
        nodes=tuple(dataclasses.replace(n, datasets=hosted[n.organisation]) for n in cfg.nodes),
    )
    region = region_lib.Region(r.fed, r.nodes, cfg)
    region.coordinator = coordinator_main.start(cfg)
    return region


def publish(region: region_lib.Region, t: Template) -> str:
    info = region.analyst().submit_template(t)
    for i in (0, 1):
        region.approver(i).approve(info.digest)
    return info.digest
