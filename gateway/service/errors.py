"""The service's own failures, and the one way every failure is sorted.

Each error class, here and in the POP3 layer (:mod:`gateway.pop3.errors`, the pool's
errors), names its ``reason``: a short stable word. :func:`failure_reason` reads it, and
the three places that tell failures apart (login metrics, ``/check``'s words, the API's
problem types) each keep one table keyed by it.
"""

from __future__ import annotations

from typing import ClassVar

# OAuth token failures are the service's too (a mailbox whose token cannot be had)
from ..oauth.errors import NeedsReauthError as NeedsReauthError
from ..oauth.errors import OAuthError as OAuthError
from ..oauth.errors import SecretUnavailableError as SecretUnavailableError
from ..oauth.errors import TokenUnavailableError as TokenUnavailableError
from ..pop3 import POP3ConnectionError, POP3TimeoutError


class ServiceError(Exception):
    """A request cannot be answered for a reason of the mailbox or the input."""

    reason: ClassVar[str] = "other"


class InvalidInputError(ServiceError):
    """Bad id, cursor or argument: nothing was sent to the POP3 server."""

    reason: ClassVar[str] = "invalid-input"


class MessageNotFoundError(ServiceError):
    """No message with that id in the mailbox (or no such attachment)."""

    reason: ClassVar[str] = "not-found"


class MessageTooLargeError(ServiceError):
    reason: ClassVar[str] = "too-large"

    def __init__(self, size: int | None, limit: int) -> None:
        shown = f"{size} octets" if size is not None else "larger than the limit"
        super().__init__(f"the message is {shown}; messages over {limit} octets are not parsed")
        self.size = size
        self.limit = limit


class ParseFailedError(ServiceError):
    """The message could not be parsed within the gateway's limits (time, memory): it
    is still there, whole, for ``/raw``. ``cause``: ``timeout``, ``crash`` or ``answer``."""

    reason: ClassVar[str] = "parse-failed"

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class ParseBusyError(ServiceError):
    """No message parser was free in time (or none could be started): try again."""

    reason: ClassVar[str] = "parse-busy"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapabilityMissingError(ServiceError):
    reason: ClassVar[str] = "capability-missing"

    def __init__(self, capability: str) -> None:
        super().__init__(f"the POP3 server does not support {capability}")
        self.capability = capability


class DeleteOutcomeUnknownError(ServiceError):
    """QUIT was sent and its answer lost: the deletes may or may not have happened."""

    reason: ClassVar[str] = "delete-outcome-unknown"


class LoginThrottledError(ServiceError):
    """Too many failed logins for this mailbox: the gateway stops trying for a while, so a
    client retrying a wrong password does not get the gateway's address blocked."""

    reason: ClassVar[str] = "login-throttled"

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins for this mailbox; try again in {retry_after:.0f} s"
        )
        self.retry_after = retry_after


class LoginRateLimitedError(ServiceError):
    """Too many failed logins lately from one client address, or to one upstream: the
    gateway stops sending new credentials for a while, before the provider blocks its
    address. A credential known to be good is never held back."""

    reason: ClassVar[str] = "login-rate-limited"
    what: ClassVar[str] = "through this gateway"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins {self.what}; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class ClientLoginRateError(LoginRateLimitedError):
    reason: ClassVar[str] = "client-login-rate"
    what: ClassVar[str] = "from this client address"


class UpstreamLoginRateError(LoginRateLimitedError):
    reason: ClassVar[str] = "upstream-login-rate"
    what: ClassVar[str] = "to this mail server"


class DeleteFailedError(ServiceError):
    """The server refused a delete (DELE or QUIT ``-ERR``): not everything was removed."""

    reason: ClassVar[str] = "delete-failed"


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` of a failure: its class's (the most specific one that names it), or
    ``timeout`` / ``unreachable`` for the built-in socket errors, else ``other``."""
    reason = getattr(type(exc), "reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "unreachable"
    return "other"


def connection_failure_words(exc: BaseException) -> str | None:
    """Our own words for a failure to reach or keep the mail server: its ``host:port`` and
    precisely what went wrong ("connection refused", "the name did not resolve",
    "self-signed certificate"...), never a secret nor the server's text. None when the
    failure is of another kind, or its server is not known."""
    if isinstance(exc, POP3TimeoutError) and exc.address:
        return f"the mail server {exc.address} timed out ({exc.phase})"
    if not isinstance(exc, POP3ConnectionError) or not (exc.address and exc.cause):
        return None
    server = f"the mail server {exc.address}"
    if failure_reason(exc) == "tls":
        return f"TLS with {server} failed: {exc.cause}"
    if exc.connecting:
        return f"cannot reach {server}: {exc.cause}"
    return f"the connection to {server} broke: {exc.cause}"
