"""Failures to obtain an access token. Each names its ``reason`` (a stable word read by
:func:`gateway.service.failure_reason`); messages are our own words, never a token, a
secret or the token endpoint's text."""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    """No access token could be had for a mailbox."""

    reason: ClassVar[str] = "token-unavailable"


class TokenUnavailableError(OAuthError):
    """The token endpoint failed (down, slow, an error answer) and no valid token is left;
    ``retry_after``: seconds until the gateway asks it again."""

    reason: ClassVar[str] = "token-unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NeedsReauthError(OAuthError):
    """The grant was refused for good (``invalid_grant``: revoked, expired, or the consent
    withdrawn; ``invalid_client``: the client secret is wrong). No refresh is tried until
    the mailbox's OAuth configuration changes."""

    reason: ClassVar[str] = "needs-reauth"


class SecretUnavailableError(Exception):
    """A configured secret (a password, token or client secret file) cannot be read: the
    file is missing, unreadable or not UTF-8. An operator must fix it; the file is re-read
    on the next request."""

    reason: ClassVar[str] = "secret-unavailable"


class TokenEndpointError(Exception):
    """One request to a token endpoint failed; ``why`` says how, in our words."""

    def __init__(self, why: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(why)
        self.why = why
        #: the OAuth ``error`` code of an error answer (``invalid_grant``...)
        self.error = error
        self.status = status
