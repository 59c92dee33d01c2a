"""TOML configuration read into frozen dataclasses. Unknown keys are errors.

Relative paths are resolved against the config file's folder. Secrets are never
given inline: a config names the files that hold keys.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

T = TypeVar("T")


# Sections that node and coordinator configs share.
@dataclass(frozen=True)
class TlsConfig:
    """A party's certificate and key, and the federation CA certificate."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TrustedApprover:
    """One approver key. Entries with the same name and organisation are one person
    (say, an old key and its replacement): they count once towards the threshold."""

    name: str
    key: str
    organisation: str = ""

    @property
    def identity(self) -> str:
        """The person, as approvals are counted: name and organisation, case-folded."""
        name = " ".join(self.name.split()).casefold()
        return f"{name}\x00{' '.join(self.organisation.split()).casefold()}"


@dataclass(frozen=True)
class ApproversConfig:
    """Approvers trusted here, and how many distinct ones a template needs."""

    threshold: int
    trusted: tuple[TrustedApprover, ...]

    def identities(self) -> dict[str, str]:
        """Each trusted key's person (see TrustedApprover.identity)."""
        return {a.key: a.identity for a in self.trusted}

    def problems(self) -> list[str]:
        """What is wrong with this section, checked the same way by node and coordinator."""
        from tessera import keys

        out = []
        if self.threshold < 1:
            out.append("approvers.threshold must be at least 1")
        if self.threshold > len({a.identity for a in self.trusted}):
            out.append(
                "approvers.threshold is larger than the number of trusted approvers "
                "(counted as people: entries with one name and organisation are one person)"
            )
        for a in self.trusted:
            try:
                keys.PublicKey.from_id(a.key)
            except keys.KeyError_ as e:
                out.append(f"approver {a.name}: {e}")
        if len({a.key for a in self.trusted}) != len(self.trusted):
            out.append("approvers.trusted lists a key twice")
        return out


class ConfigError(ValueError):
    pass


def load(cls: type[T], path: Path) -> T:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return build(cls, data, base=path.parent.resolve(), where=str(path))


def build(cls: type[T], data: Any, *, base: Path, where: str = "config") -> T:
    return typing.cast(T, _value(cls, data, base, where))


def _value(tp: Any, v: Any, base: Path, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None:
            return None
        return _value(args[0], v, base, where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, v, base, where)
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        if not isinstance(v, list):
            raise ConfigError(f"{where}: must be a list")
        return tuple(_value(item, x, base, f"{where}[{i}]") for i, x in enumerate(v))
    if origin in (dict, Mapping):
        _, item = typing.get_args(tp)
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: must be a table")
        return types.MappingProxyType(
            {str(k): _value(item, x, base, f"{where}.{k}") for k, x in v.items()}
        )
    if tp is Path:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}: must be a path")
        p = Path(v)
        return p if p.is_absolute() else (base / p)
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: must be true or false")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: must be an integer")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}: must be a number")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where}: must be text")
        return v
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def _dataclass(cls: type, v: Any, base: Path, where: str) -> Any:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(v) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    kwargs = {}
    for name, f in fields.items():
        if name in v:
            kwargs[name] = _value(hints[name], v[name], base, f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    return cls(**kwargs)


def dump(obj: Any) -> str:
    """A config dataclass as TOML text, the inverse of `build` (paths written absolute)."""
    return tomli_w.dumps(_plain(obj))


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {
            f.name: _plain(getattr(v, f.name))
            for f in dataclasses.fields(v)
            if getattr(v, f.name) is not None
        }
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v
