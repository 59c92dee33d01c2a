"""The example notebook, executed against a real region as an analyst would run it:
`Client.from_env()` from the TESSERA_* variables, a DataFrame with its provenance,
and a saved chart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import coordinator as region_lib

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
Config = pytest.importorskip("traitlets.config").Config
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"
T1 = "cla-by-age-and-placement"


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path / "region")
    try:
        region_lib.published(r, T1)
        yield r
    finally:
        r.stop()


def test_the_checked_in_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _outputs(cell: object) -> str:
    texts = []
    for out in cell.outputs:  # type: ignore[attr-defined]
        if out.output_type == "stream":
            texts.append(out.text)
        elif "data" in out:
            texts.extend(str(v) for v in out.data.values())
    return "\n".join(texts)


def test_example_notebook_runs_against_a_region(
    region: region_lib.Region, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "analyst.key"
    region.fed.analyst.save(key)
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"nodes": region.fed.trust(region_lib.COUNCILS)}))
    chart = tmp_path / "out" / "chart.png"
    chart.parent.mkdir()
    for name, value in {
        "TESSERA_COORDINATOR": region.address,
        "TESSERA_TLS_DIR": str(region.fed.root / "certs"),
        "TESSERA_IDENTITY": region_lib.ANALYST,
        "TESSERA_KEY": str(key),
        "TESSERA_TRUST": str(trust),
        "TESSERA_CHART": str(chart),
        "MPLBACKEND": "Agg",
        "JUPYTER_PLATFORM_DIRS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel talks to this process over local sockets in a folder of its own.
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(tmp_path / "kernel")
    client = nbclient.NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        config=config,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    nodes, template, frame, attrs, _figure = (_outputs(c) for c in code)
    for org in region_lib.COUNCILS:
        assert org in nodes
    assert "Children looked after on a date" in template
    # The DataFrame: every cell of the domain, with its interval, coverage and flag.
    for column in ("age_bracket", "placement", "estimate", "ci_low", "ci_high", "coverage"):
        assert column in frame
    assert "suppressed" in frame and "Fostering" in frame and "16 and over" in frame
    last = region.fed.template(T1).n_cells - 1
    assert f"\n{last} " in frame and f"\n{last + 1} " not in frame  # every cell, one row each
    # The provenance.
    assert "'on_date': '2025-03-31'" in attrs
    assert "'privacy_spent': {'epsilon': 0.5}" in attrs
    for org in region_lib.COUNCILS:
        assert org in attrs
    assert "'verification': 'verified'" in attrs  # checked against the nodes' keys
    # The chart: saved where asked, and shown.
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and chart.stat().st_size > 10_000
    assert "image/png" in json.dumps([o.get("data", {}) for o in code[-1].outputs])
    assert not (NOTEBOOK.parent / "chart.png").exists()
