"""The POP3 error tree.

Every error the client raises is a :class:`POP3Error`. Errors that callers commonly catch by
their built-in kind also subclass it (:class:`TimeoutError`, :class:`ConnectionError`,
:class:`ValueError`), so ``except TimeoutError`` does what one expects.

Server refusals (``-ERR``) are :class:`POP3ResponseError`; when the server gives an RFC 2449 /
RFC 3206 response code, the subclass says which (``[IN-USE]`` -> :class:`POP3InUseError`, ...),
and the raw code is kept in ``code`` (unknown codes too).

The server's own ``-ERR`` text is kept in ``server_text`` for logs; ``str(error)`` is our own
words plus that text, and never contains a credential (arguments of USER/PASS/AUTH/APOP are
never put into an error).

Each class names its ``reason``: a short, stable word for the kind of failure (inherited by
subclasses that do not name their own). It is what everything above this layer sorts
failures by (metric labels, the words of ``/check``, the API's problem types), so a failure
is classified once, here, by the class that raised it, never by a chain of ``isinstance``.
"""

from __future__ import annotations

from typing import ClassVar


class POP3Error(Exception):
    """Base of everything the POP3 layer raises."""

    reason: ClassVar[str] = "other"


class POP3ArgumentError(POP3Error, ValueError):
    """An argument cannot be sent: CR, LF or NUL in it, too long, out of range.

    Raised before anything reaches the wire.
    """

    reason: ClassVar[str] = "argument"


class POP3StateError(POP3Error):
    """The command is not allowed in the session's current state (nothing was sent)."""

    reason: ClassVar[str] = "state"


class POP3CapabilityError(POP3Error):
    """The server lacks what the operation needs (STLS, UIDL, a SASL mechanism...)."""

    reason: ClassVar[str] = "capability"


