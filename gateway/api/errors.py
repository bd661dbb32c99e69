"""One table from failures to RFC 9457 problems (``application/problem+json``).

``detail`` is always our own words: the server's ``-ERR`` text goes to the logs only, and no
credential ever appears. Each problem ``type`` is a stable ``/problems/{slug}`` reference,
documented in the OpenAPI contract.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from ..pop3 import (
    PoolClosedError,
    PoolTimeoutError,
    POP3ArgumentError,
    POP3AuthError,
    POP3ConnectionError,
    POP3Error,
    POP3InUseError,
    POP3LoginDelayError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3SysPermError,
    POP3SysTempError,
    POP3TimeoutError,
    POP3TLSError,
)
from ..service import (
    CapabilityMissingError,
    DeleteFailedError,
    DeleteOutcomeUnknownError,
    InvalidInputError,
    LoginThrottledError,
    MessageNotFoundError,
    MessageTooLargeError,
)

log = logging.getLogger("gateway.api")

PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-request": (400, "Invalid request"),
    "unauthorized": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "message-too-large": (422, "Message too large to parse"),
    "mailbox-locked": (423, "Mailbox in use"),
    "login-delay": (429, "Logged in too recently"),
    "login-throttled": (429, "Too many failed logins"),
    "upstream-auth-failed": (502, "Mail server rejected the configured credentials"),
    "upstream-error": (502, "Mail server error"),
    "capability-missing": (502, "Mail server lacks a needed capability"),
    "delete-outcome-unknown": (502, "Delete outcome unknown"),
    "delete-failed": (502, "Delete failed"),
    "internal": (500, "Internal error"),
    "upstream-unavailable": (503, "Mail server temporarily unavailable"),
    "pool-exhausted": (503, "Too many sessions in use"),
    "upstream-timeout": (504, "Mail server timed out"),
}

#: Seconds suggested in Retry-After where a retry helps.
RETRY_AFTER = {
    "mailbox-locked": 5,
    "login-delay": 60,
    "upstream-unavailable": 30,
    "pool-exhausted": 2,
}


@dataclass(frozen=True)
class Problem(Exception):
    """Raise from a handler to answer with a problem."""

    slug: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()
    extra: tuple[tuple[str, object], ...] = ()


def problem_response(
    slug: str,
    detail: str,
    *,
    request_id: str,
    instance: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    extra: tuple[tuple[str, object], ...] = (),
) -> web.Response:
    status, title = PROBLEM_TYPES[slug]
    body: dict[str, object] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if instance:
        body["instance"] = instance
    out_headers = dict(headers)
    retry = RETRY_AFTER.get(slug)
    if retry is not None:
        out_headers.setdefault("Retry-After", str(retry))
        body["retry_after"] = int(out_headers["Retry-After"])
    body.update(dict(extra))
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/problem+json",
        headers=out_headers,
    )


def classify(exc: BaseException, *, passthrough: bool) -> Problem | None:
    """The problem for a failure, or None for an unexpected one (a 500)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, POP3ArgumentError) and not passthrough:
        # Only the operator's configured credential can reach the POP3 layer unchecked.
        return Problem(
            "upstream-auth-failed", "the configured credential cannot be sent (CR, LF or NUL)"
        )
    if isinstance(exc, InvalidInputError | POP3ArgumentError):
        return Problem("invalid-request", str(exc))
    if isinstance(exc, MessageNotFoundError):
        return Problem("not-found", str(exc))
    if isinstance(exc, MessageTooLargeError):
        return Problem("message-too-large", str(exc) + "; fetch it from /raw instead")
    if isinstance(exc, CapabilityMissingError):
        return Problem("capability-missing", str(exc))
    if isinstance(exc, LoginThrottledError):
        return Problem(
            "login-throttled",
            str(exc),
            headers=(("Retry-After", str(round(exc.retry_after))),),
        )
    if isinstance(exc, DeleteOutcomeUnknownError):
        return Problem("delete-outcome-unknown", str(exc))
    if isinstance(exc, DeleteFailedError):
        return Problem("delete-failed", str(exc))
    if isinstance(exc, POP3Error):
        return _classify_pop3(exc, passthrough=passthrough)
    return None


def _classify_pop3(exc: POP3Error, *, passthrough: bool) -> Problem:
    if isinstance(exc, PoolTimeoutError):
        return Problem("pool-exhausted", "every session for this mailbox is busy; retry shortly")
    if isinstance(exc, PoolClosedError):
        return Problem("pool-exhausted", "the gateway is shutting down; retry on another replica")
    if isinstance(exc, POP3AuthError):
        if passthrough:
            return Problem(
                "unauthorized",
                "the mail server rejected the user name or password",
                headers=(("WWW-Authenticate", 'Basic realm="pop3gw", charset="UTF-8"'),),
            )
        return Problem("upstream-auth-failed", "the mail server rejected the configured login")
    if isinstance(exc, POP3InUseError):
        return Problem("mailbox-locked", "the mailbox is in use by another session")
    if isinstance(exc, POP3LoginDelayError):
        return Problem("login-delay", "the mail server asks to wait before logging in again")
    if isinstance(exc, POP3SysTempError):
        return Problem("upstream-unavailable", "the mail server reported a temporary failure")
    if isinstance(exc, POP3TimeoutError):
        return Problem("upstream-timeout", f"the mail server did not answer in time ({exc.phase})")
    if isinstance(exc, POP3TLSError):
        return Problem("upstream-error", "TLS with the mail server failed")
    if isinstance(exc, POP3ConnectionError):
        return Problem("upstream-error", "cannot reach the mail server, or the connection broke")
    if isinstance(exc, POP3ProtocolError):
        return Problem("upstream-error", "the mail server answered something that is not POP3")
    if isinstance(exc, POP3SysPermError):
        return Problem("upstream-error", "the mail server reported a permanent failure")
    if isinstance(exc, POP3ResponseError):
        return Problem("upstream-error", f"the mail server refused {exc.command}")
    return Problem("upstream-error", "the mail server could not be used")
