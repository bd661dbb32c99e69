"""One table from failures to RFC 9457 problems (``application/problem+json``).

``detail`` is always our own words: the server's ``-ERR`` text goes to the logs only, and no
credential ever appears. Each problem ``type`` is a stable ``/problems/{slug}`` reference,
documented in the OpenAPI contract.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..pop3 import POP3Error, POP3TimeoutError
from ..service import (
    LoginRateLimitedError,
    LoginThrottledError,
    OAuthError,
    SecretUnavailableError,
    ServiceError,
    TokenUnavailableError,
    connection_failure_words,
    failure_reason,
)

log = logging.getLogger("gateway.api")

PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-request": (400, "Invalid request"),
    "unauthorized": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "cursor-expired": (410, "Cursor expired"),
    "request-too-large": (413, "Request body too large"),
    "message-too-large": (422, "Message too large to parse"),
    "message-too-complex": (422, "Message too complex to parse"),
    "no-mail-server": (422, "No mail server for this user"),
    "mailbox-locked": (423, "Mailbox in use"),
    "login-delay": (429, "Logged in too recently"),
    "login-throttled": (429, "Too many failed logins"),
    "client-login-rate": (429, "Too many failed logins from this client"),
    "upstream-login-rate": (429, "Too many failed logins to this mail server"),
    "upstream-auth-failed": (502, "Mail server rejected the configured credentials"),
    "upstream-error": (502, "Mail server error"),
    "capability-missing": (502, "Mail server lacks a needed capability"),
    "delete-outcome-unknown": (502, "Delete outcome unknown"),
    "delete-failed": (502, "Delete failed"),
    "internal": (500, "Internal error"),
    "upstream-unavailable": (503, "Mail server temporarily unavailable"),
    "mailbox-needs-reauth": (503, "Mailbox needs to be authorized again"),
    "token-unavailable": (503, "OAuth token endpoint unavailable"),
    "pool-exhausted": (503, "Too many sessions in use"),
    "parser-busy": (503, "Message parsers busy"),
    "events-unavailable": (503, "Event log unavailable"),
    "event-readers-busy": (503, "Too many event readers"),
    "upstream-timeout": (504, "Mail server timed out"),
}

#: Seconds suggested in Retry-After where a retry helps.
RETRY_AFTER = {
    "mailbox-locked": 5,
    "login-delay": 60,
    "upstream-unavailable": 30,
    "pool-exhausted": 2,
    "parser-busy": 2,
    "events-unavailable": 5,
    "event-readers-busy": 5,
    # the operator's new refresh token is read without a restart: worth asking again
    "mailbox-needs-reauth": 300,
    # a default: the problem says when the token endpoint is asked again
    "token-unavailable": 30,
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


#: the challenge sent with a 401 on ``me`` (passthrough)
BASIC_CHALLENGE = (("WWW-Authenticate", 'Basic realm="pop3gw", charset="UTF-8"'),)


def _as_is(slug: str) -> Callable[[BaseException, bool], Problem]:
    """A problem whose detail is the failure's own words (our service's, never a server's)."""
    return lambda exc, _passthrough: Problem(slug, str(exc))


def _fixed(slug: str, detail: str) -> Callable[[BaseException, bool], Problem]:
    return lambda _exc, _passthrough: Problem(slug, detail)


def _argument(exc: BaseException, passthrough: bool) -> Problem:
    if passthrough:
        return Problem("invalid-request", str(exc))
    # Only the operator's configured credential can reach the POP3 layer unchecked.
    return Problem(
        "upstream-auth-failed", "the configured credential cannot be sent (CR, LF or NUL)"
    )


def _auth(_exc: BaseException, passthrough: bool) -> Problem:
    if passthrough:
        return Problem(
            "unauthorized",
            "the mail server rejected the user name or password",
            headers=BASIC_CHALLENGE,
        )
    return Problem("upstream-auth-failed", "the mail server rejected the configured login")


def _throttled(slug: str) -> Callable[[BaseException, bool], Problem]:
    def build(exc: BaseException, _passthrough: bool) -> Problem:
        wait = 60.0
        if isinstance(exc, LoginThrottledError | LoginRateLimitedError):
            wait = exc.retry_after
        return Problem(slug, str(exc), headers=(("Retry-After", str(max(1, round(wait)))),))

    return build


