"""The client's typed query results: rows, CSV, JSON shape, and pandas only when installed."""

from __future__ import annotations

from pathlib import Path

from tessera.client_types import Cell, NodeReport, QueryResult


def _result(per_node: bool) -> QueryResult:
    cells = [
        Cell({"age": "0-4", "place": "Foster"}, 12.0, (8.0, 16.0), False),
        Cell({"age": "5+", "place": "Foster"}, 0.0, (0.0, 5.0), True),
    ]
    return QueryResult(
        query_id="q-1",
        template="cla",
        template_digest="a" * 64,
        mode="per_node" if per_node else "combined",
        released=True,
        withheld_reason="",
        statistic="count_units",
        dimensions=["age", "place"],
        nodes=[
            NodeReport("Leeds", "OK", "", True, 3.0),
            NodeReport(
                "York", "DEADLINE_EXCEEDED", "no answer within the deadline of 1 s", False, 1000.0
            ),
        ],
        privacy_spent={"epsilon": 0.5},
        cells=cells,
        per_node={"Leeds": cells[:1]} if per_node else None,
    )


def test_rows_csv_and_the_demo_json_shape(tmp_path: Path) -> None:
    r = _result(per_node=False)
    assert r.nodes_answered == ["Leeds"]
    assert r.nodes_missing == {"York": "DEADLINE_EXCEEDED: no answer within the deadline of 1 s"}
    assert r.to_rows()[0] == {
        "age": "0-4",
        "place": "Foster",
        "estimate": 12.0,
        "ci95_low": 8.0,
        "ci95_high": 16.0,
        "coverage": 0.95,
        "suppressed": False,
    }
    text = r.to_csv(tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == text
    assert text.splitlines() == [
        "age,place,estimate,ci95_low,ci95_high,coverage,suppressed",
        "0-4,Foster,12.0,8.0,16.0,0.95,False",
        "5+,Foster,0.0,0.0,5.0,0.95,True",
    ]
    assert r.to_json_dict() == {
        "template": "cla",
        "mode": "combined",
        "nodes_answered": ["Leeds"],
        "nodes_missing": ["York"],
        "privacy_spent": {"epsilon": 0.5},
        "cells": [
            {
                "key": {"age": "0-4", "place": "Foster"},
                "estimate": 12.0,
                "ci95": [8.0, 16.0],
                "coverage": 0.95,
                "suppressed": False,
            },
            {
                "key": {"age": "5+", "place": "Foster"},
                "estimate": 0.0,
                "ci95": [0.0, 5.0],
                "coverage": 0.95,
                "suppressed": True,
            },
        ],
        "notes": [],
    }


def test_per_node_rows_say_whose_cell() -> None:
    r = _result(per_node=True)
    assert [(row["scope"], row["age"]) for row in r.to_rows()] == [
        ("combined", "0-4"),
        ("combined", "5+"),
        ("Leeds", "0-4"),
    ]
    assert r.to_csv().splitlines()[0].startswith("scope,age,place")
    assert r.to_json_dict()["per_node"] == [
        {
            "organisation": "Leeds",
            "cells": [
                {
                    "key": {"age": "0-4", "place": "Foster"},
                    "estimate": 12.0,
                    "ci95": [8.0, 16.0],
                    "coverage": 0.95,
                    "suppressed": False,
                }
            ],
        }
    ]


# Without the notebook extra, to_pandas says what to install: tests/unit/tessera/test_notebook.py.
def test_to_pandas_gives_one_row_per_cell() -> None:
    frame = _result(per_node=True).to_pandas()
    assert list(frame.columns)[:3] == ["scope", "age", "place"] and len(frame) == 3
