"""`tessera node ingest`, registered under a node group as the lead will."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tessera.cli.ingest_cmd import register_ingest
from tessera.schemas import DATASETS
from tests.unit.node.helpers import valid_file_set, write_text


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tessera")
    groups = parser.add_subparsers(dest="command", required=True)
    node = groups.add_parser("node")
    register_ingest(node.add_subparsers(dest="node_command", required=True))
    return parser.parse_args(["node", "ingest", *argv])


def test_ingest_prints_the_report_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = valid_file_set(tmp_path / "src", DATASETS["ssda903"], rows=3)
    extra = write_text(
        tmp_path / "more.csv",
        "CHILD,DECOM,LS,CIN,PLACE\nC9,01/04/2020,C2,N1,U1\nC10,01/04/2020,C2,N1,nope\n",
    )
    args = parse(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--dataset",
            "ssda903",
            "--table",
            f"header={files['header'][0]}",
            "--table",
            f"episodes={files['episodes'][0]}",
            "--table",
            f"episodes={extra}",
        ]
    )
    assert args.handler(args, {}) == 0
    out = capsys.readouterr().out
    assert "Dataset ssda903: version 1 written" in out
    assert "line 3: PLACE: unknown code" in out
    assert (tmp_path / "data" / "ssda903" / "v1.json").exists()


def test_ingest_error_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = valid_file_set(tmp_path / "src", DATASETS["ssda903"])
    args = parse(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--dataset",
            "ssda903",
            "--table",
            f"header={files['header'][0]}",
        ]
    )
    assert args.handler(args, {}) == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err
    assert "required table episodes has no file" in err
    assert not (tmp_path / "data" / "ssda903").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "d", "--dataset", "ssda903", "--table", "header"],
        ["--data-dir", "d", "--dataset", "nope", "--table", "header=h.csv"],
        ["--data-dir", "d", "--dataset", "ssda903"],
        ["--dataset", "ssda903", "--table", "header=h.csv"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
