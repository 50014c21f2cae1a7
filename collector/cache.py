"""A dict with a bound on its entries and on the total weight of its values (path lengths).

When either bound is passed, the oldest quarter of the entries goes (insertion order: a hit does
not move an entry, which keeps ``get`` a plain dict lookup on the hot path). A process that opens
a million files makes the collector forget the oldest names, never grow without limit.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    def __init__(self, max_entries: int, max_weight: int = 0, weight: Callable[[V], int] | None = None):
        self.max_entries = max_entries
        self.max_weight = max_weight             # 0: no weight bound
        self._weight = weight
        self.weight = 0
        self.data: dict[K, V] = {}
        self.evicted = 0
        self.get = self.data.get                 # the hot path: a bound method of the dict itself

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def put(self, key: K, value: V) -> None:
        data = self.data
        if self._weight:
            old = data.get(key)
            if old is not None:
                self.weight -= self._weight(old)
            self.weight += self._weight(value)
        elif key not in data and len(data) >= self.max_entries:
            self._evict()
        data[key] = value
        if len(data) > self.max_entries or self.max_weight and self.weight > self.max_weight:
            self._evict()

    def pop(self, key: K) -> None:
        old = self.data.pop(key, None)
        if old is not None and self._weight:
            self.weight -= self._weight(old)

    def _evict(self) -> None:
        """Drop the oldest quarter (at least one entry), then more while the weight is over."""
        data = self.data
        drop = max(1, len(data) // 4)
        for key in list(data)[:drop]:
            self.pop(key)
        self.evicted += drop
        while self.max_weight and self.weight > self.max_weight and data:
            self.pop(next(iter(data)))
            self.evicted += 1

    def clear(self) -> None:
        self.data.clear()
        self.weight = 0
