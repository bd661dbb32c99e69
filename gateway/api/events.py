"""The events of watched mailboxes: the pull feed (long-polled)."""

from __future__ import annotations

import asyncio
import contextlib
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
from ..keys import EVENTS, METRICS, SEND_TIMEOUT
from . import serializers
from .common import account_of, json_response, query
from .errors import Problem
from .middlewares import request_id_of

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


def _resume_from(request: web.Request) -> Cursor | None:
    """Where a stream resumes: ``Last-Event-ID`` (a reconnecting EventSource sends it),
    else ``?after=``; None: from now on."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        return parse_cursor(header, "Last-Event-ID")
    return parse_cursor(query(request, "after"), "after")


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each event as ``id: <cursor>``, ``event: <type>``, ``data:
    <json>``; a comment line as heartbeat. A client that accepts nothing for the send
    timeout is dropped: what one slow reader holds stays bounded."""
    mailbox, feed = watched_mailbox(request)
    after = _resume_from(request)
    if not feed.claim_waiter(mailbox):
        raise Problem(
            "event-readers-busy", "too many clients are reading events at once; retry shortly"
        )
    try:
        try:
            start = after if after is not None else await feed.end(mailbox)
            # a cursor past retention is refused before the stream starts
            await feed.log.read(mailbox, start, 1)
        except CursorExpiredError:
            raise expired() from None
        except EventLogUnavailableError:
            raise unavailable() from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies pass events on at once
                "X-Request-ID": request_id_of(request),  # streamed: set before it starts
            }
        )
        await response.prepare(request)
        send_timeout = request.app[SEND_TIMEOUT]

        async def send(data: bytes) -> None:
            async with asyncio.timeout(send_timeout):
                await response.write(data)

        try:
            await send(b"retry: 2000\n\n")
            async for event in feed.stream(mailbox, start):
                if event is None:
                    await send(b": heartbeat\n\n")
                    continue
                body = serializers.dumps(serializers.event(event))
                await send(
                    b"id: %s\nevent: %s\ndata: %s\n\n"
                    % (str(event.cursor).encode(), event.kind.encode(), body)
                )
        except (CursorExpiredError, EventLogUnavailableError):
            # the client reconnects with Last-Event-ID and gets a problem answer then
            pass
        except (TimeoutError, ConnectionResetError):
            request.app[METRICS].limited("stream-slow-reader")
            if request.transport is not None:
                request.transport.close()
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    finally:
        feed.release_waiter(mailbox)
