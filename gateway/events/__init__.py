"""New-mail events of watched mailboxes (no HTTP here).

- ``model``: kinds, stable event ids, cursors, what a poll commits;
- ``log``: the event log and seen-set, changed together (:class:`MemoryEventLog`, the
  embedded default);
- ``watcher``: polling watched mailboxes (:class:`Watcher`);
- ``feed``: reading the log for clients (:class:`EventFeed`);
- ``hooks``, ``delivery``, ``redis_delivery``, ``sender``: webhooks (signing, the delivery
  queues and their loop, the one outbound HTTP client).
"""

from __future__ import annotations

from .consume import Consumer, ConsumeStore, MemoryConsumeStore, RedisConsumeStore
from .delivery import (
    DeadLetter,
    Deliverer,
    DeliveryStore,
    MemoryDeliveryStore,
    Pending,
    StepResult,
)
from .feed import MAX_LIMIT, EventFeed
from .hooks import Endpoint, Outcome, RetryPolicy, decode_secret
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
from .redis_delivery import RedisDeliveryStore
from .redis_log import RedisEventLog, RedisWatchLeases
from .sender import AddressPolicy, Sender
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
    "AddressPolicy",
    "Commit",
    "CommitConflictError",
    "ConsumeStore",
    "Consumer",
    "Cursor",
    "CursorExpiredError",
    "DeadLetter",
    "Deliverer",
    "DeliveryStore",
    "Draft",
    "Endpoint",
    "Event",
    "EventFeed",
    "EventLog",
    "EventLogUnavailableError",
    "Health",
    "InvalidCursorError",
    "MemoryConsumeStore",
    "MemoryDeliveryStore",
    "MemoryEventLog",
    "Outcome",
    "Pending",
    "PollResult",
    "RedisConsumeStore",
    "RedisDeliveryStore",
    "RedisEventLog",
    "RedisWatchLeases",
    "RetryPolicy",
    "Sender",
    "Slice",
    "StepResult",
    "WatchLeases",
    "WatchObserver",
    "WatchSpec",
    "WatchState",
    "Watcher",
    "decode_secret",
    "event_id",
    "iso",
]
