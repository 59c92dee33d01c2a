"""The same children appear consistently across agencies; output is reproducible."""

from __future__ import annotations

import argparse
import itertools
import re
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tessera.cli import synth_cmd
from tessera.synth import RegionManifest, generate_region, nhs_number
from tessera.synth.population import upn_check_letter
from tessera.synth.region import MANIFEST_NAME

from .conftest import COUNCILS, POLICE, REF, TRUST, Region, age_on, parse_dmy


def test_looked_after_children_are_children_in_need_of_the_same_council(region: Region) -> None:
    for council in COUNCILS:
        cin = {r["child_id"]: r for r in region.table(council, "cin", "children")}
        open_cin = {
            r["child_id"] for r in region.table(council, "cin", "cin_episodes") if not r["end_date"]
        }
        header = region.table(council, "ssda903", "header")
        assert header
        for h in header:
            assert h["CHILD"] in cin
            assert h["CHILD"].startswith(council[:1].upper())
            child = cin[h["CHILD"]]
            assert parse_dmy(h["DOB"]) == date.fromisoformat(child["dob"])
            assert h["SEX"] == child["sex"]
        for e in region.table(council, "ssda903", "episodes"):
            if not e["DEC"]:
                assert e["CHILD"] in open_cin


def test_episodes_follow_on_without_gaps(region: Region) -> None:
    for council in COUNCILS:
        by_child: dict[str, list[dict[str, str]]] = defaultdict(list)
        for e in region.table(council, "ssda903", "episodes"):
            by_child[e["CHILD"]].append(e)
        for eps in by_child.values():
            assert [parse_dmy(e["DECOM"]) for e in eps] == sorted(
                parse_dmy(e["DECOM"]) for e in eps
            )
            assert eps[0]["RNE"] == "S"
            for a, b in itertools.pairwise(eps):
                assert a["DEC"] == b["DECOM"] and a["REC"] == "X1"
            for e in eps:
                if e["DEC"]:
                    assert parse_dmy(e["DECOM"]) < parse_dmy(e["DEC"]) < REF
            last = eps[-1]
            assert (last["DEC"] == "") == (last["REC"] == "")
            assert last["REC"] != "X1"


def test_every_health_record_is_a_child_of_the_region(region: Region) -> None:
    pop = region.population
    dob_by_nhs = {n: int(d) for n, d in zip(pop.nhs, pop.dob.tolist(), strict=True)}
    checked = 0
    for r in region.table(TRUST, "health", "ed_attendances"):
        n = r["nhs_number"]
        if n and nhs_number.is_valid(n):
            dob = date.fromordinal(date(1970, 1, 1).toordinal() + dob_by_nhs[n])
            assert int(r["age_years"]) == age_on(dob, date.fromisoformat(r["arrival_date"]))
            checked += 1
    assert checked > 1000


def test_pupils_belong_to_their_council(region: Region) -> None:
    pop = region.population
    council_by_nhs = dict(zip(pop.nhs, pop.council.tolist(), strict=True))
    for k, council in enumerate(COUNCILS):
        pupils = region.table(council, "education", "pupils")
        upns = [p["upn"] for p in pupils]
        assert len(set(upns)) == len(upns)
        for p in pupils:
            assert council_by_nhs.get(p["nhs_number"], k) == k
        assert {a["upn"] for a in region.table(council, "education", "attendance")} <= set(upns)
        assert {x["upn"] for x in region.table(council, "education", "exclusions")} <= set(upns)


def test_police_person_ids_are_the_forces_own(region: Region) -> None:
    numbers: dict[str, set[str]] = defaultdict(set)
    for r in region.table(POLICE, "police", "incidents"):
        assert r["person_id"].startswith("WYP")
        numbers[r["person_id"]].add(r["nhs_number"])
    assert all(len(v) == 1 for v in numbers.values())


def test_manifest_round_trips_and_counts_rows(region: Region) -> None:
    text = (region.root / MANIFEST_NAME).read_text(encoding="utf-8")
    assert RegionManifest.from_json(text) == region.manifest
    assert region.manifest.to_json() == text
    kinds = {o.slug: o.kind for o in region.manifest.organisations}
    assert kinds == {**dict.fromkeys(COUNCILS, "council"), TRUST: "nhs_trust", POLICE: "police"}
    for path, rows in region.manifest.row_counts().items():
        lines = (region.root / path).read_text(encoding="utf-8").count("\n")
        assert lines == rows + 1, path


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_region(tmp_path / "a", scale=0.002, seed=5)
    generate_region(tmp_path / "b", scale=0.002, seed=5)
    generate_region(tmp_path / "c", scale=0.002, seed=6)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 5 * 9 + 2 + 1
    assert a == b
    assert a.keys() == c.keys()
    assert a["leeds/cin/children.csv"] != c["leeds/cin/children.csv"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="tessera")
    synth_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "synth",
            str(tmp_path),
            "--scale",
            "0.002",
            "--seed",
            "3",
            "--reference-date",
            "2025-03-31",
        ]
    )
    assert args.handler(args, {}) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "scale 0.002" in out and "West Yorkshire Police" in out
    manifest = RegionManifest.from_json((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert (manifest.seed, manifest.scale, manifest.reference_date) == (3, 0.002, date(2025, 3, 31))

    too_big = parser.parse_args(["synth", str(tmp_path / "x"), "--scale", "50"])
    assert too_big.handler(too_big, {}) == 2
    assert "too large" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(tmp_path), "--scale", "0"])


def test_upns_carry_their_check_letter(region: Region) -> None:
    upns = [r["upn"] for r in region.councils("education", "pupils")]
    assert all(re.fullmatch(r"[A-Z]\d{12}", u) for u in upns)
    letters = upn_check_letter(np.array([int(u[1:]) for u in upns], dtype=np.int64))
    assert letters == [u[0] for u in upns]
