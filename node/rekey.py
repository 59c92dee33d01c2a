"""Rotating the data key: re-seal every dataset version and every sealed ledger field
under a new key, in place, with the node stopped.

Each version is decrypted with the old key and sealed again under the new one into a
temporary file, fsynced, then renamed over the old file: a crash leaves each file
whole under one key or the other. The ledger's sealed fields are rewritten in one
transaction. A file or field already under the new key is left alone, so an
interrupted rotation is finished by running it again with the same two keys.
Nothing is ever written in plaintext; spend, audit and manifests are not touched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tessera.node import storage, vault
from tessera.node.config import NodeConfig
from tessera.node.ingest.manifest import DATASET_NAME, VERSION_FILE, ingest_lock
from tessera.node.vault import DataKey, LedgerSealer, VaultError

_HEADER = struct.Struct(">8s1s8s16sI")


@dataclass(frozen=True)
class Rotated:
    versions: int
    fields: int
    already: int


def sealed_key_id(path: Path) -> str | None:
    """The key id in a sealed file's header (None if it is not a sealed file)."""
    with path.open("rb") as f:
        header = f.read(_HEADER.size)
    if len(header) != _HEADER.size:
        return None
    magic, _, key_id, _, _ = _HEADER.unpack(header)
    return key_id.hex() if magic == vault.MAGIC else None


def _reseal_version(path: Path, old: DataKey, new: DataKey, dataset: str, version: int) -> None:
    tmp = path.with_name(f".{path.name}.rekey.tmp")
    tmp.unlink(missing_ok=True)
    con = storage.open_sealed(path, old, dataset, version)
    try:
        storage.seal_to(tmp, con, new, dataset, version)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.replace(tmp, path)
    vault.fsync_dir(path.parent)


def _versions(cfg: NodeConfig, old: DataKey, new: DataKey) -> tuple[int, int]:
    done = already = 0
    if not cfg.data_dir.is_dir():
        return done, already
    for ds in sorted(os.listdir(cfg.data_dir)):
        folder = cfg.data_dir / ds
        if not DATASET_NAME.fullmatch(ds) or not folder.is_dir():
            continue
        with ingest_lock(folder):  # no ingest publishes meanwhile
            for name in sorted(os.listdir(folder)):
                m = VERSION_FILE.fullmatch(name)
                if m is None or m[2] != "sealed":
                    continue
                key_id = sealed_key_id(folder / name)
                if key_id == new.key_id:
                    already += 1
                    continue
                if key_id != old.key_id:
                    raise VaultError(
                        f"{folder / name}: sealed under data key {key_id}, which is neither "
                        f"the old key {old.key_id} nor the new key {new.key_id}"
                    )
                _reseal_version(folder / name, old, new, ds, int(m[1]))
                done += 1
    return done, already


def _ledger(ledger: Path, old: DataKey, new: DataKey) -> tuple[int, int]:
    if not ledger.is_file():
        return 0, 0
    was, now = LedgerSealer(old), LedgerSealer(new)
    con = sqlite3.connect(ledger, isolation_level=None)
    done = already = 0
    try:
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        try:
            rows = con.execute("SELECT answer_key, payload, params FROM releases").fetchall()
            for answer_key, payload, params in rows:
                try:
                    now.open_payload(answer_key, payload)
                    already += 1
                    continue
                except VaultError:
                    pass
                plain = was.open_payload(answer_key, payload)
                values = was.open_params(answer_key, params)
                con.execute(
                    "UPDATE releases SET payload = ?, params = ? WHERE answer_key = ?",
                    (
                        now.seal_payload(answer_key, plain),
                        now.seal_params(answer_key, values),
                        answer_key,
                    ),
                )
                done += 1
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return done, already


def rotate(cfg: NodeConfig, old: DataKey, new: DataKey) -> Rotated:
    """Re-seal the node's versions and ledger fields from ``old`` to ``new``.
    The node must be stopped; afterwards point its config at the new key."""
    if old == new:
        raise VaultError("the new data key is the key already in use")
    versions, already_v = _versions(cfg, old, new)
    fields, already_f = _ledger(cfg.state_dir / "ledger.sqlite", old, new)
    return Rotated(versions, fields, already_v + already_f)


def check_key(data_dir: Path, ledger: Path, key: DataKey) -> None:
    """Raise VaultError (one line) unless ``key`` is the key the node's versions and
    ledger are sealed under: checked at start, so a wrong key stops the node at once
    instead of failing its first answers. Reads only headers and one ledger row."""
    if data_dir.is_dir():
        for ds in sorted(os.listdir(data_dir)):
            folder = data_dir / ds
            if not DATASET_NAME.fullmatch(ds) or not folder.is_dir():
                continue
            for name in sorted(os.listdir(folder)):
                m = VERSION_FILE.fullmatch(name)
                if m is None or m[2] != "sealed":
                    continue
                key_id = sealed_key_id(folder / name)
                if key_id is not None and key_id != key.key_id:
                    raise VaultError(
                        f"{folder / name}: sealed under data key {key_id}, but the configured "
                        f"key is {key.key_id}; check [encryption] in the node config"
                    )
    if ledger.is_file():
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(ledger.resolve()))}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT answer_key, payload FROM releases LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            row = None  # a new ledger: no releases table yet
        finally:
            con.close()
        if row is not None:
            if not vault.is_sealed_field(row[1]):
                raise VaultError(
                    f"{ledger}: its stored answers are not encrypted (a ledger from before "
                    "encryption at rest); with the node stopped, run `tessera node "
                    "seal-ledger --config <node config>`"
                )
            try:
                LedgerSealer(key).open_payload(row[0], row[1])
            except VaultError:
                raise VaultError(
                    f"{ledger}: its stored answers are not sealed under the configured data "
                    f"key {key.key_id}; check [encryption] in the node config"
                ) from None


def seal_plaintext_fields(ledger: Path, key: DataKey) -> int:
    """Seal the stored answers and parameters of a ledger written before encryption at
    rest (an explicit operator step, node stopped: a running node never accepts an
    unsealed value, which anyone with write access to the file could have planted).
    Returns how many releases were sealed; already sealed ones are left alone."""
    if not ledger.is_file():
        raise VaultError(f"{ledger}: no ledger")
    sealer = LedgerSealer(key)
    con = sqlite3.connect(ledger, isolation_level=None)
    done = 0
    try:
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        try:
            rows = con.execute("SELECT answer_key, payload, params FROM releases").fetchall()
            for answer_key, payload, params in rows:
                if vault.is_sealed_field(payload):
                    sealer.open_payload(answer_key, payload)  # under this key, or refuse
                    continue
                text = params if isinstance(params, str) else bytes(params).decode()
                con.execute(
                    "UPDATE releases SET payload = ?, params = ? WHERE answer_key = ?",
                    (
                        sealer.seal_payload(answer_key, bytes(payload)),
                        sealer.seal_params(answer_key, json.loads(text)),
                        answer_key,
                    ),
                )
                done += 1
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if done:
            # Rewrite the file and empty the WAL, so no freed page keeps the plaintext.
            con.execute("VACUUM")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return done