def server_address(host: str, port: int) -> str:
    """``host:port`` as a person writes it (``[::1]:995`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class POP3ConnectionError(POP3Error, ConnectionError):
    """The connection could not be made, or it broke: the session is closed.

    ``address`` is the server's ``host:port`` and ``cause`` says precisely what went wrong
    in a few words of our own (``"connection refused"``, ``"the name did not resolve"``,
    ``"self-signed certificate"``), when they are known: fit to show to whoever asked.
    ``connecting`` is true when the server was never reached (nothing was sent).
    """

    reason: ClassVar[str] = "unreachable"

    def __init__(
        self,
        message: str,
        *,
        address: str | None = None,
        cause: str | None = None,
        connecting: bool = False,
    ) -> None:
        super().__init__(message)
        self.address = address
        self.cause = cause
        self.connecting = connecting


class POP3TLSError(POP3ConnectionError):
    """TLS failed: handshake, certificate verification, fingerprint mismatch."""

    reason: ClassVar[str] = "tls"


class POP3TimeoutError(POP3Error, TimeoutError):
    """A network step took longer than its timeout: the session is closed.

    ``phase`` names the step: ``connect``, ``tls``, ``greeting``, ``command`` or ``idle``;
    ``address`` the server's ``host:port`` when known.
    """

    reason: ClassVar[str] = "timeout"

    def __init__(self, message: str, *, phase: str, address: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.address = address


class POP3ProtocolError(POP3Error):
    """The server sent something that is not POP3: the session is closed."""

    reason: ClassVar[str] = "protocol"


class POP3LineTooLongError(POP3ProtocolError):
    """A status or listing line passed the configured cap: the session is closed."""


class POP3ResponseTooLargeError(POP3ProtocolError):
    """A multi-line reply grew past its byte cap: the session is closed (it is mid-reply).

    ``limit`` is the cap in bytes; ``command`` the verb whose reply it was, when known.
    It has its own ``reason``: the server may well speak POP3, it just said too much.
    """

    reason: ClassVar[str] = "reply-too-large"

    def __init__(self, limit: int, command: str | None = None) -> None:
        what = f"the reply to {command}" if command else "the reply"
        super().__init__(f"{what} is larger than the {limit}-byte limit")
        self.limit = limit
        self.command = command


class POP3InjectionError(POP3TLSError):
    """Bytes arrived between the STLS ``+OK`` and the TLS handshake (response injection)."""


class POP3OutcomeUnknownError(POP3ConnectionError):
    """QUIT was sent with deletions marked, and its answer never came.

    The server may or may not have entered the UPDATE state: the caller must check in a new
    session (deletes are idempotent by unique-id).
    """

    reason: ClassVar[str] = "outcome-unknown"


class POP3ResponseError(POP3Error):
    """The server answered ``-ERR``.

    ``code`` is the RFC 2449 response code without brackets (``"IN-USE"``, ``"SYS/TEMP"``), or
    ``None``; ``server_text`` is the rest of the server's line (for logs, not for end users);
    ``command`` is the verb that was refused.
    """

    reason: ClassVar[str] = "refused"

    def __init__(self, command: str, code: str | None, server_text: str) -> None:
        self.command = command
        self.code = code
        self.server_text = server_text
        shown = f"[{code}] " if code else ""
        super().__init__(f"{command} refused: -ERR {shown}{server_text}".rstrip())

    @property
    def code_parts(self) -> tuple[str, ...]:
        """The hierarchical code split on ``/`` (``SYS/TEMP`` -> ``("SYS", "TEMP")``)."""
        return tuple(self.code.split("/")) if self.code else ()


class POP3AuthError(POP3ResponseError):
    """The credentials were refused (``[AUTH]``, or a plain ``-ERR`` to USER/PASS/AUTH/APOP)."""

    reason: ClassVar[str] = "auth"


class POP3InUseError(POP3ResponseError):
    """``[IN-USE]``: the maildrop is locked by another session; retry later."""

    reason: ClassVar[str] = "in-use"


class POP3LoginDelayError(POP3ResponseError):
    """``[LOGIN-DELAY]``: logged in too soon after the last session; retry later."""

    reason: ClassVar[str] = "login-delay"


class POP3SysTempError(POP3ResponseError):
    """``[SYS/TEMP]``: a temporary server-side failure; retry later."""

    reason: ClassVar[str] = "sys-temp"


class POP3SysPermError(POP3ResponseError):
    """``[SYS/PERM]``: a permanent server-side failure; retrying will not help."""

    reason: ClassVar[str] = "sys-perm"


class POP3UTF8Error(POP3ResponseError):
    """``[UTF8]``: the operation needs UTF8 mode (RFC 6856)."""


class POP3UpdateError(POP3ResponseError):
    """QUIT answered ``-ERR`` in the UPDATE state: some marked messages were not removed."""

    reason: ClassVar[str] = "update-failed"


_CODE_CLASSES: dict[str, type[POP3ResponseError]] = {
    "AUTH": POP3AuthError,
    "IN-USE": POP3InUseError,
    "LOGIN-DELAY": POP3LoginDelayError,
    "SYS/TEMP": POP3SysTempError,
    "SYS/PERM": POP3SysPermError,
    "UTF8": POP3UTF8Error,
}

_AUTH_COMMANDS = frozenset({"USER", "PASS", "AUTH", "APOP"})


def response_error(command: str, code: str | None, server_text: str) -> POP3ResponseError:
    """Build the most specific error for a ``-ERR`` reply to ``command``.

    A hierarchical code matches its most specific known prefix (``SYS/TEMP/DISK`` ->
    :class:`POP3SysTempError`). A code-less ``-ERR`` to a credential command is an
    authentication failure: RFC 3206 codes are optional and servers such as Courier omit them.
    """
    cls: type[POP3ResponseError] = POP3ResponseError
    if code:
        parts = code.upper().split("/")
        for depth in range(len(parts), 0, -1):
            found = _CODE_CLASSES.get("/".join(parts[:depth]))
            if found is not None:
                cls = found
                break
    elif command in _AUTH_COMMANDS:
        cls = POP3AuthError
    if command == "QUIT" and cls is POP3ResponseError:
        cls = POP3UpdateError
    return cls(command, code, server_text)
