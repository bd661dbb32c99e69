"""The in-process header cache: a bounded LRU with a TTL (the embedded default)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class MemoryHeaderCache:
    """At most ``max_entries`` entries, each kept at most ``ttl`` seconds."""

    def __init__(
        self,
        max_entries: int = 50_000,
        ttl: float = 7 * 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._on_event = on_event
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._data: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        now = self._clock()
        found: dict[str, dict[str, Any]] = {}
        for uid in uids:
            key = (namespace, uid)
            item = self._data.get(key)
            if item is None or item[0] <= now:
                if item is not None:
                    del self._data[key]
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
        if self._max == 0:
            return
        expires = self._clock() + self._ttl
        for uid, entry in entries.items():
            key = (namespace, uid)
            self._data[key] = (expires, entry)
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def delete_many(self, namespace: str, uids: Iterable[str]) -> None:
        for uid in uids:
            self._data.pop((namespace, uid), None)

    async def close(self) -> None:
        self._data.clear()

    async def ping(self) -> bool:
        return True
