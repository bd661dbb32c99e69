"""The events of watched mailboxes: the pull feed (long-polled)."""

from __future__ import annotations

import math

from aiohttp import web

from ..events import (
    MAX_LIMIT,
    Cursor,
    CursorExpiredError,
    EventFeed,
    EventLogUnavailableError,
    InvalidCursorError,
)
from ..keys import EVENTS
from . import serializers
from .common import account_of, json_response, query
from .errors import Problem

#: the feed's page size when none is asked
DEFAULT_LIMIT = 100


def watched_mailbox(request: web.Request) -> tuple[str, EventFeed]:
    """The configured, watched mailbox of the path (the caller may ``read`` it)."""
    account = account_of(request, "read")
    feed = request.app[EVENTS]
    if account.passthrough or account.mailbox_id not in feed.watched:
        raise Problem(
            "not-found",
            "this mailbox is not watched: events exist only for configured mailboxes with "
            "watch = true",
        )
    return account.mailbox_id, feed


def parse_cursor(text: str | None, name: str) -> Cursor | None:
    if text is None:
        return None
    try:
        return Cursor.parse(text)
    except InvalidCursorError as exc:
        raise Problem("invalid-request", f"{name}: {exc}") from None


def _limit(request: web.Request) -> int:
    text = query(request, "limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise Problem("invalid-request", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _wait(request: web.Request, most: float) -> float:
    text = query(request, "wait")
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not math.isfinite(wait) or wait < 0 or len(text) > 20:
        raise Problem("invalid-request", "wait must be a number of seconds, 0 or more")
    return min(wait, most)


def expired() -> Problem:
    return Problem(
        "cursor-expired",
        "events after this cursor are no longer kept (retention); start again without a "
        "cursor, from the oldest event kept",
    )


def unavailable() -> Problem:
    return Problem("events-unavailable", "the event log (Redis) cannot be read now; retry")


async def list_events(request: web.Request) -> web.StreamResponse:
    mailbox, feed = watched_mailbox(request)
    after = parse_cursor(query(request, "after"), "after")
    limit = _limit(request)
    wait = _wait(request, feed.max_wait)
    try:
        found = await feed.read(mailbox, after, limit, wait)
    except CursorExpiredError:
        raise expired() from None
    except EventLogUnavailableError:
        raise unavailable() from None
    return json_response(serializers.event_page(mailbox, found, feed.durable))
