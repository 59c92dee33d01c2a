"""A result in a notebook and on a board paper, from hand-made results: the DataFrame
keeps estimates, intervals, coverage and the suppressed flag (a suppressed cell is NaN,
never 0) with the provenance in attrs; the chart marks suppressed cells and names the
cost; the HTML report holds everything and loads nothing."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from tessera import notebook
from tessera.client_types import Cell, NodeReport, QueryResult
from tessera.report.html import query_report

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")


def _result(**over: object) -> QueryResult:
    cells = [
        Cell({"placement": "Fostering"}, 120.0, (110.0, 130.0), False),
        Cell({"placement": "Residential"}, 0.0, (0.0, 5.0), True),
        Cell({"placement": "Other"}, 14.0, (6.0, 22.0), False),
    ]
    r = QueryResult(
        query_id="q-1",
        template="cla-by-placement",
        template_digest="ab" * 32,
        mode="combined",
        released=True,
        withheld_reason="",
        statistic="count_units",
        dimensions=["placement"],
        nodes=[
            NodeReport("Leeds", "OK", "", True, 12.0),
            NodeReport("Bradford", "OK", "", True, 15.0),
            NodeReport("Wakefield", "UNAVAILABLE", "node down", False, 0.0),
        ],
        privacy_spent={"epsilon": 0.5},
        cells=cells,
        params={"on_date": "2025-03-31"},
        template_title="Children looked after <by placement>",
    )
    return dataclasses.replace(r, **over)  # type: ignore[arg-type]


def test_dataframe_keeps_cells_and_provenance() -> None:
    df = _result().to_pandas()
    assert list(df.columns) == [
        "placement",
        "estimate",
        "ci_low",
        "ci_high",
        "coverage",
        "suppressed",
    ]
    assert df["estimate"].iloc[0] == 120.0
    assert math.isnan(df["estimate"].iloc[1]) and bool(df["suppressed"].iloc[1])
    assert (df["ci_low"].iloc[1], df["ci_high"].iloc[1]) == (0.0, 5.0)
    assert set(df["coverage"]) == {0.95}  # not reported: the level releases are built for
    a = df.attrs
    assert a["query_id"] == "q-1" and a["params"] == {"on_date": "2025-03-31"}
    assert a["nodes_answered"] == ["Leeds", "Bradford"]
    assert a["nodes_missing"] == {"Wakefield": "UNAVAILABLE: node down"}
    assert a["privacy_spent"] == {"epsilon": 0.5}
    assert a["verification"] == "not verified"


def test_stated_coverage_and_verification_are_read_when_present() -> None:
    @dataclasses.dataclass(frozen=True)
    class CoveredCell(Cell):
        coverage: float = 0.9

    @dataclasses.dataclass(frozen=True)
    class Verified:
        ok: bool
        nodes: tuple[str, ...]
        problems: tuple[str, ...] = ()

        def summary(self) -> str:
            return "VERIFIED: 2 node(s)"

    r = _result(cells=[CoveredCell({"placement": "Fostering"}, 3.0, (1.0, 5.0), False)])
    object.__setattr__(r, "verification", Verified(True, ("Leeds", "Bradford")))
    df = r.to_pandas()
    assert df["coverage"].iloc[0] == 0.9
    assert df.attrs["verification"] == "verified"
    assert df.attrs["verification_detail"] == "VERIFIED: 2 node(s)"
    assert df.attrs["node_verification"] == {"Leeds": "verified", "Bradford": "verified"}


def test_per_node_rows_are_scoped() -> None:
    r = _result(mode="per_node", per_node={"Leeds": _result().cells[:1]})
    df = r.to_pandas()
    assert list(df["scope"]) == ["combined"] * 3 + ["Leeds"]


def test_plot_marks_suppressed_cells_and_names_the_cost() -> None:
    fig = _result().plot()
    ax = fig.axes[0]
    assert "Children looked after <by placement>" in ax.get_title(loc="left")
    assert "epsilon 0.5" in ax.get_title(loc="left")
    texts = [t.get_text().strip() for t in ax.texts]
    assert texts == ["suppressed"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["Fostering", "Residential", "Other"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1  # the suppressed cell: an outline, not a bar at zero
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "estimate with 95% interval"


def test_withheld_result_plots_the_reason() -> None:
    fig = _result(released=False, withheld_reason="below quorum", cells=[]).plot()
    assert "withheld: below quorum" in fig.axes[0].texts[0].get_text()


def test_report_page_holds_everything_and_loads_nothing() -> None:
    page = query_report(_result(), None)
    assert "Children looked after &lt;by placement&gt;" in page  # escaped
    assert "<by placement>" not in page
    for needle in (
        "parameter on_date",
        "2025-03-31",
        "<svg",
        "suppressed",
        "110 to 130 (95%)",
        "Wakefield",
        "missing",
        "node down",
        "Not verified",
        "epsilon = 0.5",
        "How to read this",
        "Content-Security-Policy",
    ):
        assert needle in page, needle
    assert "<script" not in page
    # Nothing a browser would fetch: src/href/url() point only within the page (#id).
    outside = r"""(src|href)\s*=\s*["'](?!#)|url\((?!#)|@import"""
    assert not re.search(outside, page, re.IGNORECASE)
    assert "url(#" in page  # the check above does see the chart's references


def test_report_for_a_withheld_result() -> None:
    page = query_report(_result(released=False, withheld_reason="2 of 3 answered", cells=[]), None)
    assert "Nothing was released: 2 of 3 answered" in page and "<svg" not in page


def test_verification_outcomes() -> None:
    assert notebook.verification(_result())[0] == "not verified"
    r = _result()
    object.__setattr__(r, "verification", {"ok": False, "problems": ["Leeds: signature"]})
    assert notebook.verification(r) == ("failed", "Leeds: signature")


@pytest.mark.parametrize("missing", ["pandas", "matplotlib"])
def test_without_the_extra_it_says_what_to_install(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    call = _result().to_pandas if missing == "pandas" else _result().plot
    with pytest.raises(ImportError, match=rf"tessera\[notebook\].*pip install {missing}"):
        call()
    assert _result().to_rows()  # the rest still works


def test_from_env_names_what_is_missing() -> None:
    from tessera.client import Client

    with pytest.raises(ValueError, match="TESSERA_COORDINATOR, TESSERA_TLS_DIR, TESSERA_IDENTITY"):
        Client.from_env({})
    with pytest.raises(ValueError, match=r"set TESSERA_IDENTITY$"):
        Client.from_env({"TESSERA_COORDINATOR": "localhost:1", "TESSERA_TLS_DIR": "/nowhere"})
