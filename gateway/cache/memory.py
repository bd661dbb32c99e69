"""The in-process header cache: a bounded LRU with a TTL (the embedded default).

Bounded twice: in entries and in bytes (each entry is weighed by the length of its compact
JSON plus a fixed overhead for the Python objects around it), so that summaries of
hostile mail cannot make it large however many there are. Expired entries are dropped as
they are met and by :meth:`MemoryHeaderCache.purge_expired`, which the app calls on a
timer, so memory comes back without waiting for a request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import pydantic_core

#: What an entry costs beyond its JSON: the key tuple, the dict and its strings.
ENTRY_OVERHEAD: Final = 400


def entry_weight(namespace: str, uid: str, entry: dict[str, Any]) -> int:
    """The bytes an entry is counted for (an estimate that grows with the entry)."""
    try:
        # pydantic's serializer: the length of the compact UTF-8 JSON, ~6x faster than the
        # standard library's (a listing weighs every entry it writes)
        size = len(pydantic_core.to_json(entry))
    except (TypeError, ValueError):
        size = 4096  # not JSON-ready: never stored by the Redis cache, weighed high here
    return ENTRY_OVERHEAD + len(namespace) + len(uid) + size


class MemoryHeaderCache:
    """At most ``max_entries`` entries and ``max_bytes`` bytes, each kept at most ``ttl``
    seconds."""

    def __init__(
        self,
        max_entries: int = 50_000,
        ttl: float = 7 * 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] | None = None,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._on_event = on_event
        self._max = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._clock = clock
        #: key -> (expires, entry, weight), least recently used first
        self._data: OrderedDict[tuple[str, str], tuple[float, dict[str, Any], int]] = OrderedDict()
        #: key -> expires, in the order written (the TTL is the same for all: oldest first)
        self._written: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        """What the entries are counted for now."""
        return self._bytes

    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        now = self._clock()
        found: dict[str, dict[str, Any]] = {}
        for uid in uids:
            key = (namespace, uid)
            item = self._data.get(key)
            if item is None or item[0] <= now:
                if item is not None:
                    self._drop(key)
                self.misses += 1
                if self._on_event is not None:
                    self._on_event("miss")
                continue
            self._data.move_to_end(key)
            found[uid] = item[1]
            self.hits += 1
            if self._on_event is not None:
                self._on_event("hit")
        return found

    async def set_many(self, namespace: str, entries: Mapping[str, dict[str, Any]]) -> None:
        if self._max == 0 or self._max_bytes == 0:
            return
        now = self._clock()
        expires = now + self._ttl
        for uid, entry in entries.items():
            weight = entry_weight(namespace, uid, entry)
            if weight > self._max_bytes:
                continue  # larger than the whole cache: not kept
            key = (namespace, uid)
            if key in self._data:
                self._drop(key)
            self._data[key] = (expires, entry, weight)
            self._written[key] = expires
            self._bytes += weight
        self.purge_expired(now)
        while len(self._data) > self._max or self._bytes > self._max_bytes:
            self._drop(next(iter(self._data)))

    async def delete_many(self, namespace: str, uids: Iterable[str]) -> None:
        for uid in uids:
            key = (namespace, uid)
            if key in self._data:
                self._drop(key)

    def purge_expired(self, now: float | None = None) -> int:
        """Drop every expired entry (oldest written first: they expire in that order);
        how many were dropped."""
        now = self._clock() if now is None else now
        dropped = 0
        while self._written:
            key, expires = next(iter(self._written.items()))
            if expires > now:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def _drop(self, key: tuple[str, str]) -> None:
        item = self._data.pop(key, None)
        self._written.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    async def close(self) -> None:
        self._data.clear()
        self._written.clear()
        self._bytes = 0

    async def ping(self) -> bool:
        return True