def _token_unavailable(exc: BaseException, _passthrough: bool) -> Problem:
    wait = exc.retry_after if isinstance(exc, TokenUnavailableError) else 30.0
    return Problem(
        "token-unavailable", str(exc), headers=(("Retry-After", str(max(1, math.ceil(wait)))),)
    )


def _timeout(exc: BaseException, _passthrough: bool) -> Problem:
    phase = exc.phase if isinstance(exc, POP3TimeoutError) else "network"
    words = connection_failure_words(exc)
    return Problem("upstream-timeout", words or f"the mail server did not answer in time ({phase})")


def _connection(slug: str, fallback: str) -> Callable[[BaseException, bool], Problem]:
    """The server's host:port and what precisely failed, when known."""
    return lambda exc, _passthrough: Problem(slug, connection_failure_words(exc) or fallback)


def _reply_too_large(exc: BaseException, _passthrough: bool) -> Problem:
    command = getattr(exc, "command", None) or "a command"
    limit = getattr(exc, "limit", None)
    size = f"{limit} bytes" if isinstance(limit, int) else "the gateway's limit"
    return Problem("upstream-error", f"the mail server's reply to {command} was larger than {size}")


def _refused(exc: BaseException, _passthrough: bool) -> Problem:
    command = getattr(exc, "command", "a command")
    return Problem("upstream-error", f"the mail server refused {command}")


#: The one table from a failure's ``reason`` (gateway.service.failure_reason) to a problem.
PROBLEMS: dict[str, Callable[[BaseException, bool], Problem]] = {
    # the service's own failures
    "invalid-input": _as_is("invalid-request"),
    "not-found": _as_is("not-found"),
    "too-large": lambda exc, _p: Problem("message-too-large", f"{exc}; fetch it from /raw instead"),
    "parse-failed": lambda exc, _p: Problem(
        "message-too-complex", f"{exc}; fetch it from /raw instead"
    ),
    "parse-busy": _as_is("parser-busy"),
    "capability-missing": _as_is("capability-missing"),
    "login-throttled": _throttled("login-throttled"),
    "client-login-rate": _throttled("client-login-rate"),
    "upstream-login-rate": _throttled("upstream-login-rate"),
    "delete-outcome-unknown": _as_is("delete-outcome-unknown"),
    "delete-failed": _as_is("delete-failed"),
    # OAuth tokens (configured mailboxes): a refused grant until the operator acts; a
    # failing token endpoint is asked again after its backoff
    "needs-reauth": _as_is("mailbox-needs-reauth"),
    "secret-unavailable": _fixed(
        "upstream-auth-failed",
        "the configured credential of this mailbox cannot be read (its secret file is "
        "missing, unreadable or not UTF-8); an operator must fix it",
    ),
    "token-unavailable": _token_unavailable,
    # the pool's
    "pool-timeout": _fixed(
        "pool-exhausted", "every session for this mailbox is busy; retry shortly"
    ),
    "pool-closed": _fixed(
        "pool-exhausted", "the gateway is shutting down; retry on another replica"
    ),
    # the POP3 layer's
    "argument": _argument,
    "auth": _auth,
    "in-use": _fixed("mailbox-locked", "the mailbox is in use by another session"),
    "login-delay": _fixed("login-delay", "the mail server asks to wait before logging in again"),
    "sys-temp": _fixed("upstream-unavailable", "the mail server reported a temporary failure"),
    "sys-perm": _fixed("upstream-error", "the mail server reported a permanent failure"),
    "timeout": _timeout,
    "tls": _connection("upstream-error", "TLS with the mail server failed"),
    "unreachable": _connection(
        "upstream-error", "cannot reach the mail server, or the connection broke"
    ),
    "outcome-unknown": _fixed(
        "upstream-error", "cannot reach the mail server, or the connection broke"
    ),
    "protocol": _fixed("upstream-error", "the mail server answered something that is not POP3"),
    "reply-too-large": _reply_too_large,
    "refused": _refused,
    "update-failed": _refused,
}
_UPSTREAM_OTHER = _fixed("upstream-error", "the mail server could not be used")


def classify(exc: BaseException, *, passthrough: bool) -> Problem | None:
    """The problem for a failure, or None for an unexpected one (a 500)."""
    if isinstance(exc, Problem):
        return exc
    if not isinstance(exc, POP3Error | ServiceError | OAuthError | SecretUnavailableError):
        return None
    build = PROBLEMS.get(failure_reason(exc))
    if build is None:
        return _UPSTREAM_OTHER(exc, passthrough) if isinstance(exc, POP3Error) else None
    return build(exc, passthrough)
