"""Online, verified, encrypted backups of a node, and refusing restores that roll back.

A backup is one sealed file (node/vault.py, the backup subkey) holding:

- the ledger (spend, released answers, requests, audit log), copied with SQLite's
  backup API: a consistent snapshot taken while the node keeps answering, never a
  file copy (which misses what is still in the write-ahead log);
- the signed audit head, read *before* the snapshot, so it is never ahead of it;
- the node secret;
- every published dataset version (its sealed tables and its manifest), as stored.

Inside the seal, a sequence of records: ``b"F" | u32 n | JSON {"path", "size"} |
size bytes`` per file, then ``b"E" | u32 n | JSON summary``. After writing, the
backup is opened again, every chunk decrypted, the ledger's audit log verified
against the node's public key and every version's seal checked; only then is it
renamed into place.

Restore goes into a stopped node whose state folder holds no ledger: it unpacks
into a private staging folder, verifies the audit log, asks the rollback check
(node/rollback.py) whether the restored ledger is behind the node's watermark,
and only then moves the files into place (manifests last).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import struct
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tessera import audit
from tessera.clock import SystemClock, isoformat
from tessera.keys import SigningKey
from tessera.node import rollback, secret, storage, vault
from tessera.node.config import NodeConfig
from tessera.node.ingest.manifest import DATASET_NAME, VERSION_FILE, read_manifest
from tessera.node.vault import DataKey, SealedReader, SealedWriter, VaultError

LEDGER: Final = "ledger.sqlite"
_LEN: Final = struct.Struct(">I")
_PIECE: Final = 1 << 20
# Every path an archive may hold: nothing else is ever written on restore.
_STATE_FILES: Final = (LEDGER, LEDGER + ".head", secret.FILE_NAME)
_DATA_PATH: Final = re.compile(r"data/([a-z][a-z0-9_]{0,63})/(v[1-9][0-9]{0,8}\.(?:sealed|json))")


class BackupError(RuntimeError):
    """A backup or restore cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Summary:
    organisation: str
    created: str
    audit_entries: int
    versions: int
    files: int
    plain_bytes: int


def _binding(organisation: str) -> str:
    return f"backup of node {organisation}"


def _ledger_path(cfg: NodeConfig) -> Path:
    return cfg.state_dir / LEDGER


