"""Header cache: parsed header summaries by unique-id, in a namespace per mailbox.

``HeaderCache`` is what the service needs; ``RedisHeaderCache`` shares summaries between
replicas. Without Redis there is no header cache: the summaries the service holds as objects
(``gateway.service.summaries``) are the in-process cache. Entries are JSON-ready dicts. A
cache never raises to its caller for a backend failure: it answers "miss" and counts the
error, so a broken cache only costs speed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .redis import RedisHeaderCache

Entry = dict[str, Any]


class HeaderCache(Protocol):
    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, Entry]:
        """The cached entries among ``uids`` (missing ones are simply absent)."""
        ...

    async def set_many(self, namespace: str, entries: Mapping[str, Entry]) -> None: ...

    async def delete_many(self, namespace: str, uids: Iterable[str]) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the backend answers (for readiness)."""
        ...


__all__ = ["Entry", "HeaderCache", "RedisHeaderCache"]
