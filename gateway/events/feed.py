"""Reading a mailbox's events: the pull feed (a page after a cursor, long-polled) and what
the event stream reads. Bounded: the wait (``max_wait``) and the number of clients waiting at
once (``max_waiters``, and ``max_waiters_per_mailbox`` of them on one mailbox: the readers of
one mailbox never take every place; past it a read answers at once with what there is)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from .log import EventLog, Slice
from .model import Cursor, Event

#: largest page of the feed
MAX_LIMIT = 500
#: events a stream reads from the log at once
STREAM_PAGE = 100


class EventFeed:
    """Reads of the event log for clients."""

    def __init__(
        self,
        events: EventLog,
        watched: frozenset[str],
        *,
        max_wait: float = 60.0,
        max_waiters: int = 1000,
        max_waiters_per_mailbox: int | None = None,
        heartbeat: float = 15.0,
        stream_max_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = events
        self.watched = watched
        self.max_wait = max_wait
        self.max_waiters = max_waiters
        self.max_waiters_per_mailbox = max_waiters_per_mailbox or max(1, max_waiters // 10)
        self.heartbeat = heartbeat
        self.stream_max_seconds = stream_max_seconds
        self._clock = clock
        self.waiters = 0
        self._waiting: dict[str, int] = {}

    @property
    def durable(self) -> bool:
        return self.log.durable

    def claim_waiter(self, mailbox: str) -> bool:
        """A place among the clients waiting at once, or False when they are all taken or
        ``mailbox``'s readers hold their share of them."""
        held = self._waiting.get(mailbox, 0)
        if self.waiters >= self.max_waiters or held >= self.max_waiters_per_mailbox:
            return False
        self.waiters += 1
        self._waiting[mailbox] = held + 1
        return True

    def release_waiter(self, mailbox: str) -> None:
        self.waiters -= 1
        held = self._waiting.pop(mailbox) - 1
        if held:
            self._waiting[mailbox] = held

    async def end(self, mailbox: str) -> Cursor:
        """The cursor after the newest event: where a reader of new events only starts."""
        return (await self.log.read(mailbox, None, 0)).last

    async def stream(self, mailbox: str, after: Cursor) -> AsyncIterator[Event | None]:
        """Events after ``after`` as they come, and None for every ``heartbeat`` seconds
        without one, for ``stream_max_seconds``. The caller holds a waiter's place.
        Raises CursorExpiredError, EventLogUnavailableError."""
        ends = self._clock() + self.stream_max_seconds
        cursor = after
        beat = self._clock() + self.heartbeat
        while self._clock() < ends:
            found = await self.log.read(mailbox, cursor, STREAM_PAGE)
            for event in found.events:
                yield event
            cursor = found.last
            now = self._clock()
            if found.events:
                beat = now + self.heartbeat
                continue
            if now >= beat:
                yield None
                beat = now + self.heartbeat
            await self.log.wait(mailbox, cursor, max(0.0, min(beat, ends) - now))

    async def read(
        self, mailbox: str, after: Cursor | None, limit: int, wait: float = 0.0
    ) -> Slice:
        """Up to ``limit`` events after ``after``; when there are none, wait up to ``wait``
        seconds (at most ``max_wait``) for one. Raises CursorExpiredError."""
        found = await self.log.read(mailbox, after, limit)
        wait = min(wait, self.max_wait)
        if found.events or wait <= 0 or not self.claim_waiter(mailbox):
            return found
        try:
            deadline = self._clock() + wait
            while True:
                left = deadline - self._clock()
                if left <= 0:
                    return found
                await self.log.wait(mailbox, found.last, left)
                found = await self.log.read(mailbox, found.last, limit)
                if found.events:
                    return found
        finally:
            self.release_waiter(mailbox)