def _snapshot(ledger: Path) -> bytes:
    """A consistent copy of the live ledger, through SQLite's backup API."""
    src = sqlite3.connect(f"file:{urllib.parse.quote(str(ledger.resolve()))}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(":memory:")
        try:
            src.backup(dst)
            return dst.serialize()
        finally:
            dst.close()
    finally:
        src.close()


def _versions(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(archive path, file) for each published version: sealed file, then manifest."""
    try:
        names = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return
    for ds in names:
        folder = data_dir / ds
        if not DATASET_NAME.fullmatch(ds) or not folder.is_dir():
            continue
        for name in sorted(os.listdir(folder)):
            m = VERSION_FILE.fullmatch(name)
            if m is None or m[2] != "json" or read_manifest(folder / name) is None:
                continue
            sealed = folder / f"v{m[1]}.sealed"
            if sealed.is_file():
                yield f"data/{ds}/{sealed.name}", sealed
                yield f"data/{ds}/{name}", folder / name


def _record(out: SealedWriter, tag: bytes, meta: dict[str, Any]) -> None:
    body = json.dumps(meta, sort_keys=True).encode()
    out.write(tag + _LEN.pack(len(body)) + body)


def _add_bytes(out: SealedWriter, path: str, data: bytes) -> None:
    _record(out, b"F", {"path": path, "size": len(data)})
    out.write(data)


def _add_file(out: SealedWriter, path: str, source: Path) -> None:
    with source.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        _record(out, b"F", {"path": path, "size": size})
        left = size
        while left:
            piece = f.read(min(_PIECE, left))
            if not piece:
                raise BackupError(f"{source} shrank while it was being backed up")
            out.write(piece)
            left -= len(piece)


def backup(cfg: NodeConfig, out: Path, key: DataKey) -> Summary:
    """Write a verified, encrypted backup of the node to ``out`` (must not exist)."""
    ledger = _ledger_path(cfg)
    if not ledger.is_file():
        raise BackupError(f"{ledger}: no ledger to back up")
    if out.exists():
        raise BackupError(f"{out} already exists: choose a new file name")
    head_path = audit.default_head_path(ledger)
    # The head first: then it can only be behind the snapshot, never ahead of it.
    head = head_path.read_bytes() if head_path.is_file() else None
    snapshot = _snapshot(ledger)
    node_secret = secret.load_or_create(cfg.state_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    files = versions = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            w = SealedWriter(f, key, vault.KIND_BACKUP, _binding(cfg.organisation))
            _add_bytes(w, f"state/{LEDGER}", snapshot)
            del snapshot
            files += 1
            if head is not None:
                _add_bytes(w, f"state/{LEDGER}.head", head)
                files += 1
            _add_bytes(w, f"state/{secret.FILE_NAME}", node_secret)
            files += 1
            for path, source in _versions(cfg.data_dir):
                _add_file(w, path, source)
                files += 1
                versions += path.endswith(".json")
            created = isoformat(SystemClock().now())
            _record(w, b"E", {"organisation": cfg.organisation, "created": created})
            plain = w.plain_bytes
            w.close()
            f.flush()
            os.fsync(f.fileno())
        summary = verify(cfg, tmp, key)
        if (summary.files, summary.versions) != (files, versions):
            raise BackupError(f"{tmp}: the backup does not hold what was written")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    vault.fsync_dir(out.parent)
    return Summary(
        summary.organisation, summary.created, summary.audit_entries, versions, files, plain
    )


def _read_records(
    src: SealedReader,
) -> Iterator[tuple[str, dict[str, Any], Iterator[bytes] | None]]:
    while True:
        tag = src.read_exact(1)
        (n,) = _LEN.unpack(src.read_exact(_LEN.size))
        if n > 1 << 20:
            raise VaultError("backup: oversized record")
        meta = json.loads(src.read_exact(n))
        if tag == b"E":
            if not src.at_end():
                raise VaultError("backup: data after the end record")
            yield "E", meta, None
            return
        if tag != b"F":
            raise VaultError("backup: unknown record")
        size = int(meta["size"])

        def pieces(left: int = size) -> Iterator[bytes]:
            while left:
                piece = src.read_exact(min(_PIECE, left))
                left -= len(piece)
                yield piece

        yield "F", meta, pieces()


def _target(root: Path, path: str) -> Path:
    if path.startswith("state/") and path[len("state/") :] in _STATE_FILES:
        return root / path
    if _DATA_PATH.fullmatch(path):
        return root / path
    raise VaultError(f"backup: unexpected entry {path!r}")


def _unpack(cfg: NodeConfig, archive: Path, key: DataKey, root: Path) -> dict[str, Any]:
    """Decrypt ``archive`` into ``root`` (state/ and data/), checking every byte."""
    end: dict[str, Any] | None = None
    with archive.open("rb") as f:
        src = SealedReader(f, key, vault.KIND_BACKUP, _binding(cfg.organisation), str(archive))
        seen: set[str] = set()
        for _tag, meta, pieces in _read_records(src):
            if pieces is None:
                end = meta
                break
            path = str(meta["path"])
            if path in seen:
                raise VaultError(f"backup: {path} appears twice")
            seen.add(path)
            target = _target(root, path)
            vault.private_dir(target.parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                for piece in pieces:
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
    if end is None or f"state/{LEDGER}" not in seen:
        raise VaultError(f"{archive}: not a complete backup")
    end["files"] = len(seen)
    end["versions"] = sum(1 for p in seen if p.startswith("data/") and p.endswith(".json"))
    return end


def _check_unpacked(cfg: NodeConfig, root: Path, key: DataKey) -> int:
    """Verify the unpacked ledger's audit log and every version's seal; the entry count."""
    ledger = root / "state" / LEDGER
    public = SigningKey.load(cfg.signing_key).public
    head = audit.default_head_path(ledger)
    result = audit.verify(ledger, public, head, check_head=head.is_file())
    if not result.ok:
        raise BackupError(f"the backed-up audit log does not verify: {result.problems[0]}")
    data = root / "data"
    if data.is_dir():
        for ds in sorted(os.listdir(data)):
            for name in sorted(os.listdir(data / ds)):
                m = VERSION_FILE.fullmatch(name)
                if m is None or m[2] != "sealed":
                    continue
                # Decrypt through to the end: every chunk authenticates.
                with (data / ds / name).open("rb") as f:
                    src = storage.open_stream(f, key, ds, int(m[1]))
                    while src.read(_PIECE):
                        pass
    return result.entries


def verify(cfg: NodeConfig, archive: Path, key: DataKey) -> Summary:
    """Open ``archive``, decrypt all of it and verify what it holds."""
    with tempfile.TemporaryDirectory(prefix=".tessera-verify-", dir=archive.parent) as tmp:
        end = _unpack(cfg, archive, key, Path(tmp))
        entries = _check_unpacked(cfg, Path(tmp), key)
    return Summary(
        str(end.get("organisation")),
        str(end.get("created")),
        entries,
        int(end["versions"]),
        int(end["files"]),
        0,
    )


def restore(cfg: NodeConfig, archive: Path, key: DataKey) -> Summary:
    """Restore ``archive`` into the node's (stopped, empty) state folder and its data
    folder. Refuses a backup behind the node's rollback watermark."""
    state = cfg.state_dir
    present = [n for n in _STATE_FILES if (state / n).exists()]
    present += [n for n in os.listdir(state) if n.startswith(LEDGER)] if state.is_dir() else []
    if present:
        raise BackupError(
            f"{state} already holds {sorted(set(present))[0]}: stop the node and move its "
            "state folder aside before restoring (a restore never overwrites a ledger)"
        )
    vault.private_dir(state)
    vault.private_dir(cfg.data_dir)
    staging = Path(tempfile.mkdtemp(prefix=".tessera-restore-", dir=state.parent))
    try:
        end = _unpack(cfg, archive, key, staging)
        entries = _check_unpacked(cfg, staging, key)
        staged_ledger = staging / "state" / LEDGER
        # A backup older than what this node already paid out would roll spend back.
        rollback.check_not_rolled_back(cfg, staged_ledger)
        moves = _plan_data(cfg, staging)
        for name in sorted(os.listdir(staging / "state")):
            os.replace(staging / "state" / name, state / name)
        vault.fsync_dir(state)
        # Sealed files first, manifests last: a version appears whole or not at all.
        for src, dst in sorted(moves, key=lambda m: m[1].suffix == ".json"):
            vault.private_dir(dst.parent)
            os.replace(src, dst)
            vault.fsync_dir(dst.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Summary(
        str(end.get("organisation")),
        str(end.get("created")),
        entries,
        int(end["versions"]),
        int(end["files"]),
        0,
    )


def _plan_data(cfg: NodeConfig, staging: Path) -> list[tuple[Path, Path]]:
    """Version files to move into the data folder; ones already there must be identical."""
    moves: list[tuple[Path, Path]] = []
    data = staging / "data"
    if not data.is_dir():
        return moves
    for ds in sorted(os.listdir(data)):
        for name in sorted(os.listdir(data / ds)):
            src, dst = data / ds / name, cfg.data_dir / ds / name
            if dst.exists():
                if not _same(src, dst):
                    raise BackupError(
                        f"{dst} exists and differs from the backup's copy: move it aside first"
                    )
                continue
            moves.append((src, dst))
    return moves


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and _digest(a) == _digest(b)


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(_PIECE):
            h.update(piece)
    return h.digest()
