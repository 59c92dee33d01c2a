"""The analyst's and approvers' CLI against a real region: template submit, list, show,
approve; query run with live progress, JSON and CSV; budget and nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera import templates
from tessera.cli.main import main
from tests.support import coordinator as region_lib

T1 = "cla-by-age-and-placement"


@pytest.fixture
def region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[region_lib.Region]:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables unwrapped
    r = region_lib.start_region(tmp_path / "region")
    try:
        yield r
    finally:
        r.stop()


def _env(region: region_lib.Region, name: str, key: str | None) -> dict[str, str]:
    env = {
        "TESSERA_COORDINATOR": region.address,
        "TESSERA_TLS_DIR": str(region.fed.root / "certs"),
        "TESSERA_IDENTITY": name,
    }
    if key is not None:
        env["TESSERA_KEY"] = key
    return env


def _keys(region: region_lib.Region, tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, key in [(region_lib.ANALYST, region.fed.analyst)] + [
        (n, region.fed.approvers[i]) for i, n in enumerate(region_lib.APPROVERS)
    ]:
        path = tmp_path / "keys" / f"{name}.key"
        key.save(path)
        out[name] = str(path)
    return out


def test_the_whole_workflow_from_the_command_line(
    region: region_lib.Region, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _keys(region, tmp_path)
    analyst = _env(region, region_lib.ANALYST, keys[region_lib.ANALYST])
    t = region.fed.template(T1)
    path = tmp_path / "t1.toml"
    path.write_text(_toml(t))
    digest = templates.digest(t)

    assert main(["template", "submit", str(path)], analyst) == 0
    assert digest in capsys.readouterr().out
    for i in (0, 1):
        approver = _env(region, region_lib.APPROVERS[i], keys[region_lib.APPROVERS[i]])
        assert main(["template", "show", digest], approver) == 0
        assert "Children looked after" in capsys.readouterr().out
        assert main(["template", "approve", digest], approver) == 0
    assert "published, 2 of 2 approvals" in capsys.readouterr().out
    assert main(["template", "list", "--state", "published"], analyst) == 0
    assert T1 in capsys.readouterr().out
    assert main(["template", "show", T1, "--canonical"], analyst) == 0
    assert capsys.readouterr().out.strip().encode() == templates.encode(t)

    out_json, out_csv = tmp_path / "q.json", tmp_path / "q.csv"
    argv = [
        "query",
        "run",
        T1,
        "--param",
        "on_date=2025-03-31",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
    ]
    assert main(argv, analyst) == 0
    shown = capsys.readouterr().out
    for org in region_lib.COUNCILS:
        assert f"{org} OK" in shown
    assert "% interval" in shown and "epsilon=0.5" in shown  # the cells' stated coverage
    data = json.loads(out_json.read_text())
    assert data["template"] == T1 and sorted(data["nodes_answered"]) == list(region_lib.COUNCILS)
    assert len(data["cells"]) == t.n_cells
    assert out_csv.read_text().startswith("age_bracket,placement,estimate,ci95_low,ci95_high")

    assert main(["budget"], analyst) == 0
    assert "ssda903" in capsys.readouterr().out
    assert main(["nodes"], analyst) == 0
    assert capsys.readouterr().out.count("SERVING") == 3
    assert main(["query", "list"], analyst) == 0
    assert "released" in capsys.readouterr().out


def test_refusals_and_usage_errors_exit_non_zero(
    region: region_lib.Region, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _keys(region, tmp_path)
    analyst = _env(region, region_lib.ANALYST, keys[region_lib.ANALYST])
    digest = region_lib.published(region, T1, quorum=3, per_node_breakdown=False)
    assert main(["template", "approve", digest], analyst) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main(["query", "run", T1, "--param", "when=2025-03-31"], analyst) == 2
    assert "on_date" in capsys.readouterr().err
    assert (
        main(["query", "run", T1, "--param", "on_date=2025-03-31", "--mode", "per_node"], analyst)
        == 1
    )
    assert "per-node" in capsys.readouterr().err
    no_key = _env(region, region_lib.ANALYST, None)
    assert main(["query", "run", T1, "--param", "on_date=2025-03-31"], no_key) == 2
    assert "TESSERA_KEY" in capsys.readouterr().err
    region.stop_node("Leeds")
    assert main(["query", "run", T1, "--param", "on_date=2025-03-31"], analyst) == 3
    out = capsys.readouterr().out
    assert "withheld" in out and "Leeds" in out


def _toml(t: templates.Template) -> str:
    """A template back to TOML (the canonical JSON's tables, as a file an analyst writes)."""
    import tomli_w

    from tessera.templates.parse import to_dict

    d = to_dict(t)
    return tomli_w.dumps(d)
