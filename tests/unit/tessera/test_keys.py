"""Private signing keys: written 0600 atomically every time, refused at load when
group or others can read them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from tessera.cli import keys_cmd
from tessera.keys import KeyError_, SigningKey


def _keys_new(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tessera")
    keys_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "new", *argv])
    code: int = args.handler(args, {})
    return code


def test_a_new_key_is_owner_only_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.key"
    key = SigningKey.generate()
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(path).public == key.public
    assert path.with_suffix(".key.pub").read_text() == key.public.key_id + "\n"
    # Nothing is left behind from the atomic write.
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.key", "a.key.pub"]


def test_force_over_a_world_readable_file_leaves_an_owner_only_key(tmp_path: Path) -> None:
    path = tmp_path / "analyst.key"
    path.write_text("old, world-readable\n")
    path.chmod(0o644)
    assert _keys_new(str(path)) == 2  # refuses without --force
    assert _keys_new(str(path), "--force") == 0
    assert path.stat().st_mode & 0o777 == 0o600
    SigningKey.load(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_group_or_others_can_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyError_) as e:
        SigningKey.load(path)
    message = str(e.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert "PRIVATE" not in message


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="cannot read key file"):
        SigningKey.load(tmp_path / "absent.key")
