"""A stored answer's figures, post-processed once: a cached answer is asked again and
again, and its measures and cells follow from the stored payload alone."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from tessera import results
from tessera.templates.model import Template

# Stored answers whose post-processed figures are kept in memory (each a few kB).
CACHE_SIZE = 256


@dataclass(frozen=True)
class Figures:
    """What a stored payload says, post-processed: the same for every request it answers."""

    kind: str
    cost: float
    measures: dict[str, results.Measure]
    cells: tuple[results.Cell, ...]
    notes: tuple[str, ...]


def figures_of(t: Template, payload: bytes) -> Figures:
    stored = json.loads(payload)
    measures = {
        m["name"]: results.measure_from_stored(m, stored["kind"]) for m in stored["measures"]
    }
    return Figures(
        stored["kind"],
        stored["cost"],
        measures,
        tuple(results.release(t, measures)),
        tuple(str(n) for n in stored.get("notes", ())),
    )


class FiguresCache:
    """The last few stored answers' figures, by answer key and the exact payload bytes
    (the answer key fixes the template, the payload everything else). Thread-safe."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, bytes], Figures] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, t: Template, answer_key: str, payload: bytes) -> Figures:
        key = (answer_key, payload)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        out = figures_of(t, payload)
        with self._lock:
            self._items[key] = out
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return out
