"""Encryption at rest: dataset versions and the ledger's stored answers and parameters
are unreadable without the node's data key (by `strings`, by stock DuckDB and SQLite)
and readable with it; state is private (folders 0700, files 0600); the key comes from
a file, an environment variable or a command, and a bad key source is one clear line."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from tessera import config, schemas
from tessera.cli.main import main as cli
from tessera.clock import FixedClock
from tessera.keys import SigningKey
from tessera.node import vault
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import ingest_dataset
from tessera.node.ledger import Ledger, NewRelease, RequestRecord
from tessera.node.vault import DataKey, EncryptionConfig, VaultError
from tests.support import federation as fedlib

NOW = datetime(2026, 4, 1, tzinfo=UTC)
# Values that must never be readable on disk without the key.
CHILD_IDS = [f"CHILDSECRET{i:04d}" for i in range(40)]
NHS_NUMBER = "9434765919"


def _strings(path: Path) -> str:
    done = subprocess.run(["strings", "-n", "6", str(path)], capture_output=True, check=True)
    return done.stdout.decode("latin-1")


def _all_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


def _write_cin(folder: Path) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    children = ["child_id,dob,sex,upn,nhs_number"] + [
        f"{c},2015-02-01,{1 + i % 2},,{NHS_NUMBER if i == 0 else ''}"
        for i, c in enumerate(CHILD_IDS)
    ]
    referrals = ["child_id,referral_date,referral_source,primary_need,nfa"] + [
        f"{c},2025-05-01,1A,N1,false" for c in CHILD_IDS
    ]
    files = {
        "children": "\n".join(children) + "\n",
        "referrals": "\n".join(referrals) + "\n",
        "cin_episodes": "child_id,start_date,end_date,primary_need\n",
        "cp_plans": "child_id,start_date,end_date,initial_category\n",
    }
    out = {}
    for name, text in files.items():
        (folder / f"{name}.csv").write_text(text)
        out[name] = [folder / f"{name}.csv"]
    return out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    cin = schemas.dataset("cin")
    assert cin is not None
    ingest_dataset(cin, _write_cin(tmp_path / "src"), tmp_path / "data", NOW)
    return tmp_path / "data"


def test_versions_are_unreadable_without_the_key_and_readable_with_it(data_dir: Path) -> None:
    files = _all_files(data_dir)
    assert {p.name for p in files} >= {"v1.sealed", "v1.json"}
    for path in files:
        text = _strings(path)
        assert "CHILDSECRET" not in text, path
        assert NHS_NUMBER not in text, path
    sealed = data_dir / "cin" / "v1.sealed"
    # Stock DuckDB (no key) cannot open it at all.
    with pytest.raises(duckdb.Error):
        duckdb.connect(str(sealed), read_only=True)
    # With the key it opens, in memory, with every row.
    with DatasetCatalog(data_dir) as catalog:
        latest = catalog.latest("cin")
        assert latest is not None
        cur = catalog.connect(latest).cursor()
        ids = [r[0] for r in cur.execute("SELECT child_id FROM children ORDER BY 1").fetchall()]
        nhs = cur.execute("SELECT count(*) FROM children WHERE nhs_number IS NOT NULL").fetchall()
        cur.close()
    assert ids == CHILD_IDS
    assert nhs == [(1,)]
    # And without it (another key), the catalog refuses with a one-line reason.
    with DatasetCatalog(data_dir, DataKey.generate()) as catalog:
        latest = catalog.latest("cin")
        assert latest is not None
        with pytest.raises(VaultError, match="sealed under data key") as e:
            catalog.connect(latest)
        assert "\n" not in str(e.value)


def test_ingest_leaves_no_plaintext_copy_and_keeps_state_private(
    tmp_path: Path, data_dir: Path
) -> None:
    for path in _all_files(tmp_path):
        if path.parent == tmp_path / "src":
            continue  # the operator's own source files
        assert "CHILDSECRET" not in _strings(path), path
    folder = data_dir / "cin"
    for d in (data_dir, folder):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # The manifest says how many rows, never what they hold.
    assert "CHILDSECRET" not in (folder / "v1.json").read_text()


def _ledger(path: Path, key: DataKey, cfg_key: SigningKey) -> Ledger:
    return Ledger(
        path,
        cfg_key,
        FixedClock(NOW),
        accountant_of=lambda ds: "population:children",
        sealer=vault.LedgerSealer(key),
    )


def test_ledger_answers_and_parameters_are_sealed(tmp_path: Path) -> None:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    key = DataKey.generate()
    path = cfg.state_dir / "ledger.sqlite"
    ledger = _ledger(path, key, fed.node_key)
    payload = b'{"figures":"PAYLOADSECRET"}'
    release = NewRelease(
        answer_key="a" * 64,
        dataset="cin",
        version=1,
        template_digest="d" * 64,
        params={"period_start": "PARAMSECRET"},
        kind="rho",
        cost=0.125,
        payload=payload,
        accountant="population:children",
        rho=0.125,
    )
    req = RequestRecord("r1", "h" * 64, "analyst", "nonce-1")
    # The audit entry stays readable with the node's public key alone (it names the
    # template and the parameters, never record-level values); the release is sealed.
    body = {
        "actor": "analyst",
        "template_digest": "d" * 64,
        "params": {"period_start": "2025-04-01"},
        "outcome": "answered",
        "mode": "combined",
        "message": "ok",
    }
    committed = ledger.commit(req, "a" * 64, release, cfg.policy("population:children"), body)
    assert committed.payload == payload
    assert ledger.stored_answer("a" * 64) == payload
    ledger.close()

    assert stat.S_IMODE(os.stat(cfg.state_dir).st_mode) == 0o700
    for p in cfg.state_dir.iterdir():
        if p.name.startswith("ledger.sqlite"):
            assert stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0, p
        text = _strings(p)
        assert "PAYLOADSECRET" not in text and "PARAMSECRET" not in text, p
    # Stock SQLite opens the ledger (spend must stay checkable) but sees only ciphertext.
    with sqlite3.connect(path) as con:
        stored, params = con.execute("SELECT payload, params FROM releases").fetchone()
    assert b"PAYLOADSECRET" not in bytes(stored) and b"PARAMSECRET" not in bytes(params)
    # The right key reads it back; another key is refused, never silently wrong.
    again = _ledger(path, key, fed.node_key)
    assert again.stored_answer("a" * 64) == payload
    again.close()
    wrong = _ledger(path, DataKey.generate(), fed.node_key)
    with pytest.raises(VaultError, match="does not open"):
        wrong.stored_answer("a" * 64)
    wrong.close()


def test_key_sources_file_env_and_command_give_the_same_key(tmp_path: Path) -> None:
    key = DataKey.generate()
    path = tmp_path / "keys" / "data.key"
    path.parent.mkdir()
    vault.write_key_file(path, key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    env = {"MY_KEY": key.to_text()}
    command = (sys.executable, "-c", f"print(open({str(path)!r}).read())")
    for cfg in (
        EncryptionConfig(key_file=path),
        EncryptionConfig(key_env="MY_KEY"),
        EncryptionConfig(key_command=command),
    ):
        assert vault.load_key(cfg, env, "node.toml") == key
    assert "data" not in repr(key) and key.to_text() not in repr(key)


@pytest.mark.parametrize(
    ("cfg", "env", "fragment"),
    [
        (EncryptionConfig(key_env="NOPE"), {}, "encryption.key_env: environment variable NOPE"),
        (EncryptionConfig(key_env="BAD"), {"BAD": "zz"}, "encryption.key_env (BAD) does not"),
        (
            EncryptionConfig(key_command=(sys.executable, "-c", "raise SystemExit(3)")),
            {},
            "encryption.key_command: ",
        ),
        (EncryptionConfig(), {}, "no data key: set encryption.key_file"),
    ],
)
def test_bad_key_sources_are_one_line_naming_the_setting(
    cfg: EncryptionConfig, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(VaultError) as e:
        vault.load_key(cfg, env, "node.toml")
    assert fragment in str(e.value)
    assert str(e.value).startswith("node.toml: ") and "\n" not in str(e.value)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.key"
    vault.write_key_file(path, DataKey.generate())
    os.chmod(path, 0o644)
    with pytest.raises(VaultError, match=r"readable by others.*chmod 600"):
        vault.load_key(EncryptionConfig(key_file=path), {}, "node.toml")


def test_keygen_writes_a_private_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data.key"
    assert cli(["node", "keygen", "--out", str(out)], {}) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    key = vault.load_key(EncryptionConfig(key_file=out), {}, "x")
    assert key.key_id in capsys.readouterr().out
    before = out.read_bytes()
    assert cli(["node", "keygen", "--out", str(out)], {}) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_a_node_with_a_missing_key_file_stops_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    missing = tmp_path / "nowhere" / "data.key"
    path = tmp_path / "node.toml"
    path.write_text(config.dump(dataclasses.replace(cfg, encryption=EncryptionConfig(missing))))
    from tessera.node import main as node_main

    assert node_main.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "encryption.key_file" in err and str(missing) in err
    assert len(err.splitlines()) <= 2
    assert not (cfg.state_dir / "ledger.sqlite").exists()


def test_a_ledger_from_before_encryption_is_refused_until_sealed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    key = vault.default_key()
    path = cfg.state_dir / "ledger.sqlite"
    ledger = _ledger(path, key, fed.node_key)
    release = NewRelease(
        "b" * 64, "cin", 1, "d" * 64, {"p": 1}, "rho", 0.1, b"OLDANSWER", "population:children", 0.1
    )
    body = {
        "actor": "a",
        "template_digest": "d" * 64,
        "params": {"p": 1},
        "outcome": "answered",
        "mode": "combined",
        "message": "",
    }
    ledger.commit(
        RequestRecord("r", "h" * 64, "a", "n"),
        "b" * 64,
        release,
        cfg.policy("population:children"),
        body,
    )
    ledger.close()
    with sqlite3.connect(path) as con:  # as an older node wrote it: in plaintext
        con.execute("UPDATE releases SET payload = ?, params = ?", (b"OLDANSWER", '{"p": 1}'))
    from tessera.node import rekey

    with pytest.raises(VaultError, match="seal-ledger"):
        rekey.check_key(cfg.data_dir, path, key)
    again = _ledger(path, key, fed.node_key)
    with pytest.raises(VaultError, match="not sealed"):  # never served unsealed
        again.stored_answer("b" * 64)
    again.close()
    config_path = tmp_path / "node.toml"
    config_path.write_text(config.dump(cfg))
    assert cli(["node", "seal-ledger", "--config", str(config_path)]) == 0
    assert "sealed 1 stored answers" in capsys.readouterr().out
    assert "OLDANSWER" not in _strings(path)
    rekey.check_key(cfg.data_dir, path, key)
    sealed = _ledger(path, key, fed.node_key)
    assert sealed.stored_answer("b" * 64) == b"OLDANSWER"
    sealed.close()
    assert cli(["node", "seal-ledger", "--config", str(config_path)]) == 0
    assert "sealed 0 stored answers" in capsys.readouterr().out
