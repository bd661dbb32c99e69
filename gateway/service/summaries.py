"""Header summaries this process holds as objects: what it parsed or read from the cache
lately, by mailbox namespace and unique-id.

With Redis, a page read ahead, a page of a client paging on, or the same page after a new
login finds its summaries here: no round trip through the header cache (``to_json``, a
store, ``MGET``, ``json.loads``, ``from_json``) for what this process already has, and the
same object each time, so that what is derived from one (its JSON in a listing) is derived
once. Without Redis there is no other header cache: this is the in-process cache, sized by
the cache settings, with their TTL, counting its hits and misses (``on_event``), and each
summary is held once, as the object that was parsed.

Unique-ids are stable and messages immutable, so an entry is never stale; like the header
cache, it is looked up only for the unique-ids of the caller's own session listing (README,
Invariants), and a delete through us drops it. Bounded in entries and in bytes (each
summary weighed by what it holds: see :func:`summary_weight`), least recently used first
out; with a ``ttl``, each is kept at most that long after it was put: expired ones are
dropped as they are met and by :meth:`RecentSummaries.purge_expired`, which the app calls
on a timer, so memory comes back without waiting for a request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from ..mail import HeaderSummary

__all__ = ["MAX_RECENT_BYTES", "MAX_RECENT_SUMMARIES", "RecentSummaries", "summary_weight"]

#: Summaries kept at most in front of Redis (a few pages of the mailboxes in use: 20 pages
#: of 500).
MAX_RECENT_SUMMARIES = 10_000
#: What they may weigh together (:func:`summary_weight`).
MAX_RECENT_BYTES = 16 * 1024 * 1024

_NEVER = float("inf")


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
    """At most ``max_entries`` summaries weighing at most ``max_bytes`` together, each kept
    at most ``ttl`` seconds (``clock``'s) when there is one. ``on_event`` is told ``"hit"``
    or ``"miss"`` for each unique-id :meth:`get_many` looks up."""

    def __init__(
        self,
        max_entries: int = MAX_RECENT_SUMMARIES,
        max_bytes: int = MAX_RECENT_BYTES,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._clock = clock
        self._on_event = on_event
        self._bytes = 0
        #: (namespace, uid) -> (summary, weight, expires), least recently used first
        self._kept: OrderedDict[tuple[str, str], tuple[HeaderSummary, int, float]] = OrderedDict()
        #: with a ttl: (namespace, uid) -> expires, in the order put (one ttl for all:
        #: the first to expire first)
        self._put: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """What the kept summaries are counted for now."""
        return self._bytes

    def get_many(self, namespace: str, uids: Iterable[str]) -> dict[str, HeaderSummary]:
        """The kept summaries among ``uids`` (the others are simply absent); each looked up
        is a hit or a miss for ``on_event``."""
        kept = self._kept
        on_event = self._on_event
        now = -_NEVER if self._ttl is None else self._clock()
        found: dict[str, HeaderSummary] = {}
        for uid in uids:
            key = (namespace, uid)
            item = kept.get(key)
            if item is not None:
                if item[2] > now:
                    kept.move_to_end(key)
                    found[uid] = item[0]
                    if on_event is not None:
                        on_event("hit")
                    continue
                self._drop(key)
            if on_event is not None:
                on_event("miss")
        return found

    def held(self, namespace: str, uids: Iterable[str]) -> set[str]:
        """Which of ``uids`` are kept (not a lookup: no event, no change of order)."""
        kept = self._kept
        now = -_NEVER if self._ttl is None else self._clock()
        found: set[str] = set()
        for uid in uids:
            item = kept.get((namespace, uid))
            if item is not None and item[2] > now:
                found.add(uid)
        return found

    def put(self, namespace: str, uid: str, summary: HeaderSummary) -> None:
        """Keep ``summary`` (the least recently used go when the bounds are passed; one
        heavier than all may weigh is not kept)."""
        kept = self._kept
        key = (namespace, uid)
        if key in kept:
            self._drop(key)
        weight = summary_weight(summary)
        if self._max <= 0 or weight > self._max_bytes:
            return
        if self._ttl is None:
            kept[key] = (summary, weight, _NEVER)
        else:
            expires = self._clock() + self._ttl
            kept[key] = (summary, weight, expires)
            self._put[key] = expires
        self._bytes += weight
        while len(kept) > self._max or self._bytes > self._max_bytes:
            self._drop(next(iter(kept)))

    def put_many(self, namespace: str, summaries: Mapping[str, HeaderSummary]) -> None:
        for uid, summary in summaries.items():
            self.put(namespace, uid, summary)

    def drop(self, namespace: str, uids: Iterable[str]) -> None:
        """Forget ``uids`` (their messages were deleted)."""
        for uid in uids:
            self._drop((namespace, uid))

    def purge_expired(self) -> int:
        """Drop every expired summary (the first put first: they expire in that order);
        how many were dropped."""
        put = self._put
        if not put:
            return 0
        now = self._clock()
        dropped = 0
        while put:
            key, expires = next(iter(put.items()))
            if expires > now:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def _drop(self, key: tuple[str, str]) -> None:
        item = self._kept.pop(key, None)
        if item is not None:
            self._bytes -= item[1]
            if self._ttl is not None:
                self._put.pop(key, None)
