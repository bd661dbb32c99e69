"""What an event is: its kinds, its stable id, its cursor, and what a poll found.

An event's ``id`` is derived from the mailbox, the kind and what the event is about (the
unique-id of a message, the new set of a reset, the episode of an error): a retry, a replay
or another replica produces the same id, so receivers deduplicate on it. Its ``cursor`` is
its place in the mailbox's log (``<milliseconds>-<n>``, as Redis Stream ids are): the feed
and the stream resume after it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

from ..mail import Address, HeaderSummary
from ..service import encode_id

MESSAGE_NEW: Final = "message.new"
MESSAGE_REMOVED: Final = "message.removed"
MAILBOX_RESET: Final = "mailbox.reset"
MAILBOX_ERROR: Final = "mailbox.error"
MAILBOX_RECOVERED: Final = "mailbox.recovered"
KINDS: Final = (MESSAGE_NEW, MESSAGE_REMOVED, MAILBOX_RESET, MAILBOX_ERROR, MAILBOX_RECOVERED)

_CURSOR = re.compile(r"(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,15})")


class InvalidCursorError(ValueError):
    """Not a cursor this gateway gives out."""


def event_id(mailbox: str, kind: str, about: str) -> str:
    """The stable id of the event of ``kind`` about ``about`` (a unique-id, a set digest,
    an episode) in ``mailbox``."""
    digest = hashlib.sha256(f"pop3gw event v1\0{mailbox}\0{kind}\0{about}".encode()).digest()
    return "evt_" + base64.b32encode(digest[:20]).decode().lower()


@dataclass(frozen=True, order=True)
class Cursor:
    """A place in a mailbox's log; ordered as the log is."""

    ms: int
    n: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.n}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise InvalidCursorError("a cursor looks like 1718000000000-0 (from an event)")
        return cls(int(match.group(1)), int(match.group(2)))


#: before every event
START: Final = Cursor(0, 0)


@dataclass(frozen=True)
class Draft:
    """An event before the log gave it a place."""

    id: str
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """An event in a mailbox's log."""

    id: str
    kind: str
    mailbox: str
    cursor: Cursor
    #: when it was recorded, Unix seconds
    at: float
    data: dict[str, Any]


@dataclass
class Health:
    """Whether polls of a mailbox fail, and which error episode an open one is."""

    failures: int = 0  #: consecutive failed polls
    since: float | None = None  #: wall time of the first of them
    episode: int = 0  #: error episodes reported so far
    reported: bool = False  #: a mailbox.error of the current episode was recorded

    def copy(self) -> Health:
        return Health(self.failures, self.since, self.episode, self.reported)


@dataclass
class WatchState:
    """What the log knows of a watched mailbox: the unique-ids seen, whether the baseline
    was taken, its health; ``version`` counts commits (a commit made from an older state
    is refused)."""

    version: int = 0
    seen: set[str] = field(default_factory=set)
    baseline: bool = False
    health: Health = field(default_factory=Health)


@dataclass(frozen=True)
class Commit:
    """One poll's change, applied at once or not at all: the seen-set's additions and
    removals, the health after the poll, and the events to append."""

    mailbox: str
    version: int  #: the state version the change was worked out from
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    baseline: bool = True
    health: Health = field(default_factory=Health)
    events: tuple[Draft, ...] = ()


def address_fields(value: Address) -> dict[str, str | None]:
    return {"name": value.name, "address": value.address}


def message_fields(uid: str, size: int, headers: HeaderSummary | None) -> dict[str, Any]:
    """A ``message.new``'s data: the listing entry of the message (the same shape)."""
    summary = headers if headers is not None else HeaderSummary()
    return {
        "id": encode_id(uid),
        "uid": uid,
        "size": size,
        "subject": summary.subject,
        "from": None if summary.from_ is None else address_fields(summary.from_),
        "to": [address_fields(a) for a in summary.to],
        "cc": [address_fields(a) for a in summary.cc],
        "reply_to": [address_fields(a) for a in summary.reply_to],
        "date": summary.date,
        "message_id": summary.message_id,
        "in_reply_to": summary.in_reply_to,
        "content_type": summary.content_type,
    }


def set_digest(uids: set[str]) -> str:
    """A digest of a set of unique-ids (what a ``mailbox.reset`` is about)."""
    h = hashlib.sha256()
    for uid in sorted(uids):
        h.update(uid.encode() + b"\n")
    return h.hexdigest()[:32]
