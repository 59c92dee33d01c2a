"""Strict, typed reading of one table of a template, with field paths in every error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from tessera.templates.model import TemplateError

MAX_TEXT = 2000
MAX_NAME = 64
# \Z, not $: "$" also matches before a trailing newline.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}\Z")
# Codes and labels: printable text, no control characters (C0, DEL, C1) and no
# bidirectional embeddings, overrides or isolates, which make text display as
# something other than what was signed ("Trojan Source").
LABEL_RE = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{1,64}\Z")
# Free text (titles, descriptions, names) may hold tabs and line breaks, nothing else
# of the above.
UNSAFE_TEXT_RE = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class Fields:
    """One table of the template. Every key must be consumed; leftovers are errors."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise TemplateError(path or "template", "must be a table")
        self._data = dict(data)
        self._path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str, default: Any = ...) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if default is ...:
                raise TemplateError(self.at(key), "is required")
            return default
        return self._data[key]

    def text(self, key: str, *, default: str | None = None, max_len: int = MAX_TEXT) -> str:
        v = self.raw(key, default if default is not None else ...)
        if not isinstance(v, str):
            raise TemplateError(self.at(key), "must be text")
        if len(v) > max_len:
            raise TemplateError(self.at(key), f"is longer than {max_len} characters")
        if "\x00" in v:
            raise TemplateError(self.at(key), "contains a NUL character")
        if UNSAFE_TEXT_RE.search(v):
            raise TemplateError(
                self.at(key), "contains a control character or a bidirectional override"
            )
        return v

    def name(self, key: str) -> str:
        v = self.text(key, max_len=MAX_NAME)
        if not NAME_RE.match(v):
            raise TemplateError(
                self.at(key), "must be lower-case letters, digits and '_', starting with a letter"
            )
        return v

    def label(self, key: str) -> str:
        """A label shown in results: 1 to 64 printable characters."""
        v = self.text(key, max_len=64)
        if not LABEL_RE.match(v):
            raise TemplateError(self.at(key), "must be 1 to 64 printable characters")
        return v

    def integer(self, key: str, *, lo: int, hi: int, default: int | None = None) -> int:
        v = self.raw(key, default if default is not None else ...)
        if isinstance(v, bool) or not isinstance(v, int):
            raise TemplateError(self.at(key), "must be an integer")
        if not lo <= v <= hi:
            raise TemplateError(self.at(key), f"must be between {lo} and {hi}")
        return v

    def number(self, key: str) -> float:
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TemplateError(self.at(key), "must be a number")
        try:
            f = float(v)
        except OverflowError:  # an int too large for a float
            raise TemplateError(self.at(key), "must be finite") from None
        if not math.isfinite(f):
            raise TemplateError(self.at(key), "must be finite")
        return f

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        v = self.raw(key, default if default is not None else ...)
        if not isinstance(v, bool):
            raise TemplateError(self.at(key), "must be true or false")
        return v

    def date(self, key: str) -> date:
        return parse_date(self.raw(key), self.at(key))

    def table(self, key: str) -> Fields:
        return Fields(self.raw(key), self.at(key))

    def tables(self, key: str, *, max_items: int, default: list[Any] | None = None) -> list[Fields]:
        v = self.raw(key, default if default is not None else ...)
        if not isinstance(v, list):
            raise TemplateError(self.at(key), "must be a list of tables")
        if len(v) > max_items:
            raise TemplateError(self.at(key), f"has {len(v)} entries; at most {max_items}")
        return [Fields(item, f"{self.at(key)}[{i}]") for i, item in enumerate(v)]

    def labels(self, key: str, *, max_items: int, allow_empty: bool = False) -> tuple[str, ...]:
        v = self.raw(key)
        if not isinstance(v, list):
            raise TemplateError(self.at(key), "must be a list of text")
        if not v and not allow_empty:
            raise TemplateError(self.at(key), "must not be empty")
        if len(v) > max_items:
            raise TemplateError(self.at(key), f"has {len(v)} entries; at most {max_items}")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str) or not LABEL_RE.match(item):
                raise TemplateError(f"{self.at(key)}[{i}]", "must be 1 to 64 printable characters")
            out.append(item)
        if len(set(out)) != len(out):
            raise TemplateError(self.at(key), "has duplicate entries")
        return tuple(out)

    def done(self) -> None:
        extra = sorted(set(self._data) - self._seen)
        if extra:
            raise TemplateError(self.at(safe_key(extra[0])), "is not a known field")


def safe_key(key: Any) -> str:
    """An unknown key as it may appear in an error: printable and short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(key)[:40]) or "?"
    return text + ("..." if len(str(key)) > 40 else "")


def parse_date(v: Any, where: str) -> date:
    # A datetime is a date subclass (TOML gives one for 2024-01-01T00:00:00): not a date here.
    if isinstance(v, date) and not isinstance(v, datetime):
        return v
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            return date.fromisoformat(v)
        except ValueError:
            pass
    raise TemplateError(where, "must be a date (YYYY-MM-DD)")
