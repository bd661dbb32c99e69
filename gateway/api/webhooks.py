"""Webhook administration (``admin`` scope): the dead letters of an endpoint, and a retry of
one of them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..events import DeadLetter, Deliverer, EventLogUnavailableError, Outcome, iso
from ..keys import DELIVERER, DIRECTORY
from . import serializers
from .auth import require_admin
from .common import json_response, query
from .errors import Problem

#: dead letters per answer at most
MAX_FAILED = 500
DEFAULT_FAILED = 100


def _endpoint(request: web.Request) -> tuple[str, Deliverer]:
    """The webhook of the path, if the caller's admin key is granted every mailbox whose
    events it takes: a dead letter holds an event's data (subjects, addresses), so a key
    of one mailbox never reads another's through a webhook they share. A webhook the key
    may not see looks like an unknown one."""
    key = require_admin(request, request.app[DIRECTORY])
    name = request.match_info["webhook"]
    deliverer = request.app.get(DELIVERER)
    endpoint = None if deliverer is None else deliverer.endpoints.get(name)
    if deliverer is None or endpoint is None or not _covers(key.mailboxes, endpoint.mailboxes):
        raise Problem("not-found", "no webhook with that name is configured")
    return name, deliverer


def _covers(granted: frozenset[str], taken: frozenset[str]) -> bool:
    """Whether a key granted ``granted`` may see every mailbox of ``taken``."""
    if "*" in granted:
        return True
    return "*" not in taken and taken <= granted


def _unavailable() -> Problem:
    return Problem("events-unavailable", "the webhook queues (Redis) cannot be read now; retry")


def _dead(dead: DeadLetter) -> dict[str, Any]:
    return {
        "event": serializers.event(dead.event),
        "attempts": dead.attempts,
        "first_attempt_at": iso(dead.first_at),
        "failed_at": iso(dead.failed_at),
        "reason": dead.reason,
        "last_status": dead.status,
        "detail": dead.detail,
    }


async def list_failed(request: web.Request) -> web.StreamResponse:
    name, deliverer = _endpoint(request)
    text = query(request, "limit")
    limit = DEFAULT_FAILED
    if text is not None:
        if not text.isdigit() or not 1 <= int(text) <= MAX_FAILED:
            raise Problem("invalid-request", f"limit must be a whole number from 1 to {MAX_FAILED}")
        limit = int(text)
    try:
        found, total = await deliverer.store.dead_letters(name, limit)
    except EventLogUnavailableError:
        raise _unavailable() from None
    return json_response({"webhook": name, "failed": [_dead(d) for d in found], "total": total})


def _attempt(outcome: Outcome) -> dict[str, Any]:
    return {"status": outcome.status, "detail": outcome.detail or None}


async def retry_failed(request: web.Request) -> web.StreamResponse:
    name, deliverer = _endpoint(request)
    event_id = request.match_info["event"]
    try:
        result = await deliverer.retry_dead(name, event_id)
    except EventLogUnavailableError:
        raise _unavailable() from None
    if result is None:
        raise Problem("not-found", "no dead letter of this webhook has that event id")
    outcome, attempts = result
    return json_response(
        {
            "webhook": name,
            "event_id": event_id,
            "delivered": outcome.verdict == "delivered",
            "attempts": attempts,
            "attempt": _attempt(outcome),
        }
    )
