"""`tessera node ingest`, registered under a node group as the lead will."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tessera.cli.ingest_cmd import register_ingest
from tessera.config import ConfigError
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
            "--max-refused",
            "50",
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
        ["--dataset", "ssda903", "--table", "header=h.csv"],
        ["--config", "c.toml", "--data-dir", "d", "--dataset", "ssda903"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2


def test_a_data_dir_without_tables_is_refused_before_any_work() -> None:
    args = parse(["--data-dir", "d", "--dataset", "ssda903"])
    with pytest.raises(ConfigError, match="--table"):
        args.handler(args, {})


def test_dry_run_prints_the_whole_report_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = valid_file_set(tmp_path / "src", DATASETS["police"], rows=3)
    data = tmp_path / "data"
    args = parse(
        [
            "--data-dir",
            str(data),
            "--dataset",
            "police",
            "--table",
            f"incidents={files['incidents'][0]}",
            "--dry-run",
        ]
    )
    assert args.handler(args, {}) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing published" in out
    assert "rows refused: 0.00% of rows read" in out
    assert "3 read" in out
    assert not list((data / "police").glob("v*"))


def test_all_refused_and_over_threshold_exit_2_and_publish_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    bad = write_text(
        tmp_path / "bad.csv",
        "person_id,incident_date,incident_type\nP1,2024-01-01,NOPE\nP2,2024-01-01,NOPE\n",
    )
    some = write_text(
        tmp_path / "some.csv",
        "person_id,incident_date,incident_type\n"
        + "".join(f"P{i},2024-01-01,YOUTH_OFFENCE\n" for i in range(9))
        + "P9,2024-01-01,NOPE\n",
    )
    for path, why in ((bad, "no usable row remains"), (some, "over the threshold of 5.00%")):
        args = parse(
            ["--data-dir", str(data), "--dataset", "police", "--table", f"incidents={path}"]
        )
        assert args.handler(args, {}) == 2
        captured = capsys.readouterr()
        assert why in captured.err
        assert "REFUSED, nothing published" in captured.out  # the whole report, to act on
        assert not list((data / "police").glob("v*"))
    args = parse(
        [
            "--data-dir",
            str(data),
            "--dataset",
            "police",
            "--table",
            f"incidents={some}",
            "--max-refused",
            "10",
        ]
    )
    assert args.handler(args, {}) == 0
    assert (data / "police" / "v1.json").exists()
    args = parse(
        [
            "--data-dir",
            str(data),
            "--dataset",
            "police",
            "--table",
            f"incidents={some}",
            "--max-refused",
            "10",
        ]
    )
    assert args.handler(args, {}) == 0
    assert "unchanged: same content as version 1" in capsys.readouterr().out
