"""A header cache of plain dicts for tests that inject one (``create_app(..., cache=...)``):
the ``HeaderCache`` contract (tests/cache/test_contract.py holds it to it), and a record of
what it was asked for and given."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class DictHeaderCache:
    """Entries by (namespace, uid), unbounded; ``asked`` and ``written`` are the unique-ids
    :meth:`get_many` was asked for and :meth:`set_many` was given, in order."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.asked: list[str] = []
        self.written: list[str] = []

    def __len__(self) -> int:
        return len(self.entries)

    async def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(uids)
        self.asked += wanted
        return {u: self.entries[(namespace, u)] for u in wanted if (namespace, u) in self.entries}

    async def set_many(self, namespace: str, entries: Mapping[str, dict[str, Any]]) -> None:
        self.written += entries
        for uid, entry in entries.items():
            self.entries[(namespace, uid)] = entry

    async def delete_many(self, namespace: str, uids: Iterable[str]) -> None:
        for uid in uids:
            self.entries.pop((namespace, uid), None)

    async def close(self) -> None:
        self.entries.clear()

    async def ping(self) -> bool:
        return True
