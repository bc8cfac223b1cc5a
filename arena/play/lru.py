"""A bounded mapping that drops its least recently used entry first: the one eviction policy of what a worker keeps."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries; reading one makes it the most recently used."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The entry of ``key``, or None."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def setdefault(self, key: K, value: V) -> V:
        """The entry of ``key``; ``value`` becomes it when there is none (the first value stands)."""
        found = self.get(key)
        if found is not None:
            return found
        while len(self._entries) >= self.size:
            self._entries.popitem(last=False)
        self._entries[key] = value
        return value

    def remember(self, key: K, make: Callable[[], V]) -> V:
        """The entry of ``key``, made by ``make`` when there is none."""
        found = self.get(key)
        return found if found is not None else self.setdefault(key, make())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
