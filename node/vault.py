"""Encryption at rest: the node's data key, sealed files and sealed ledger fields.

One 32-byte *data key* per node, held outside the state and data folders (a key
file, an environment variable, or a command such as a KMS client that prints it).
HKDF-SHA256 derives a separate subkey per use: dataset versions, ledger fields,
backups. Nothing here ever prints, logs or raises with key material or plaintext.

Sealed file (dataset versions, backups): a header, then AES-256-GCM chunks.

    header = MAGIC(8) | kind(1) | key id(8) | file id(16) | chunk size(u32)
    chunk i = AES-GCM(file key, nonce = 0^4 | u64 i, plaintext, aad)
    aad     = header | u32 len(binding) | binding | u64 i | u8 final

The file key is HKDF(subkey, salt = file id), so no two files share a key and a
chunk moved between files fails. The index in the nonce and AAD stops reordering;
the final flag (the STREAM construction) stops dropping chunks from the end:
every chunk but the last holds exactly ``chunk size`` bytes and the last holds
fewer (possibly none), so truncation at a chunk boundary is detected too. The
*binding* names what the file must be (``ssda903/v3``), so a version file
renamed to another version or dataset does not open.

Sealed field (ledger): ``b"tsf1" | nonce(12) | AES-GCM(ledger subkey, value, context)``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import struct
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES: Final = 32
# Used when a node config has no [encryption] section (tools and tests).
ENV_KEY: Final = "TESSERA_DATA_KEY"
ENV_KEY_FILE: Final = "TESSERA_DATA_KEY_FILE"

MAGIC: Final = b"TSRSEAL1"
KIND_VERSION: Final = b"V"
KIND_BACKUP: Final = b"B"
CHUNK_BYTES: Final = 1 << 20
_TAG: Final = 16
_HEADER: Final = struct.Struct(">8s1s8s16sI")
_FIELD_PREFIX: Final = b"tsf1"
_COMMAND_TIMEOUT: Final = 30.0


class VaultError(ValueError):
    """A key cannot be loaded, or a sealed file or field does not open. One line."""


@dataclass(frozen=True)
class EncryptionConfig:
    """Where the node's data key comes from: exactly one of these (never the key itself).

    ``key_file``: a file holding the key (64 hex digits), readable by its owner only.
    ``key_env``: the name of an environment variable holding it.
    ``key_command``: a command (argv list, no shell) that prints it, e.g. a KMS client.
    """

    key_file: Path | None = None
    key_env: str | None = None
    key_command: tuple[str, ...] | None = None

    def problems(self) -> list[str]:
        given = [
            n
            for n, v in (
                ("key_file", self.key_file),
                ("key_env", self.key_env),
                ("key_command", self.key_command),
            )
            if v is not None
        ]
        if len(given) > 1:
            return [f"encryption: give one of key_file, key_env, key_command, not {given}"]
        if self.key_command is not None and not self.key_command:
            return ["encryption.key_command must not be empty"]
        if self.key_env is not None and not self.key_env.strip():
            return ["encryption.key_env must name an environment variable"]
        return []


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(key)


class DataKey:
    """The node's data key. Its repr and str show only the key id."""

    __slots__ = ("_raw", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise VaultError(f"a data key is {KEY_BYTES} bytes")
        self._raw = bytes(raw)
        # A one-way label: names the key in errors and headers, reveals nothing of it.
        self.key_id = _hkdf(self._raw, b"tessera/v1/key-id")[:8].hex()

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def subkey(self, purpose: str) -> bytes:
        return _hkdf(self._raw, b"tessera/v1/" + purpose.encode("ascii"))

    def to_text(self) -> str:
        """The key as key files, environment variables and key commands hold it."""
        return self._raw.hex()

    def __repr__(self) -> str:
        return f"DataKey(id={self.key_id})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataKey) and secrets.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.key_id)


def parse_key(data: bytes, source: str) -> DataKey:
    """A key from its text form (64 hex digits, surrounding whitespace ignored).
    ``source`` names where it came from; the content is never echoed."""
    text = data.strip()
    if len(text) != 2 * KEY_BYTES:
        raise VaultError(f"{source} does not hold a data key (want 64 hex digits)")
    try:
        return DataKey(bytes.fromhex(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise VaultError(f"{source} does not hold a data key (want 64 hex digits)") from None


def _read_key_file(path: Path, source: str) -> DataKey:
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise VaultError(
                f"{source}: {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                f"run chmod 600 {path}"
            )
        if st.st_size > 4096:
            raise VaultError(f"{source}: {path} does not hold a data key")
        data = path.read_bytes()
    except OSError as e:
        raise VaultError(f"{source}: cannot read {path}: {e.strerror}") from None
    return parse_key(data, f"{source} ({path})")


def load_key(cfg: EncryptionConfig, environ: Mapping[str, str], where: str) -> DataKey:
    """The data key ``cfg`` points at. Without an [encryption] section the key comes
    from TESSERA_DATA_KEY_FILE or TESSERA_DATA_KEY. ``where`` names the config file."""
    if cfg.key_file is not None:
        return _read_key_file(cfg.key_file, f"{where}: encryption.key_file")
    if cfg.key_env is not None:
        value = environ.get(cfg.key_env)
        if not value:
            raise VaultError(
                f"{where}: encryption.key_env: environment variable {cfg.key_env} is not set"
            )
        return parse_key(value.encode(), f"{where}: encryption.key_env ({cfg.key_env})")
    if cfg.key_command is not None:
        return _run_key_command(cfg.key_command, f"{where}: encryption.key_command")
    return default_key(environ, where)


_CURRENT: ContextVar[DataKey | None] = ContextVar("tessera_data_key", default=None)


@contextmanager
def using_key(key: DataKey) -> Iterator[None]:
    """Make ``key`` the default for code run inside (e.g. an ingest run for a node
    whose config names its key source): ``default_key()`` returns it."""
    token = _CURRENT.set(key)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def default_key(environ: Mapping[str, str] | None = None, where: str = "") -> DataKey:
    """The key set by ``using_key``, else the one TESSERA_DATA_KEY_FILE or
    TESSERA_DATA_KEY names (tools run without a node config, and tests)."""
    current = _CURRENT.get()
    if current is not None and environ is None:
        return current
    env = os.environ if environ is None else environ
    prefix = f"{where}: " if where else ""
    path = env.get(ENV_KEY_FILE)
    if path:
        return _read_key_file(Path(path), f"{prefix}{ENV_KEY_FILE}")
    value = env.get(ENV_KEY)
    if value:
        return parse_key(value.encode(), f"{prefix}{ENV_KEY}")
    raise VaultError(
        f"{prefix}no data key: set encryption.key_file, key_env or key_command in the node "
        f"config (or {ENV_KEY_FILE}); make a key with `tessera node keygen --out FILE`"
    )


def _run_key_command(argv: Sequence[str], source: str) -> DataKey:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=_COMMAND_TIMEOUT, check=False, stdin=None
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VaultError(f"{source}: cannot run {argv[0]}: {type(e).__name__}") from None
    if done.returncode != 0:
        raise VaultError(f"{source}: {argv[0]} failed with exit status {done.returncode}")
    return parse_key(done.stdout, f"{source} output")


def write_key_file(path: Path, key: DataKey) -> None:
    """Write ``key`` to a new file, 0600, atomically; never replaces an existing file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (key.to_text() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise VaultError(f"{path} already exists: not replacing a data key") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- sealed files ---------------------------------------------------------------------


def _aad(header: bytes, binding: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">I", len(binding)) + binding + struct.pack(">QB", index, final)


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", index)


class SealedWriter(io.RawIOBase):
    """Write-only stream that seals what is written to ``out``. ``close()`` writes
    the final chunk; without it the file does not open."""

    def __init__(
        self,
        out: BinaryIO,
        key: DataKey,
        kind: bytes,
        binding: str,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        super().__init__()
        file_id = secrets.token_bytes(16)
        self._out = out
        self._header = _HEADER.pack(MAGIC, kind, bytes.fromhex(key.key_id), file_id, chunk_bytes)
        self._aead = AESGCM(_hkdf(key.subkey(_purpose(kind)), b"tessera/v1/file", file_id))
        self._binding = binding.encode()
        self._chunk = chunk_bytes
        self._buf = bytearray()
        self._index = 0
        self.plain_bytes = 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._buf += view
        self.plain_bytes += len(view)
        while len(self._buf) >= self._chunk:
            # The last chunk must be short, so keep a full chunk back until more arrives.
            if len(self._buf) == self._chunk:
                break
            self._emit(bytes(self._buf[: self._chunk]), final=False)
            del self._buf[: self._chunk]
        return len(view)

    def _emit(self, plain: bytes, final: bool) -> None:
        aad = _aad(self._header, self._binding, self._index, final)
        self._out.write(self._aead.encrypt(_nonce(self._index), plain, aad))
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            if len(self._buf) == self._chunk:
                self._emit(bytes(self._buf), final=False)
                self._buf.clear()
            self._emit(bytes(self._buf), final=True)
            self._buf.clear()
        super().close()


def _purpose(kind: bytes) -> str:
    return {KIND_VERSION: "versions", KIND_BACKUP: "backups"}[kind]


class SealedReader(io.RawIOBase):
    """Read-only stream over a sealed file; raises VaultError on any tampering,
    wrong key, wrong binding or truncation. ``name`` appears in errors."""

    def __init__(self, src: BinaryIO, key: DataKey, kind: bytes, binding: str, name: str) -> None:
        super().__init__()
        self._name = name
        header = src.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise VaultError(f"{name}: not a sealed Tessera file")
        magic, got_kind, key_id, file_id, chunk = _HEADER.unpack(header)
        if magic != MAGIC or got_kind != kind or not 16 <= chunk <= 1 << 26:
            raise VaultError(f"{name}: not a sealed Tessera file of this kind")
        if key_id.hex() != key.key_id:
            raise VaultError(
                f"{name}: sealed under data key {key_id.hex()}, but the configured key is "
                f"{key.key_id}"
            )
        self._src = src
        self._header = header
        self._aead = AESGCM(_hkdf(key.subkey(_purpose(kind)), b"tessera/v1/file", file_id))
        self._binding = binding.encode()
        self._chunk = chunk
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        sealed = self._src.read(self._chunk + _TAG)
        final = len(sealed) < self._chunk + _TAG
        if final and len(sealed) < _TAG:
            raise VaultError(f"{self._name}: truncated")
        aad = _aad(self._header, self._binding, self._index, final)
        try:
            self._plain = self._aead.decrypt(_nonce(self._index), sealed, aad)
        except InvalidTag:
            raise VaultError(
                f"{self._name}: does not open (damaged, truncated, or not {self._binding.decode()})"
            ) from None
        self._pos = 0
        self._index += 1
        if final:
            if self._src.read(1):
                raise VaultError(f"{self._name}: data after the final chunk")
            self._done = True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fills ``buffer`` unless the end comes first (Arrow expects full reads)."""
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out):
            while self._pos >= len(self._plain) and not self._done:
                self._next_chunk()
            n = min(len(out) - filled, len(self._plain) - self._pos)
            if n == 0:
                break
            out[filled : filled + n] = self._plain[self._pos : self._pos + n]
            self._pos += n
            filled += n
        return filled

    def read_exact(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            data = self.read(left)
            if not data:
                raise VaultError(f"{self._name}: ends early")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def at_end(self) -> bool:
        while self._pos >= len(self._plain) and not self._done:
            self._next_chunk()
        return self._done and self._pos >= len(self._plain)


# -- sealed ledger fields -------------------------------------------------------------


def is_sealed_field(value: bytes | str | None) -> bool:
    return isinstance(value, bytes) and value.startswith(_FIELD_PREFIX)


class FieldSealer:
    """Seals ledger values under the ledger subkey; ``context`` (e.g. the column and
    answer key) is authenticated, so a value cannot be moved to another row."""

    def __init__(self, key: DataKey) -> None:
        self._aead = AESGCM(key.subkey("ledger-fields"))
        self.key_id = key.key_id

    def seal(self, value: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _FIELD_PREFIX + nonce + self._aead.encrypt(nonce, value, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if not sealed.startswith(_FIELD_PREFIX) or len(sealed) < len(_FIELD_PREFIX) + 12 + _TAG:
            raise VaultError("ledger value is not sealed (a ledger from before encryption?)")
        nonce = sealed[4:16]
        try:
            return self._aead.decrypt(nonce, sealed[16:], context.encode())
        except InvalidTag:
            raise VaultError("ledger value does not open: wrong data key or damaged") from None


class LedgerSealer:
    """What the ledger seals: each stored answer and its parameters, bound to the
    row's answer key and column."""

    def __init__(self, key: DataKey) -> None:
        self._fields = FieldSealer(key)

    @classmethod
    def from_environment(cls) -> LedgerSealer:
        return cls(default_key())

    def seal_payload(self, answer_key: str, payload: bytes) -> bytes:
        return self._fields.seal(payload, f"releases.payload {answer_key}")

    def open_payload(self, answer_key: str, stored: bytes) -> bytes:
        return self._fields.open(bytes(stored), f"releases.payload {answer_key}")

    def seal_params(self, answer_key: str, params: Mapping[str, Any]) -> bytes:
        text = json.dumps(dict(params), sort_keys=True).encode()
        return self._fields.seal(text, f"releases.params {answer_key}")

    def open_params(self, answer_key: str, stored: bytes) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(
            self._fields.open(bytes(stored), f"releases.params {answer_key}")
        )
        return value


# -- permissions ----------------------------------------------------------------------


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; tighten it if it is looser."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists, 0600, in a 0700 folder (SQLite then gives its WAL
    and shared-memory files the same mode)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
