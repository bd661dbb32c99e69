"""Header summaries this process holds as objects: what it parsed or read from the cache
lately, by mailbox namespace and unique-id.

A page read ahead, a page of a client paging on, or the same page after a new login finds
its summaries here: no round trip through the header cache (``to_json``, a store,
``MGET``, ``json.loads``, ``from_json``) for what this process already has, and the same
object each time, so that what is derived from one (its JSON in a listing) is derived once.

Unique-ids are stable and messages immutable, so an entry is never stale; like the header
cache, it is looked up only for the unique-ids of the caller's own session listing (README,
Invariants), and a delete through us drops it. Bounded in entries and in bytes (each
summary weighed by what it holds: see :func:`summary_weight`), least recently used first
out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from ..mail import HeaderSummary

__all__ = ["MAX_RECENT_BYTES", "MAX_RECENT_SUMMARIES", "RecentSummaries", "summary_weight"]

#: Summaries kept at most (a few pages of the mailboxes in use: 20 pages of 500).
MAX_RECENT_SUMMARIES = 10_000
#: What they may weigh together (:func:`summary_weight`).
MAX_RECENT_BYTES = 16 * 1024 * 1024


def summary_weight(headers: HeaderSummary) -> int:
    """Bytes a summary is counted for: its objects and the text it holds (a summary of
    hostile mail holds up to its caps, far more than an ordinary one)."""
    total = 300
    for text in (headers.subject, headers.message_id, headers.in_reply_to, headers.date):
        total += 0 if text is None else 50 + len(text)
    if headers.from_ is not None:
        total += 120 + len(headers.from_.address) + len(headers.from_.name or "")
    for addresses in (headers.to, headers.cc, headers.reply_to):
        for address in addresses:
            total += 120 + len(address.address) + len(address.name or "")
    return total


class RecentSummaries:
    """At most ``max_entries`` summaries weighing at most ``max_bytes`` together."""

    def __init__(
        self, max_entries: int = MAX_RECENT_SUMMARIES, max_bytes: int = MAX_RECENT_BYTES
    ) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        #: (namespace, uid) -> (summary, weight), least recently used first
        self._kept: OrderedDict[tuple[str, str], tuple[HeaderSummary, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """What the kept summaries are counted for now."""
        return self._bytes

    def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, HeaderSummary]:
        """The kept summaries among ``uids`` (the others are simply absent)."""
        kept = self._kept
        found: dict[str, HeaderSummary] = {}
        for uid in uids:
            key = (namespace, uid)
            item = kept.get(key)
            if item is not None:
                kept.move_to_end(key)
                found[uid] = item[0]
        return found

    def put(self, namespace: str, uid: str, summary: HeaderSummary) -> None:
        """Keep ``summary`` (the least recently used go when the bounds are passed)."""
        if self._max <= 0:
            return
        kept = self._kept
        key = (namespace, uid)
        old = kept.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        weight = summary_weight(summary)
        kept[key] = (summary, weight)
        self._bytes += weight
        while len(kept) > self._max or self._bytes > self._max_bytes:
            _key, (_summary, weight) = kept.popitem(last=False)
            self._bytes -= weight

    def put_many(self, namespace: str, summaries: Mapping[str, HeaderSummary]) -> None:
        for uid, summary in summaries.items():
            self.put(namespace, uid, summary)

    def drop(self, namespace: str, uids: Iterable[str]) -> None:
        """Forget ``uids`` (their messages were deleted)."""
        for uid in uids:
            old = self._kept.pop((namespace, uid), None)
            if old is not None:
                self._bytes -= old[1]
