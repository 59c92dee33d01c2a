"""The sealed-file format and sealed ledger fields: what goes in comes out with the
key, and any change to the file (a flipped bit, a dropped, reordered or swapped
chunk, truncation, another binding or key) is refused, never read as something else."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.node import vault
from tessera.node.vault import DataKey, FieldSealer, SealedReader, SealedWriter, VaultError

KEY = DataKey(bytes(range(32)))
HEADER = 8 + 1 + 8 + 16 + 4


def seal(data: bytes, chunk: int = 64, binding: str = "dataset x version 1") -> bytes:
    out = io.BytesIO()
    w = SealedWriter(out, KEY, vault.KIND_VERSION, binding, chunk_bytes=chunk)
    # Written in uneven pieces, as Arrow writes.
    for i in range(0, len(data), 37):
        w.write(data[i : i + 37])
    w.close()
    return out.getvalue()


def unseal(sealed: bytes, binding: str = "dataset x version 1", key: DataKey = KEY) -> bytes:
    r = SealedReader(io.BytesIO(sealed), key, vault.KIND_VERSION, binding, "test")
    out = r.read()
    assert r.at_end()
    return out


def chunks(sealed: bytes, chunk: int = 64) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER:]
    size = chunk + 16
    return sealed[:HEADER], [body[i : i + size] for i in range(0, len(body), size)]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=700), chunk=st.sampled_from([16, 64, 100]))
def test_round_trip_for_any_length_and_chunk_size(data: bytes, chunk: int) -> None:
    sealed = seal(data, chunk)
    assert unseal(sealed) == data
    # The last chunk is always short, so a sealed file's length is never ambiguous.
    assert (len(sealed) - HEADER) % (chunk + 16) != 0 or len(data) % chunk == 0


@settings(max_examples=80, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=400), where=st.integers(min_value=0), bit=st.integers(0, 7)
)
def test_any_flipped_bit_is_refused(data: bytes, where: int, bit: int) -> None:
    sealed = bytearray(seal(data))
    sealed[where % len(sealed)] ^= 1 << bit
    with pytest.raises(VaultError):
        unseal(bytes(sealed))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=400), keep=st.integers(min_value=0))
def test_any_truncation_is_refused(data: bytes, keep: int) -> None:
    sealed = seal(data)
    with pytest.raises(VaultError):
        unseal(sealed[: keep % len(sealed)])


def test_dropped_reordered_or_swapped_chunks_are_refused() -> None:
    data = bytes(range(256)) * 2
    header, parts = chunks(seal(data))
    assert len(parts) > 3
    with pytest.raises(VaultError):  # the final chunk dropped, at a chunk boundary
        unseal(header + b"".join(parts[:-1]))
    with pytest.raises(VaultError):  # a middle chunk dropped
        unseal(header + b"".join(parts[:1] + parts[2:]))
    with pytest.raises(VaultError):  # two chunks swapped
        unseal(header + b"".join([parts[1], parts[0], *parts[2:]]))
    other_header, other = chunks(seal(data))  # same data, same key, another file
    with pytest.raises(VaultError):
        unseal(header + b"".join([other[0], *parts[1:]]))
    with pytest.raises(VaultError):  # another file's header on these chunks
        unseal(other_header + b"".join(parts))
    with pytest.raises(VaultError):
        unseal(seal(data) + b"extra")


def test_binding_kind_and_key_must_match() -> None:
    sealed = seal(b"rows")
    with pytest.raises(VaultError, match="not dataset x version 2"):
        unseal(sealed, binding="dataset x version 2")
    with pytest.raises(VaultError, match="sealed under data key"):
        unseal(sealed, key=DataKey.generate())
    with pytest.raises(VaultError, match="not a sealed Tessera file of this kind"):
        SealedReader(io.BytesIO(sealed), KEY, vault.KIND_BACKUP, "dataset x version 1", "t")
    with pytest.raises(VaultError, match="not a sealed Tessera file"):
        unseal(b"SQLite format 3\0" + bytes(100))
    # The header is bound too: a forged chunk size does not open.
    forged = bytearray(sealed)
    forged[HEADER - 4 : HEADER] = struct.pack(">I", 65)
    with pytest.raises(VaultError):
        unseal(bytes(forged))


def test_subkeys_are_separate_and_the_key_never_shows() -> None:
    assert len({KEY.subkey(p) for p in ("versions", "ledger-fields", "backups")}) == 3
    assert KEY.to_text() not in repr(KEY) and KEY.to_text() not in str(KEY)
    assert KEY.key_id in repr(KEY)


def test_fields_open_only_in_their_own_row_and_column() -> None:
    sealer = FieldSealer(KEY)
    sealed = sealer.seal(b"answer", "releases.payload a")
    assert sealer.open(sealed, "releases.payload a") == b"answer"
    assert sealer.seal(b"answer", "releases.payload a") != sealed  # fresh nonce each time
    with pytest.raises(VaultError):
        sealer.open(sealed, "releases.payload b")
    with pytest.raises(VaultError):
        FieldSealer(DataKey.generate()).open(sealed, "releases.payload a")
    with pytest.raises(VaultError, match="not sealed"):
        sealer.open(b"answer", "releases.payload a")


@pytest.mark.parametrize("text", [b"", b"zz" * 32, b"00" * 31, b"\xff" * 64, b"0" * 65])
def test_malformed_key_text_is_refused_without_echoing_it(text: bytes) -> None:
    with pytest.raises(VaultError) as e:
        vault.parse_key(text, "source")
    assert "64 hex digits" in str(e.value)
    if text:
        assert text.decode("latin-1") not in str(e.value)
