"""Webhooks, the parts without a network: endpoints, Standard Webhooks signatures, the
payload, which answers are retried and when.

A delivery is one HTTP POST of the event as JSON, with the headers of the Standard Webhooks
spec: ``webhook-id`` (the event's stable id: receivers deduplicate on it),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` for every active secret, space-separated:
a secret is rotated by adding the new one, waiting for receivers to switch, then removing
the old one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .model import Event

#: answers that mean "try again later" (with 5xx); every other non-2xx is final
RETRYABLE = frozenset({408, 409, 425, 429})
#: first pause after a failed attempt; it doubles up to the endpoint's longest pause
FIRST_BACKOFF = 5.0


@dataclass(frozen=True)
class Endpoint:
    """A configured webhook endpoint. Its secrets are hidden from ``repr``."""

    name: str
    url: str
    secrets: tuple[bytes, ...] = field(repr=False)
    #: watched mailbox ids, or ``"*"``
    mailboxes: frozenset[str]
    kinds: frozenset[str]

    def wants_mailbox(self, mailbox: str) -> bool:
        return "*" in self.mailboxes or mailbox in self.mailboxes

    def wants(self, event: Event) -> bool:
        return self.wants_mailbox(event.mailbox) and event.kind in self.kinds


def decode_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (the prefix is optional)."""
    raw = secret.removeprefix("whsec_")
    return base64.b64decode(raw + "==")


def signature(secrets: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in secrets
    )


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def payload(event: Event) -> bytes:
    """The body of a delivery: the event as the feed and the stream show it."""
    return json.dumps(
        {
            "id": event.id,
            "type": event.kind,
            "mailbox": event.mailbox,
            "cursor": str(event.cursor),
            "timestamp": iso(event.at),
            "data": event.data,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def headers(endpoint: Endpoint, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(endpoint.secrets, event_id, timestamp, body),
    }


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    #: delivered (2xx), retry (5xx, 408, 409, 425, 429, network), final (other answers)
    verdict: str
    status: int | None = None
    #: seconds the receiver asked to wait (``Retry-After``), if it did
    retry_after: float | None = None
    #: our own words (never a secret, never the receiver's body)
    detail: str = ""


def judge(status: int, retry_after: str | None = None, now: float | None = None) -> Outcome:
    """The verdict on an HTTP answer; ``now`` (Unix seconds, the sender's clock) is what a
    ``Retry-After`` date is counted from."""
    if 200 <= status < 300:
        return Outcome("delivered", status)
    wait = parse_retry_after(retry_after, now)
    if status >= 500 or status in RETRYABLE:
        return Outcome("retry", status, wait, f"the receiver answered {status}")
    return Outcome("final", status, None, f"the receiver answered {status}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and len(value) <= 10:
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    reference = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, float(when.timestamp()) - reference)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again: exponential backoff with full jitter from
    :data:`FIRST_BACKOFF`, at least what ``Retry-After`` asked (but no longer than the
    longest pause), for ``retry_for`` seconds after the first attempt."""

    retry_for: float = 72 * 3600.0
    max_backoff: float = 3600.0
    jitter: Callable[[], float] = random.random

    def delay(self, attempts: int, retry_after: float | None) -> float:
        """Seconds before attempt ``attempts + 1``."""
        ceiling = min(self.max_backoff, FIRST_BACKOFF * 2.0 ** min(attempts - 1, 30))
        # half fixed, half random: retries of many deliveries spread, none comes too soon
        pause = ceiling * (0.5 + 0.5 * self.jitter())
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.max_backoff))
        return pause

    def exhausted(self, first_at: float, next_at: float) -> bool:
        return next_at > first_at + self.retry_for


def summary(outcome: Outcome) -> dict[str, Any]:
    return {"verdict": outcome.verdict, "status": outcome.status, "detail": outcome.detail}
