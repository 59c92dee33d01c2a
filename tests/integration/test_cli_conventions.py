"""The analyst's commands against a real region, as a script or a narrow terminal uses
them: `--json -` gives only JSON on stdout (and never a file named "-"), every listing
command takes --json, 80-column output folds without cutting values, and
`query report` writes the HTML page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera import templates
from tessera.cli.main import main
from tests.support import coordinator as region_lib
from tests.support.federation import EXAMPLES

T1 = "cla-by-age-and-placement"
PARAM = ["--param", "on_date=2025-03-31"]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path_factory.mktemp("region"))
    try:
        region_lib.published(r, T1)
        yield r
    finally:
        r.stop()


@pytest.fixture
def analyst(region: region_lib.Region, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "analyst.key"
    region.fed.analyst.save(key)
    return {
        "TESSERA_COORDINATOR": region.address,
        "TESSERA_TLS_DIR": str(region.fed.root / "certs"),
        "TESSERA_IDENTITY": region_lib.ANALYST,
        "TESSERA_KEY": str(key),
    }


def test_json_dash_is_standard_output_only(
    analyst: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["query", "run", T1, *PARAM, "--json", "-"], analyst) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # nothing but JSON on stdout
    n_cells = templates.load_toml((EXAMPLES / f"{T1}.toml").read_text()).n_cells
    assert data["template"] == T1 and len(data["cells"]) == n_cells
    prov = data["provenance"]
    assert prov["params"] == {"on_date": "2025-03-31"}
    assert sorted(prov["nodes_answered"]) == list(region_lib.COUNCILS)
    assert prov["privacy_spent"] == {"epsilon": 0.5}
    assert "interval" in captured.err  # the human table went to stderr
    assert not (tmp_path / "-").exists()

    query_id = data["query_id"]
    for argv in (
        ["query", "list"],
        ["query", "show", query_id],
        ["budget"],
        ["nodes"],
        ["template", "list"],
        ["template", "show", T1],
    ):
        assert main([*argv, "--json", "-"], analyst) == 0, argv
        out = json.loads(capsys.readouterr().out)
        assert out, argv
    assert not (tmp_path / "-").exists()


def test_json_to_a_file_keeps_the_table(
    analyst: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodes.json"
    assert main(["nodes", "--json", str(path)], analyst) == 0
    assert capsys.readouterr().out.count("SERVING") == 3
    nodes = json.loads(path.read_text())
    assert sorted(n["organisation"] for n in nodes) == list(region_lib.COUNCILS)


@pytest.mark.parametrize("columns", ["80", "200"])
def test_tables_fit_the_terminal(
    analyst: dict[str, str], columns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**analyst, "COLUMNS": columns}
    width = int(columns)
    outputs = {}
    for argv in (
        ["query", "run", T1, *PARAM],
        ["query", "list"],
        ["budget"],
        ["nodes"],
        ["template", "list"],
        ["template", "show", T1],
    ):
        assert main(argv, env) == 0, argv
        outputs[" ".join(argv[:2])] = capsys.readouterr().out
    for name, out in outputs.items():
        assert max(len(line) for line in out.splitlines()) <= width, name
    everything = "".join(outputs.values())
    # Values are whole, never cut with an ellipsis, at either width.
    assert "…" not in outputs["query run"] and "…" not in outputs["nodes"]
    for value in ("Residential", "Fostering", "16 and over", T1, *region_lib.COUNCILS):
        assert value in everything, value
    # The cells table fits in 80 columns and stays a table; the nodes table would wrap,
    # so below 100 columns it becomes one block per node.
    assert "estimate:" not in outputs["query run"]
    if width < 100:
        assert outputs["nodes"].count("organisation:") == 3
    else:
        assert "organisation:" not in outputs["nodes"]


def test_query_report_writes_the_page(
    analyst: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "run", T1, *PARAM, "--json", "-"], analyst) == 0
    query_id = json.loads(capsys.readouterr().out)["query_id"]
    page = tmp_path / "report.html"
    assert main(["query", "report", query_id, "--html", str(page)], analyst) == 0
    text = page.read_text()
    assert "Children looked after on a date" in text
    assert "<svg" in text and "How to read this" in text
    for org in region_lib.COUNCILS:
        assert org in text
    assert "epsilon = 0.5" in text
    # The parameters come back from the signed request the coordinator stored.
    assert "parameter on_date" in text and "2025-03-31 (a date from 2015-03-31" in text
    assert main(["query", "report", "no-such-query", "--html", str(page)], analyst) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_verified_result_says_so_in_the_json_and_the_report(
    region: region_lib.Region,
    analyst: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"nodes": region.fed.trust(region_lib.COUNCILS)}))
    env = {**analyst, "TESSERA_TRUST": str(trust)}
    assert main(["query", "run", T1, "--param", "on_date=2023-03-31", "--json", "-"], env) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provenance"]["verification"] == "verified"
    assert data["provenance"]["node_verification"] == dict.fromkeys(region_lib.COUNCILS, "verified")
    page = tmp_path / "verified.html"
    assert main(["query", "report", data["query_id"], "--html", str(page)], env) == 0
    assert "Every part verified" in page.read_text()

    # Node keys that are not the nodes' own: the report says it failed, and names them.
    from tessera.keys import SigningKey

    wrong = {o: SigningKey.generate().public.key_id for o in region_lib.COUNCILS}
    trust.write_text(json.dumps({"nodes": wrong}))
    assert main(["query", "report", data["query_id"], "--html", str(page)], env) == 0
    text = page.read_text()
    assert "Verification FAILED" in text and "Leeds" in text
    # Without a trust file the page does not claim what was not checked.
    assert main(["query", "report", data["query_id"], "--html", str(page)], analyst) == 0
    assert "Not verified" in page.read_text()
