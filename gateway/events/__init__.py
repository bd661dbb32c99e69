"""New-mail events of watched mailboxes (no HTTP here).

- ``model``: kinds, stable event ids, cursors, what a poll commits;
- ``log``: the event log and seen-set, changed together (:class:`MemoryEventLog`, the
  embedded default);
- ``watcher``: polling watched mailboxes (:class:`Watcher`);
- ``feed``: reading the log for clients (:class:`EventFeed`).
"""

from __future__ import annotations

from .feed import MAX_LIMIT, EventFeed
from .log import (
    CommitConflictError,
    CursorExpiredError,
    EventLog,
    EventLogUnavailableError,
    MemoryEventLog,
    Slice,
)
from .model import (
    KINDS,
    MAILBOX_ERROR,
    MAILBOX_RECOVERED,
    MAILBOX_RESET,
    MESSAGE_NEW,
    MESSAGE_REMOVED,
    START,
    Commit,
    Cursor,
    Draft,
    Event,
    Health,
    InvalidCursorError,
    WatchState,
    event_id,
)
from .redis_log import RedisEventLog, RedisWatchLeases
from .watcher import PollResult, Watcher, WatchLeases, WatchObserver, WatchSpec, iso

__all__ = [
    "KINDS",
    "MAILBOX_ERROR",
    "MAILBOX_RECOVERED",
    "MAILBOX_RESET",
    "MAX_LIMIT",
    "MESSAGE_NEW",
    "MESSAGE_REMOVED",
    "START",
    "Commit",
    "CommitConflictError",
    "Cursor",
    "CursorExpiredError",
    "Draft",
    "Event",
    "EventFeed",
    "EventLog",
    "EventLogUnavailableError",
    "Health",
    "InvalidCursorError",
    "MemoryEventLog",
    "PollResult",
    "RedisEventLog",
    "RedisWatchLeases",
    "Slice",
    "WatchLeases",
    "WatchObserver",
    "WatchSpec",
    "WatchState",
    "Watcher",
    "event_id",
    "iso",
]
