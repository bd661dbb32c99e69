"""Event logs: where a watched mailbox's events and seen-set live, changed together.

:class:`EventLog` is what the watcher and the feeds use; :class:`MemoryEventLog` is the
embedded default (one process; it does not survive a restart: after one, the first poll of
each mailbox is a baseline again, and cursors given out before answer ``410``). The Redis
log (``redis_log``) keeps both across restarts and replicas.

Retention is bounded twice: by age (``retention`` seconds) and by count per mailbox. A
cursor from before the oldest event kept (events were dropped after it) is expired:
:class:`CursorExpiredError`, the feed's ``410``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .model import START, Commit, Cursor, Event, WatchState


class CursorExpiredError(Exception):
    """Events after this cursor were dropped by retention: the reader missed some."""


class CommitConflictError(Exception):
    """The mailbox's state changed since the commit's change was worked out (another
    replica polled it, or this one lost its lease): nothing was applied."""


class EventLogUnavailableError(Exception):
    """The log cannot be read or written now (Redis down): nothing was applied."""


@dataclass(frozen=True)
class Slice:
    """Events after a cursor, and where to continue: after the last one returned, or, when
    none, after the cursor asked (or the log's end)."""

    events: list[Event]
    last: Cursor
    more: bool


class EventLog(Protocol):
    #: whether events and seen-sets survive a restart of this process
    durable: bool

    async def state(self, mailbox: str) -> WatchState:
        """The mailbox's seen-set, baseline and health as last committed."""
        ...

    async def commit(self, commit: Commit, *, fence: str | None = None) -> list[Event]:
        """Apply the change and append its events at once, or raise
        :class:`CommitConflictError` (the state version moved, or ``fence``, a lease token,
        is no longer held) or :class:`EventLogUnavailableError` (nothing applied)."""
        ...

    async def read(self, mailbox: str, after: Cursor | None, limit: int) -> Slice:
        """Up to ``limit`` events after ``after`` (None: from the oldest kept)."""
        ...

    async def wait(self, mailbox: str, after: Cursor, timeout: float) -> None:
        """Return when an event after ``after`` may be there, or after ``timeout``."""
        ...


@dataclass
class _Box:
    events: deque[Event] = field(default_factory=deque)
    state: WatchState = field(default_factory=WatchState)
    last: Cursor = START
    #: the newest cursor dropped by retention: a reader before it missed events
    dropped: Cursor = START
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryEventLog:
    """The in-process log: per mailbox, its events (bounded by age and count) and state."""

    durable = False

    def __init__(
        self,
        *,
        retention: float = 7 * 24 * 3600.0,
        max_per_mailbox: int = 100_000,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._retention = retention
        self._max = max_per_mailbox
        self._wall = wall
        self._boxes: dict[str, _Box] = {}

    def _box(self, mailbox: str) -> _Box:
        box = self._boxes.get(mailbox)
        if box is None:
            box = self._boxes[mailbox] = _Box()
        return box

    async def state(self, mailbox: str) -> WatchState:
        state = self._box(mailbox).state
        return WatchState(state.version, set(state.seen), state.baseline, state.health.copy())

    async def commit(self, commit: Commit, *, fence: str | None = None) -> list[Event]:
        box = self._box(commit.mailbox)
        state = box.state
        if state.version != commit.version:
            raise CommitConflictError("the mailbox's state changed meanwhile")
        now = self._wall()
        ms = int(now * 1000)
        appended: list[Event] = []
        for draft in commit.events:
            last = box.last
            cursor = Cursor(ms, 0) if ms > last.ms else Cursor(last.ms, last.n + 1)
            event = Event(draft.id, draft.kind, commit.mailbox, cursor, now, draft.data)
            box.events.append(event)
            box.last = cursor
            appended.append(event)
        state.seen.difference_update(commit.remove)
        state.seen.update(commit.add)
        state.baseline = commit.baseline
        state.health = commit.health.copy()
        state.version += 1
        self._trim(box)
        if appended:
            box.changed.set()
            box.changed = asyncio.Event()
        return appended

    def _trim(self, box: _Box) -> None:
        oldest = self._wall() - self._retention
        events = box.events
        while events and (len(events) > self._max or events[0].at < oldest):
            box.dropped = events.popleft().cursor

    async def read(self, mailbox: str, after: Cursor | None, limit: int) -> Slice:
        box = self._boxes.get(mailbox)
        if box is None:
            return Slice([], after or START, False)
        self._trim(box)
        if after is not None and after < box.dropped:
            raise CursorExpiredError("events after this cursor are no longer kept")
        events = box.events
        start = _start(events, after)
        end = min(len(events), start + limit)
        found = [events[i] for i in range(start, end)]
        more = end < len(events)
        if found:
            return Slice(found, found[-1].cursor, more)
        return Slice([], after if after is not None else box.last, False)

    async def wait(self, mailbox: str, after: Cursor, timeout: float) -> None:
        box = self._box(mailbox)
        if box.last > after or timeout <= 0:
            return
        changed = box.changed
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            return


def _start(events: Sequence[Event], after: Cursor | None) -> int:
    """The index of the first event after ``after`` (events are in cursor order)."""
    if after is None:
        return 0
    lo, hi = 0, len(events)
    while lo < hi:
        mid = (lo + hi) // 2
        if events[mid].cursor <= after:
            lo = mid + 1
        else:
            hi = mid
    return lo
