"""An asyncio POP3 client: one method per verb (RFC 1939, 2449, 2595, 5034, 6856).

.. code-block:: python

    client = await POP3Client.connect("pop.example.com", 995, tls=TLSMode.IMPLICIT)
    await client.login("alice", "secret")
    count, size = await client.stat()
    uids = await client.uidl()
    headers = await client.top_many(list(uids), 0)   # pipelined when the server allows
    await client.quit()

Rules the client keeps:

- A table says which command is allowed in which state; misuse raises
  :class:`POP3StateError` and nothing reaches the wire.
- Every argument is checked before it is sent (no CR, LF or NUL; RFC 2449's 255-octet command
  line) and raises :class:`POP3ArgumentError` otherwise.
- A timeout, EOF, protocol error or cancellation in the middle of a command closes the
  session (state ``CLOSED``); a ``-ERR`` leaves it usable.
- Pipelining is used only in the TRANSACTION state, only when the server's CAPA lists
  PIPELINING and the caller allows it, with a window bounded by the bytes of commands in
  flight and replies read while commands are written. Nothing is ever pipelined across
  authentication (Courier loses what follows PASS).
- Round trips are few: with ``capa=True`` CAPA goes out as soon as the greeting is read;
  a password login is one ``AUTH PLAIN`` with its initial response when that CAPA lists
  SASL PLAIN (RFC 4616, 5034); the TRANSACTION-state CAPA goes in the same write as the
  first pipelined commands when the AUTHORIZATION-state CAPA listed PIPELINING. A caller
  that remembers what a server listed (``gateway.accounts.KnownServers``) skips the first
  CAPA: ``login(..., assume=...)`` sends AUTH PLAIN right after the greeting. CAPA is never
  pipelined with AUTH: Dovecot then answers AUTH about 40 ms late (its Nagle waits for
  our delayed ACK of the CAPA reply).
- Passwords, tokens and SASL payloads are never logged, kept in errors, or shown in ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import enum
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, NamedTuple, Self

from .errors import (
    POP3ArgumentError,
    POP3CapabilityError,
    POP3ConnectionError,
    POP3Error,
    POP3OutcomeUnknownError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3StateError,
    POP3TLSError,
    response_error,
    server_address,
)
from .protocol import CRLF, POP3Stream, StatusLine

log = logging.getLogger("gateway.pop3")
wire_log = logging.getLogger("gateway.pop3.wire")

#: RFC 2449 section 4: a command line, CRLF included, is at most 255 octets.
MAX_COMMAND_LINE: Final = 255
#: Bound on one SASL continuation line (OAuth tokens are several KB).
MAX_SASL_LINE: Final = 64 * 1024
#: Default cap on a status or listing line. RFC 2449 allows 512 octets; real servers echo
#: long input back, so some slack is kept.
DEFAULT_MAX_LINE: Final = 8192
#: At most this many bytes of pipelined commands are unanswered at any time (about 2,500
#: ``TOP n 0``): the window is sized by bytes in flight, not by a count of commands. It is
#: half of asyncio's default write high-water mark (64 KiB), so a write never waits for the
#: server (a server that stops reading while its output is queued cannot stall us), and
#: replies are read while commands are written: no deadlock. It is refilled once half of it
#: has been answered.
PIPELINE_MAX_BYTES: Final = 32 * 1024
#: A pipelined batch lets other tasks run after this many replies read without waiting
#: (a burst the server answered faster than we read is not one long stretch of the loop).
PIPELINE_YIELD_EVERY: Final = 32
#: Message numbers above this are not sent (no real maildrop comes close).
MAX_MESSAGE_NUMBER: Final = 2**31 - 1

_FORBIDDEN = frozenset(b"\r\n\x00")


class State(enum.Enum):
    """Where a session is (RFC 1939 section 3); UPDATE is transient, inside QUIT."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    CLOSED = "closed"


class TLSMode(enum.StrEnum):
    """How the session is protected."""

    PLAIN = "plain"  #: no TLS (acceptable on loopback; elsewhere only on explicit opt-in)
    IMPLICIT = "tls"  #: TLS from the first byte (port 995, RFC 8314)
    STARTTLS = "starttls"  #: plaintext greeting, then STLS before authenticating (RFC 2595)


_A = State.AUTHORIZATION
_T = State.TRANSACTION
#: Which command may be sent in which state. UTF8 is AUTHORIZATION-only (RFC 6856).
ALLOWED_STATES: Final[dict[str, frozenset[State]]] = {
    "CAPA": frozenset({_A, _T}),
    "QUIT": frozenset({_A, _T}),
    "STLS": frozenset({_A}),
    "USER": frozenset({_A}),
    "PASS": frozenset({_A}),
    "APOP": frozenset({_A}),
    "AUTH": frozenset({_A}),
    "UTF8": frozenset({_A}),
    "STAT": frozenset({_T}),
    "LIST": frozenset({_T}),
    "UIDL": frozenset({_T}),
    "TOP": frozenset({_T}),
    "RETR": frozenset({_T}),
    "DELE": frozenset({_T}),
    "RSET": frozenset({_T}),
    "NOOP": frozenset({_T}),
}
#: Commands that may be pipelined (TRANSACTION state only).
PIPELINABLE: Final = frozenset({"TOP", "RETR", "LIST", "UIDL", "DELE"})
#: Arguments of these commands are secrets: never logged.
_SECRET_ARGS: Final = frozenset({"PASS", "APOP", "AUTH"})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each network step."""

    connect: float = 10.0  #: TCP connect
    tls: float = 10.0  #: a TLS handshake (implicit or STLS)
    command: float = 30.0  #: from sending a command to the first line of its reply
    idle: float = 30.0  #: a silence inside a long (multi-line) reply

    def __post_init__(self) -> None:
        for name in ("connect", "tls", "command", "idle"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name!r} must be positive")


#: Default byte cap on a UIDL or LIST reply. 100,000 messages at RFC 1939's longest
#: unique-id (70 octets) are about 8.3 MB of "number uid" lines; twice that leaves room.
DEFAULT_MAX_LISTING_BYTES: Final = 16 * 1024 * 1024
#: Default byte cap on one TOP reply. ``TOP n 0`` is a header section: a few KB in real
#: mail (Postfix, for one, keeps at most 100 KB of any one header by default). One reply at
#: a time is held while a pipelined burst is read (:meth:`POP3Client.top_each`), so this
#: bounds a listing's reading memory. A larger section (a stranger can send one) is kept
#: to this size and the rest read and dropped, up to :data:`DEFAULT_MAX_TOP_SKIP_BYTES`:
#: the session and its owner's listing go on (the reply is a ``TruncatedBody``).
DEFAULT_MAX_TOP_BYTES: Final = 1024 * 1024
#: Default bound on the whole of one TOP reply, dropped part included: a server that goes
#: on past it (no mail server holds such a header section) is broken or hostile, and the
#: reply fails as too large.
DEFAULT_MAX_TOP_SKIP_BYTES: Final = 256 * 1024 * 1024
#: Default byte cap on a CAPA reply: real ones are under 1 KB (a long SASL list included).
DEFAULT_MAX_CAPA_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """Byte caps on the multi-line replies the client reads into memory (the dot-unstuffed
    body, status line excluded). A reply that grows past its cap raises
    :class:`POP3ResponseTooLargeError` as soon as it does, and closes the session: what is
    held stays flat however long a broken or hostile server goes on.

    RETR is capped per call (:meth:`POP3Client.retr`'s ``max_bytes``) or streamed
    (:meth:`POP3Client.retr_stream`); it is not covered here.
    """

    listing: int = DEFAULT_MAX_LISTING_BYTES  #: UIDL and LIST (also in :meth:`uidl_and_list`)
    top: int = DEFAULT_MAX_TOP_BYTES  #: each TOP reply kept (also in :meth:`top_each`)
    capa: int = DEFAULT_MAX_CAPA_BYTES  #: CAPA
    #: each TOP reply read in all (beyond ``top``, read and dropped)
    top_skip: int = DEFAULT_MAX_TOP_SKIP_BYTES

    def __post_init__(self) -> None:
        for name in ("listing", "top", "capa", "top_skip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reply limit {name!r} must be a positive number of bytes")

    def for_verb(self, verb: str) -> int | None:
        """The cap for a multi-line reply to ``verb`` (None: the caller sets it, as RETR)."""
        if verb in ("UIDL", "LIST"):
            return self.listing
        if verb == "TOP":
            return self.top
        if verb == "CAPA":
            return self.capa
        return None

    def skip_for_verb(self, verb: str) -> int | None:
        """How much of a reply to ``verb`` past its cap is read and dropped (None: none,
        the reply fails as too large)."""
        return max(self.top_skip, self.top) if verb == "TOP" else None


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How TLS is verified. The default verifies against the system's CAs.

    ``cafile``: a PEM bundle to trust instead. ``fingerprint_sha256``: the hex SHA-256 of the
    server certificate (colons allowed); checked in addition to the chain, or instead of it
    when ``verify`` is false (a pinned self-signed server). ``verify=False`` without a
    fingerprint is refused: it would accept any certificate.
    """

    verify: bool = True
    cafile: str | None = None
    fingerprint_sha256: str | None = None
    server_hostname: str | None = None
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2

    def __post_init__(self) -> None:
        if self.fingerprint_sha256 is not None:
            digest = self.fingerprint_sha256.replace(":", "").lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("fingerprint_sha256 must be 64 hex digits (colons allowed)")
            object.__setattr__(self, "fingerprint_sha256", digest)
        if not self.verify and self.fingerprint_sha256 is None:
            raise ValueError("verify=False needs fingerprint_sha256: nothing would be checked")

    def context(self) -> ssl.SSLContext:
        """A client context: verified chain and host name unless pinned by fingerprint."""
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = self.minimum_version
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class Capabilities:
    """A CAPA answer: upper-cased tag -> its arguments. ``supported`` is false when the server
    answered ``-ERR`` to CAPA (an RFC 1939-only server: probe instead of trusting)."""

    items: dict[str, tuple[str, ...]] = field(default_factory=dict)
    supported: bool = True

    @classmethod
    def parse(cls, lines: Sequence[str]) -> Capabilities:
        items: dict[str, tuple[str, ...]] = {}
        for line in lines:
            words = line.split()
            if words:
                items[words[0].upper()] = tuple(words[1:])
        return cls(items)

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, str) and tag.upper() in self.items

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.items

    @property
    def sasl(self) -> tuple[str, ...]:
        return tuple(m.upper() for m in self.items.get("SASL", ()))

    @property
    def login_delay(self) -> int | None:
        """LOGIN-DELAY seconds (RFC 2449 section 6.5), when advertised with a number."""
        args = self.items.get("LOGIN-DELAY", ())
        return int(args[0]) if args and _is_number(args[0]) else None

    @property
    def implementation(self) -> str | None:
        args = self.items.get("IMPLEMENTATION")
        return " ".join(args) if args is not None else None


@dataclass(frozen=True, slots=True)
class QuitResult:
    """What QUIT did. ``updated``: the session was in TRANSACTION and the server answered
    ``+OK`` to QUIT, so the UPDATE state removed every message marked by DELE."""

    updated: bool
    deleted_marks: int
    text: str


class Reply(NamedTuple):
    """One reply to a pipelined command: ``body`` for a multi-line ``+OK``, ``error`` for
    ``-ERR`` (a refused command does not break the session)."""

    ok: bool
    text: str
    body: bytes | None = None
    error: POP3ResponseError | None = None


class _Command(NamedTuple):
    verb: str
    line: bytes
    multiline: bool
    max_bytes: int | None = None  #: the body's byte cap (multi-line replies)
    skip_to: int | None = None  #: past the cap, read and drop up to this (TruncatedBody)


def _check_arg(value: str, what: str) -> bytes:
    """Encode an argument for the wire, refusing what could smuggle another command."""
    data = value.encode("utf-8")
    if _FORBIDDEN.intersection(data):
        raise POP3ArgumentError(f"{what} contains CR, LF or NUL")
    return data


def _check_number(value: int, what: str = "message number", minimum: int = 1) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise POP3ArgumentError(f"{what} must be an integer")
    if not minimum <= value <= MAX_MESSAGE_NUMBER:
        raise POP3ArgumentError(f"{what} {value} is out of range")
    return str(value).encode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


class POP3Client:
    """One POP3 session. Create it with :meth:`connect`; not safe for concurrent use."""

    def __init__(
        self,
        stream: POP3Stream,
        *,
        host: str,
        port: int,
        timeouts: Timeouts,
        tls_config: TLSConfig,
        pipelining: bool,
        pipeline_window: int | None,
        allow_apop: bool,
        on_command: Callable[[str, str, float], None] | None,
        reply_limits: ReplyLimits | None = None,
    ) -> None:
        self._stream = stream
        self.reply_limits = reply_limits or ReplyLimits()
        self.host = host
        self.port = port
        self.timeouts = timeouts
        self._tls_config = tls_config
        self._allow_pipelining = pipelining
        self._window = pipeline_window
        self._allow_apop = allow_apop
        self._on_command = on_command
        self._state = State.AUTHORIZATION
        self._tls = False
        self._user_sent = False
        self._utf8 = False
        self._marked = 0
        self._busy = False
        #: the AUTHORIZATION-state CAPA listed PIPELINING (kept across the login)
        self._advertised_pipelining = False
        #: what this session's CAPA listed before login (None: it asked none), kept after
        #: the login for whoever remembers servers between sessions (:meth:`login`)
        self.authorization_capabilities: Capabilities | None = None
        #: the capabilities :meth:`login` was told to assume for a login without CAPA
        self._assumed: Capabilities | None = None
        self.greeting = ""
        self.apop_timestamp: str | None = None
        self.capabilities: Capabilities | None = None
        #: seconds after its login for which this session may be used: set by whoever
        #: logged in with a credential that expires (an OAuth token); a pool ends the
        #: session by then. None: no such bound
        self.valid_for: float | None = None

    # -- opening -----------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: TLSMode = TLSMode.IMPLICIT,
        tls_config: TLSConfig | None = None,
        timeouts: Timeouts | None = None,
        pipelining: bool = True,
        pipeline_window: int | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        allow_apop: bool = False,
        on_command: Callable[[str, str, float], None] | None = None,
        reply_limits: ReplyLimits | None = None,
        capa: bool = False,
    ) -> POP3Client:
        """Open a session and read the greeting (and, with ``STARTTLS``, upgrade with STLS).

        ``capa=True`` sends CAPA as soon as the greeting is read (after STLS, with
        ``STARTTLS``): :meth:`login` then needs one round trip where the server offers SASL
        PLAIN, and the first pipelined batch after login carries the TRANSACTION-state
        CAPA with it where the server advertised PIPELINING.
        ``pipelining=False`` forces lockstep (for servers that advertise PIPELINING and then
        lose commands). ``pipeline_window`` caps the count of pipelined commands in flight
        (None: only their bytes, :data:`PIPELINE_MAX_BYTES`).
        ``on_command(verb, outcome, seconds)`` observes every command, with outcome ``ok``,
        ``err`` (``-ERR``) or ``failed`` (timeout, drop, protocol error).
        ``reply_limits`` caps the multi-line replies read into memory (:class:`ReplyLimits`;
        the defaults fit mailboxes of 100,000 messages).
        """
        timeouts = timeouts or Timeouts()
        tls_config = tls_config or TLSConfig()
        if pipeline_window is not None and not 1 <= pipeline_window <= 1024:
            raise ValueError("pipeline_window must be between 1 and 1024")
        if max_line < 512:
            raise ValueError("max_line must be at least 512 (RFC 2449)")
        implicit = tls is TLSMode.IMPLICIT
        stream = await POP3Stream.open(
            host,
            port,
            ssl_context=tls_config.context() if implicit else None,
            server_hostname=(tls_config.server_hostname or host) if implicit else None,
            connect_timeout=timeouts.connect,
            tls_timeout=timeouts.tls,
            max_line=max_line,
            idle_timeout=timeouts.idle,
        )
        client = cls(
            stream,
            host=host,
            port=port,
            timeouts=timeouts,
            tls_config=tls_config,
            pipelining=pipelining,
            pipeline_window=pipeline_window,
            allow_apop=allow_apop,
            on_command=on_command,
            reply_limits=reply_limits,
        )
        try:
            if implicit:
                client._tls = True
                client._check_fingerprint()
            await client._read_greeting()
            if tls is TLSMode.STARTTLS:
                await client.stls()
            if capa:
                await client.capa()
        except BaseException:
            client.abort()
            raise
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave politely: QUIT when nothing failed, otherwise drop the connection.

        An exception inside the block never reaches the UPDATE state: DELE marks are rolled
        back by the server when the connection drops.
        """
        if exc_type is None and self._state is not State.CLOSED:
            await self.quit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return (
            f"<POP3Client {self.host}:{self.port} state={self._state.value}"
            f" tls={self._tls} marked={self._marked}>"
        )

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> State:
        if self._state is not State.CLOSED and self._stream.is_closing:
            self._state = State.CLOSED
        return self._state

    @property
    def is_tls(self) -> bool:
        return self._tls

    @property
    def utf8_enabled(self) -> bool:
        return self._utf8

    @property
    def deleted_marks(self) -> int:
        """How many messages this session marked with DELE (and did not RSET)."""
        return self._marked

    @property
    def pipelining_active(self) -> bool:
        """Whether pipelined batches go out pipelined now (TRANSACTION-state CAPA says so)."""
        return (
            self._allow_pipelining
            and self._state is State.TRANSACTION
            and self.capabilities is not None
            and self.capabilities.pipelining
        )

    def abort(self) -> None:
        """Drop the connection without QUIT. Marked deletions are rolled back by the server;
        a read-only session ends this way on providers where QUIT after RETR changes state."""
        self._state = State.CLOSED
        self._stream.abort()

    # -- low level -----------------------------------------------------------------------
    def _require(self, verb: str) -> None:
        state = self.state
        if state is State.CLOSED:
            raise POP3StateError(f"{verb}: the session is closed")
        if state not in ALLOWED_STATES[verb]:
            raise POP3StateError(f"{verb} is not allowed in the {state.value} state")
        if self._busy:
            raise POP3StateError(f"{verb}: another command is in progress on this session")

    @staticmethod
    def _line(verb: str, *args: bytes, limit: int = MAX_COMMAND_LINE) -> bytes:
        line = b" ".join((verb.encode("ascii"), *args)) + CRLF
        if len(line) > limit:
            raise POP3ArgumentError(
                f"{verb} command would be {len(line)} octets; the limit is {limit}"
            )
        return line

    @contextlib.contextmanager
    def _session_guard(self) -> Iterator[None]:
        """Mark the session busy; on anything but a clean reply, close it.

        ``-ERR`` answers are raised as :class:`POP3ResponseError` after the reply was fully
        read, so they pass through with the session intact.
        """
        self._busy = True
        try:
            yield
        except POP3ResponseError:
            raise
        except BaseException:
            self.abort()
            raise
        finally:
            self._busy = False

    def _log_sent(self, cmd: _Command) -> None:
        if wire_log.isEnabledFor(logging.DEBUG):
            shown = cmd.line.rstrip(b"\r\n").decode("utf-8", "replace")
            if cmd.verb in _SECRET_ARGS:
                shown = f"{cmd.verb} <redacted>"
            elif cmd.verb == "":
                shown = "<SASL response redacted>"
            wire_log.debug("C: %s", shown)

    def _observe(self, verb: str, outcome: str, started: float) -> None:
        if self._on_command is not None and verb:
            self._on_command(verb, outcome, time.perf_counter() - started)

    async def _read_status(self, verb: str) -> StatusLine:
        return self._status_of(await self._stream.read_line(self.timeouts.command), verb)

    def _status_of(self, line: bytes, verb: str) -> StatusLine:
        return _status_line(line, verb, wire_log.isEnabledFor(logging.DEBUG))

    async def _execute(self, cmd: _Command) -> tuple[StatusLine, bytes | None]:
        """Send one command and read its whole reply (lockstep).

        Returns the status and, for a multi-line ``+OK``, the body. ``-ERR`` is raised as a
        typed :class:`POP3ResponseError`; the session stays usable.
        """
        self._require(cmd.verb)
        started = time.perf_counter()
        outcome = "failed"
        try:
            with self._session_guard():
                self._log_sent(cmd)
                self._stream.write(cmd.line)
                status = await self._read_status(cmd.verb)
                body = None
                if status.ok and cmd.multiline:
                    body = await self._stream.read_body(
                        max_bytes=cmd.max_bytes, command=cmd.verb, skip_to=cmd.skip_to
                    )
            outcome = "ok" if status.ok else "err"
        finally:
            self._observe(cmd.verb, outcome, started)
        if not status.ok:
            raise response_error(cmd.verb, status.code, status.text)
        return status, body

    async def _simple(self, verb: str, *args: bytes) -> StatusLine:
        status, _ = await self._execute(_Command(verb, self._line(verb, *args), False))
        return status

    def _multi_command(self, verb: str, *args: bytes) -> _Command:
        """A multi-line command with its reply's byte cap (:class:`ReplyLimits`)."""
        limits = self.reply_limits
        return _Command(
            verb,
            self._line(verb, *args),
            True,
            limits.for_verb(verb),
            limits.skip_for_verb(verb),
        )

    async def _multi(self, verb: str, *args: bytes) -> bytes:
        _, body = await self._execute(self._multi_command(verb, *args))
        assert body is not None
        return body

    async def _read_greeting(self) -> None:
        with self._session_guard():
            line = await self._stream.read_line(self.timeouts.command, phase="greeting")
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("S: %s", line[:200].decode("utf-8", "replace"))
        status = StatusLine.parse(line)
        if status.continuation:
            self.abort()
            raise POP3ProtocolError("the server greeted with a SASL continuation")
        if not status.ok:
            self.abort()
            raise response_error("CONNECT", status.code, status.text)
        self.greeting = status.text
        start = status.text.find("<")
        end = status.text.find(">", start + 1)
        if start >= 0 and end > start:
            self.apop_timestamp = status.text[start : end + 1]

    def _check_fingerprint(self) -> None:
        expected = self._tls_config.fingerprint_sha256
        if expected is None:
            return
        ssl_object = self._stream.get_extra_info("ssl_object")
        der = (
            ssl_object.getpeercert(binary_form=True)
            if isinstance(ssl_object, ssl.SSLObject)
            else None
        )
        address = server_address(self.host, self.port)
        if not isinstance(der, bytes):
            self.abort()
            raise POP3TLSError(
                "the server presented no certificate to pin",
                address=address,
                cause="no certificate to compare with the pinned fingerprint",
            )
        actual = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(actual, expected):
            self.abort()
            raise POP3TLSError(
                "the server certificate does not match the pinned fingerprint",
                address=address,
                cause="the certificate does not match the pinned SHA-256 fingerprint",
            )

    # -- AUTHORIZATION -------------------------------------------------------------------
    async def capa(self) -> Capabilities:
        """CAPA (RFC 2449). Answers differ before and after login, so ask in each state.
        A server without CAPA gives ``Capabilities(supported=False)``."""
        try:
            body = await self._multi("CAPA")
        except POP3ResponseError:
            self.capabilities = Capabilities({}, supported=False)
        else:
            lines = body.decode("utf-8", "replace").splitlines()
            self.capabilities = Capabilities.parse(lines)
        return self.capabilities

    async def stls(self) -> None:
        """STLS (RFC 2595): upgrade to TLS before authenticating. Failure is fatal; there is
        never a fallback to plaintext."""
        if self._tls:
            raise POP3StateError("STLS: the session is already protected by TLS")
        if self._user_sent:
            raise POP3StateError("STLS is not allowed after USER")
        try:
            await self._simple("STLS")
        except POP3ResponseError as exc:
            self.abort()
            raise POP3TLSError(
                f"the server refused STLS: {exc.server_text}",
                address=server_address(self.host, self.port),
                cause="the server refused STLS",
            ) from exc
        with self._session_guard():
            await self._stream.start_tls(
                self._tls_config.context(),
                self._tls_config.server_hostname or self.host,
                self.timeouts.tls,
            )
        self._tls = True
        self._check_fingerprint()
        self.capabilities = None  # RFC 2595: what was learned before TLS is void

    async def utf8(self) -> None:
        """UTF8 (RFC 6856): UTF-8 user names and raw 8-bit messages for this session."""
        await self._simple("UTF8")
        self._utf8 = True

    def _logged_in(self) -> None:
        self._state = State.TRANSACTION
        self._user_sent = False
        if self.capabilities is not None:
            self.authorization_capabilities = self.capabilities
        listed = self.capabilities if self.capabilities is not None else self._assumed
        self._advertised_pipelining = listed is not None and listed.pipelining
        self.capabilities = None  # ask again: the TRANSACTION-state list differs

    async def user(self, name: str) -> None:
        """USER (RFC 1939). Prefer :meth:`login`."""
        arg = _check_arg(name, "user name")
        if not arg:
            raise POP3ArgumentError("user name is empty")
        self._user_sent = False
        await self._simple("USER", arg)
        self._user_sent = True

    async def pass_(self, password: str) -> None:
        """PASS (RFC 1939), after a successful USER."""
        if not self._user_sent:
            raise POP3StateError("PASS must follow a successful USER")
        arg = _check_arg(password, "password")
        try:
            await self._execute(_Command("PASS", self._line("PASS", arg), False))
        finally:
            self._user_sent = False
        self._logged_in()

    async def login(self, user: str, password: str, *, assume: Capabilities | None = None) -> None:
        """Log in with a password in the fewest round trips the server allows.

        When the CAPA read in this state lists SASL PLAIN, one ``AUTH PLAIN`` with the
        initial response (RFC 4616, RFC 5034; two steps if the line would pass 255
        octets); otherwise USER then PASS, step by step (never pipelined: Courier loses what
        follows PASS).

        ``assume``: what this server's CAPA listed before login in an earlier session, for a
        session that asked no CAPA (``connect`` without ``capa``). Where it lists SASL
        PLAIN, ``AUTH PLAIN`` goes at once: one round trip fewer. A refusal with a response
        code (``[AUTH]``, ``[IN-USE]``...) is raised as it is. A bare ``-ERR`` (how servers
        refuse a mechanism they do not offer) has CAPA asked: a server that now lists other
        mechanisms gets USER and PASS; otherwise (it still lists PLAIN, it refuses CAPA,
        or the session ended) the refusal is raised: one failed login, as without
        ``assume``. (A server that checks the password of a mechanism it stopped listing,
        and answers a wrong one with a bare ``-ERR``, sees that password twice.)
        Where it lists PIPELINING, the first batch after login carries the next CAPA along.
        """
        _check_arg(password, "password")  # refuse before sending anything
        if not _check_arg(user, "user name"):
            raise POP3ArgumentError("user name is empty")
        capabilities = self.capabilities
        if capabilities is None and assume is not None and "PLAIN" in assume.sasl:
            self._assumed = assume
            try:
                await self.auth_plain(user, password)
                return
            except POP3ResponseError as refused:
                if refused.code is not None:
                    # [AUTH], [IN-USE], [SYS/TEMP]...: about the password or the maildrop,
                    # not the mechanism (servers refuse an unknown one with a bare -ERR)
                    raise
                # (a server that ends the session after a refusal leaves it standing)
                try:
                    capabilities = await self.capa()
                except POP3Error:
                    raise refused from None
                self.authorization_capabilities = capabilities  # learnt, whatever follows
                if not capabilities.supported or "PLAIN" in capabilities.sasl:
                    raise refused from None
            finally:
                self._assumed = None
        if capabilities is not None and "PLAIN" in capabilities.sasl:
            await self.auth_plain(user, password)
            return
        await self.user(user)
        await self.pass_(password)

    async def apop(self, user: str, secret: str) -> None:
        """APOP (RFC 1939 section 7). MD5-based and weak: allowed only when the client was
        created with ``allow_apop=True``."""
        if not self._allow_apop:
            raise POP3CapabilityError("APOP is disabled (it relies on MD5); enable it explicitly")
        if self.apop_timestamp is None:
            raise POP3CapabilityError("the server greeting offers no APOP timestamp")
        name = _check_arg(user, "user name")
        digest = hashlib.md5(  # noqa: S324 - APOP is defined on MD5 (RFC 1939), opt-in only
            self.apop_timestamp.encode("utf-8") + _check_arg(secret, "secret")
        ).hexdigest()
        await self._simple("APOP", name, digest.encode("ascii"))
        self._logged_in()

    async def auth_plain(self, user: str, password: str, authzid: str = "") -> None:
        """AUTH PLAIN (RFC 4616)."""
        payload = b"\0".join(
            (
                _check_arg(authzid, "authorization id"),
                _check_arg(user, "user name"),
                _check_arg(password, "password"),
            )
        )
        await self.auth("PLAIN", payload)

    async def auth_login(self, user: str, password: str) -> None:
        """AUTH LOGIN (the widely deployed, unstandardised username/password exchange)."""
        answers = [_check_arg(user, "user name"), _check_arg(password, "password")]
        await self.auth("LOGIN", None, lambda _challenge: answers.pop(0) if answers else b"")

    async def auth_xoauth2(self, user: str, token: str, *, two_step: bool = False) -> None:
        """AUTH XOAUTH2 (Google, Microsoft): ``user=U^Aauth=Bearer T^A^A``. ``two_step``
        sends it only after the server's empty challenge (Microsoft 365 wants it so);
        otherwise it goes with the command when the line fits in 255 octets."""
        payload = (
            b"user="
            + _check_arg(user, "user name")
            + b"\x01auth=Bearer "
            + _check_arg(token, "token")
            + b"\x01\x01"
        )
        # On failure the server sends a JSON error as a challenge; the client answers empty.
        await self.auth("XOAUTH2", payload, lambda _challenge: b"", initial=not two_step)

    async def auth_oauthbearer(
        self, user: str, token: str, *, host: str | None = None, port: int | None = None
    ) -> None:
        """AUTH OAUTHBEARER (RFC 7628)."""
        gs2 = b"n,a=" + _check_arg(user, "user name").replace(b"=", b"=3D").replace(b",", b"=2C")
        fields = [gs2 + b","]
        fields.append(b"host=" + _check_arg(host or self.host, "host"))
        fields.append(b"port=" + str(port or self.port).encode("ascii"))
        fields.append(b"auth=Bearer " + _check_arg(token, "token"))
        payload = b"\x01".join(fields) + b"\x01\x01"
        # RFC 7628 section 3.2.3: on an error challenge the client sends %x01.
        await self.auth("OAUTHBEARER", payload, lambda _challenge: b"\x01")

    async def auth(
        self,
        mechanism: str,
        initial_response: bytes | None,
        respond: Callable[[bytes], bytes] | None = None,
        *,
        initial: bool = True,
    ) -> None:
        """A SASL exchange (RFC 5034).

        ``initial_response`` is sent with the command when the line fits in 255 octets (and
        ``initial`` is true), else after the server's first (empty) challenge.
        ``respond(challenge)`` answers further challenges (decoded bytes); without it, a
        further challenge is cancelled with ``*``.
        """
        mech = _check_arg(mechanism, "SASL mechanism").upper()
        if not mech or not mech.replace(b"-", b"").replace(b"_", b"").isalnum():
            raise POP3ArgumentError("SASL mechanism name is not valid")
        self._require("AUTH")
        pending = initial_response
        line = b"AUTH " + mech
        if pending is not None and initial:
            candidate = line + b" " + _b64(pending)
            if len(candidate) + 2 <= MAX_COMMAND_LINE:
                line, pending = candidate, None
        started = time.perf_counter()
        outcome = "failed"
        try:
            with self._session_guard():
                self._log_sent(_Command("AUTH", line + CRLF, False))
                self._stream.write(line + CRLF)
                rounds = 0
                while True:
                    status = await self._read_status("AUTH")
                    if not status.continuation:
                        break
                    rounds += 1
                    if rounds > 16:
                        raise POP3ProtocolError("SASL exchange did not end after 16 rounds")
                    if pending is not None:
                        answer, pending = pending, None
                    elif respond is not None:
                        try:
                            challenge = base64.b64decode(status.text, validate=True)
                        except ValueError:  # binascii.Error, or non-ASCII text
                            raise POP3ProtocolError("SASL challenge is not base64") from None
                        answer = respond(challenge)
                    else:
                        self._stream.write(b"*" + CRLF)
                        continue
                    reply = (base64.b64encode(answer) if answer else b"") + CRLF
                    if len(reply) > MAX_SASL_LINE:
                        raise POP3ArgumentError("SASL response is too long")
                    self._log_sent(_Command("", reply, False))
                    self._stream.write(reply)
            outcome = "ok" if status.ok else "err"
        finally:
            self._observe("AUTH", outcome, started)
        if not status.ok:
            raise response_error("AUTH", status.code, status.text)
        self._logged_in()

    # -- TRANSACTION -------------------------------------------------------------------
    async def stat(self) -> tuple[int, int]:
        """STAT: (message count, total octets), deleted messages excluded."""
        status = await self._simple("STAT")
        return _two_ints(status.text, "STAT")

    async def list(self) -> dict[int, int]:
        """LIST: message number -> size in octets (a hint: RETR may differ, RFC 1939 §11)."""
        return {n: int(v) for n, v in _scan_listing(await self._multi("LIST"), "LIST")}

    async def list_one(self, number: int) -> int:
        status = await self._simple("LIST", _check_number(number))
        return _two_ints(status.text, "LIST")[1]

    async def uidl(self) -> dict[int, str]:
        """UIDL: message number -> unique-id (kept byte for byte, decoded as Latin-1)."""
        return dict(_scan_listing(await self._multi("UIDL"), "UIDL"))

    async def uidl_one(self, number: int) -> str:
        status = await self._simple("UIDL", _check_number(number))
        parts = status.text.split()
        if len(parts) != 2 or not _is_number(parts[0]):
            raise POP3ProtocolError("UIDL reply is not 'number unique-id'")
        return parts[1]

    async def top(self, number: int, lines: int = 0) -> bytes:
        """TOP: the header and the first ``lines`` body lines."""
        return await self._multi("TOP", _check_number(number), _check_number(lines, "lines", 0))

    async def retr(self, number: int, *, max_bytes: int | None = None) -> bytes:
        """RETR: the whole message in memory. With ``max_bytes``, a larger message raises
        :class:`POP3ResponseTooLargeError` and closes the session (use :meth:`retr_stream`)."""
        cmd = _Command("RETR", self._line("RETR", _check_number(number)), True)
        self._require("RETR")
        started = time.perf_counter()
        outcome = "failed"
        try:
            with self._session_guard():
                self._log_sent(cmd)
                self._stream.write(cmd.line)
                status = await self._read_status("RETR")
                body = await self._stream.read_body(max_bytes=max_bytes) if status.ok else b""
            outcome = "ok" if status.ok else "err"
        finally:
            self._observe("RETR", outcome, started)
        if not status.ok:
            raise response_error("RETR", status.code, status.text)
        return body

    @contextlib.asynccontextmanager
    async def retr_stream(self, number: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """RETR as a flow of chunks, with flat memory whatever the message size.

        ``-ERR`` is raised on entering. Leaving the block before the whole message was read
        closes the session (the rest of the reply cannot be skipped safely).
        """
        cmd = _Command("RETR", self._line("RETR", _check_number(number)), True)
        self._require("RETR")
        started = time.perf_counter()
        with self._session_guard():
            self._log_sent(cmd)
            self._stream.write(cmd.line)
            try:
                status = await self._read_status("RETR")
            except BaseException:
                self._observe("RETR", "failed", started)
                raise
        if not status.ok:
            self._observe("RETR", "err", started)
            raise response_error("RETR", status.code, status.text)
        chunks = self._stream.iter_body()
        complete = False

        async def flow() -> AsyncGenerator[bytes, None]:
            nonlocal complete
            async for chunk in chunks:
                yield chunk
            complete = True

        self._busy = True
        body = flow()
        try:
            yield body
        finally:
            self._busy = False
            await body.aclose()
            await chunks.aclose()
            if not complete:
                self.abort()
            self._observe("RETR", "ok" if complete else "failed", started)

    async def dele(self, number: int) -> None:
        """DELE: mark for deletion; removed only if QUIT answers ``+OK`` (RFC 1939)."""
        await self._simple("DELE", _check_number(number))
        self._marked += 1

    async def rset(self) -> None:
        """RSET: unmark every message marked in this session."""
        await self._simple("RSET")
        self._marked = 0

    async def noop(self) -> None:
        await self._simple("NOOP")

    async def quit(self) -> QuitResult:
        """QUIT: in TRANSACTION, enter UPDATE and remove what DELE marked.

        ``-ERR`` in UPDATE raises :class:`POP3UpdateError` (some marked messages were not
        removed). If the reply never comes while deletions are marked, the outcome is unknown:
        :class:`POP3OutcomeUnknownError`. The connection is closed in every case.
        """
        state = self.state
        if state is State.CLOSED:
            raise POP3StateError("QUIT: the session is closed")
        marked = self._marked
        try:
            status = await self._simple("QUIT")
        except POP3ResponseError:
            raise
        except POP3ConnectionError as exc:
            if state is State.TRANSACTION and marked:
                raise POP3OutcomeUnknownError(
                    f"QUIT with {marked} deletion(s) marked got no answer: the server may or "
                    "may not have removed them"
                ) from exc
            raise
        except TimeoutError as exc:
            if state is State.TRANSACTION and marked:
                raise POP3OutcomeUnknownError(
                    f"QUIT with {marked} deletion(s) marked timed out: the server may or may "
                    "not have removed them"
                ) from exc
            raise
        finally:
            self._state = State.CLOSED
            await self._stream.close()
        return QuitResult(
            updated=state is State.TRANSACTION, deleted_marks=marked, text=status.text
        )

    # -- pipelined batches -----------------------------------------------------------------
    async def top_many(
        self, numbers: Sequence[int], lines: int = 0
    ) -> builtins.list[bytes | POP3ResponseError]:
        """TOP for each number, pipelined when possible; in order. A refused message gives its
        ``-ERR`` as a :class:`POP3ResponseError` item instead of failing the batch."""
        replies: builtins.list[bytes | POP3ResponseError] = []
        await self.top_each(numbers, lambda _index, reply: replies.append(reply), lines)
        return replies

    async def top_each(
        self,
        numbers: Sequence[int],
        handle: Callable[[int, bytes | POP3ResponseError], None],
        lines: int = 0,
    ) -> None:
        """Like :meth:`top_many`, but each reply goes to ``handle(index, reply)`` as soon as
        it is read, while the later commands of the window are still being answered: the
        caller's work on one reply overlaps the server's on the next ones. An exception from
        ``handle`` ends the session (the pipeline is left half-read)."""
        n_lines = _check_number(lines, "lines", 0)
        # Built in one pass (a burst has one per message): "TOP n l" with both numbers at
        # most 10 digits stays far below MAX_COMMAND_LINE, so no line needs measuring.
        limits = self.reply_limits
        cap, skip = limits.for_verb("TOP"), limits.skip_for_verb("TOP")
        tail = b" " + n_lines + CRLF
        cmds = [
            _Command("TOP", b"TOP " + _check_number(n) + tail, True, cap, skip) for n in numbers
        ]

        def each(index: int, reply: Reply) -> None:
            handle(index, reply.body if reply.body is not None else _error_of(reply))

        await self._pipeline(cmds, each)

    async def retr_many(self, numbers: Sequence[int]) -> builtins.list[bytes | POP3ResponseError]:
        """RETR for each number, pipelined when possible (whole messages in memory)."""
        cmds = [_Command("RETR", self._line("RETR", _check_number(n)), True) for n in numbers]
        replies = await self._pipeline(cmds)
        return [r.body if r.body is not None else _error_of(r) for r in replies]

    async def uidl_and_list(self) -> tuple[dict[int, str], dict[int, int]]:
        """UIDL and LIST together: one round trip when pipelining, else two.

        A refused UIDL raises its :class:`POP3ResponseError` (a server without UIDL); a
        refused LIST too.
        """
        replies = await self._pipeline([self._multi_command("UIDL"), self._multi_command("LIST")])
        for reply in replies:
            if reply.error is not None:
                raise reply.error
        uid_body, size_body = (r.body or b"" for r in replies)
        uids = dict(_scan_listing(uid_body, "UIDL"))
        sizes = {n: int(v) for n, v in _scan_listing(size_body, "LIST")}
        return uids, sizes

    async def dele_many(self, numbers: Sequence[int]) -> builtins.list[POP3ResponseError | None]:
        """DELE for each number, pipelined when possible: ``None`` where it was marked."""
        cmds = [_Command("DELE", self._line("DELE", _check_number(n)), False) for n in numbers]
        replies = await self._pipeline(cmds)
        self._marked += sum(1 for r in replies if r.ok)
        return [r.error for r in replies]

    async def _pipeline(
        self,
        commands: Sequence[_Command],
        on_reply: Callable[[int, Reply], None] | None = None,
    ) -> builtins.list[Reply]:
        """Run TRANSACTION-state commands, pipelined when the server's CAPA lists
        PIPELINING (and the caller allows it), else in lockstep.

        The window is the bytes of commands in flight (:data:`PIPELINE_MAX_BYTES`, and
        ``pipeline_window`` commands when set), refilled once half of it was answered;
        writes never wait on the server and replies are read while commands are written,
        so a server that stops reading while its output is queued (Dovecot does) cannot
        deadlock us. The TRANSACTION-state CAPA, when not known yet, goes in the first write
        if the AUTHORIZATION-state CAPA listed PIPELINING (else it is asked first, alone).
        """
        for verb in {cmd.verb for cmd in commands}:
            if verb not in PIPELINABLE:
                raise POP3ArgumentError(f"{verb} cannot be pipelined")
            self._require(verb)
        if not commands:
            return []
        lead: _Command | None = None
        if self._allow_pipelining and self.capabilities is None:
            if self._advertised_pipelining:
                lead = self._multi_command("CAPA")
            else:
                await self.capa()
        replies: builtins.list[Reply] = []
        sent_at: builtins.list[float] = []
        total = len(commands)
        sent = 0
        in_flight = 0  # bytes of commands sent and not answered yet
        unyielded = 0  # replies read from the buffer since the loop last ran others
        debug = wire_log.isEnabledFor(logging.DEBUG)
        try:
            with self._session_guard():
                while len(replies) < total:
                    if sent < total and (
                        in_flight == 0
                        or (
                            (lead is not None or self.pipelining_active)
                            and self._may_refill(in_flight, sent - len(replies))
                        )
                    ):
                        pipelined = lead is not None or self.pipelining_active
                        upto = self._window_end(commands, sent, in_flight, len(replies), pipelined)
                        batch = commands[sent:upto]
                        data = b"".join(c.line for c in batch)
                        if lead is not None:
                            batch = [lead, *batch]
                            data = lead.line + data
                        if debug:
                            for cmd in batch:
                                self._log_sent(cmd)
                        self._stream.write(data)
                        sent_at.extend([time.perf_counter()] * (upto - sent))
                        in_flight += len(data) - (0 if lead is None else len(lead.line))
                        sent = upto
                        await self._stream.drain(self.timeouts.command)
                    if lead is not None:
                        await self._read_capa_reply(lead, sent_at[0])
                        lead = None
                        continue
                    cmd = commands[len(replies)]
                    taken = self._stream.take_reply(
                        cmd.multiline,
                        max_bytes=cmd.max_bytes,
                        command=cmd.verb,
                        skip_to=cmd.skip_to,
                    )
                    if taken is None:
                        status = await self._read_status(cmd.verb)
                        body = None
                        if status.ok and cmd.multiline:
                            body = await self._stream.read_body(
                                max_bytes=cmd.max_bytes, command=cmd.verb, skip_to=cmd.skip_to
                            )
                    else:
                        # (the wire log's level asked once per burst, not once per reply)
                        status, body = _status_line(taken[0], cmd.verb, debug), taken[1]
                        unyielded += 1
                    in_flight -= len(cmd.line)
                    if status.ok:
                        replies.append(Reply(True, status.text, body))
                        self._observe(cmd.verb, "ok", sent_at[len(replies) - 1])
                    else:
                        error = response_error(cmd.verb, status.code, status.text)
                        replies.append(Reply(False, status.text, None, error))
                        self._observe(cmd.verb, "err", sent_at[len(replies) - 1])
                    if on_reply is not None:
                        on_reply(len(replies) - 1, replies[-1])
                    if unyielded >= PIPELINE_YIELD_EVERY:
                        unyielded = 0
                        await asyncio.sleep(0)
        except BaseException:
            if lead is not None and sent_at:
                self._observe("CAPA", "failed", sent_at[0])
            elif len(replies) < sent:
                self._observe(commands[len(replies)].verb, "failed", sent_at[len(replies)])
            if len(replies) < total:
                # Whatever failed (a reply handler too), replies are still due: the session
                # cannot be used again.
                self.abort()
            raise
        return replies

    def _may_refill(self, in_flight: int, count: int) -> bool:
        """Whether half of the window has been answered (bytes, and count when capped)."""
        if in_flight > PIPELINE_MAX_BYTES // 2:
            return False
        return self._window is None or count < max(1, self._window // 2)

    def _window_end(
        self,
        commands: Sequence[_Command],
        sent: int,
        in_flight: int,
        answered: int,
        pipelined: bool,
    ) -> int:
        """Index after the last command that may be sent now: at most
        :data:`PIPELINE_MAX_BYTES` bytes (and ``pipeline_window`` commands) unanswered, or
        one command in lockstep; always at least one when nothing is in flight."""
        if not pipelined:
            return sent + 1
        limit = len(commands)
        if self._window is not None:
            limit = min(limit, answered + self._window)
        end = sent
        while end < limit:
            in_flight += len(commands[end].line)
            if in_flight > PIPELINE_MAX_BYTES and end > answered:
                break
            end += 1
        return end

    async def _read_capa_reply(self, cmd: _Command, started: float) -> None:
        """The reply to a CAPA sent ahead of a pipelined batch: it sets ``capabilities``
        (a server without CAPA answers ``-ERR``: ``supported=False``)."""
        status = await self._read_status("CAPA")
        if status.ok:
            body = await self._stream.read_body(max_bytes=cmd.max_bytes, command="CAPA")
            lines = body.decode("utf-8", "replace").splitlines()
            self.capabilities = Capabilities.parse(lines)
        else:
            self.capabilities = Capabilities({}, supported=False)
        self._observe("CAPA", "ok" if status.ok else "err", started)

    # -- probing -------------------------------------------------------------------------
    async def ensure_transaction_capabilities(self) -> Capabilities:
        """The TRANSACTION-state CAPA, asked once per session."""
        if self.capabilities is None:
            return await self.capa()
        return self.capabilities


def _status_line(line: bytes, verb: str, debug: bool) -> StatusLine:
    """A reply's status line, parsed (and written to the wire log when ``debug``); a SASL
    continuation is a protocol error except in reply to AUTH."""
    status = StatusLine.parse(line)
    if debug:
        wire_log.debug("S: %s", line[:200].decode("utf-8", "replace"))
    if status.continuation and verb != "AUTH":
        raise POP3ProtocolError(f"unexpected SASL continuation in reply to {verb}")
    return status


def _error_of(reply: Reply) -> POP3ResponseError:
    if reply.error is not None:
        return reply.error
    raise POP3ProtocolError("a multi-line reply had no body")  # pragma: no cover


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" or "١", which ``int`` refuses or
    reads as something else."""
    return text.isascii() and text.isdigit()


def _two_ints(text: str, verb: str) -> tuple[int, int]:
    parts = text.split()
    if len(parts) < 2 or not _is_number(parts[0]) or not _is_number(parts[1]):
        raise POP3ProtocolError(f"{verb} reply is not two numbers")
    return int(parts[0]), int(parts[1])


def _scan_listing(body: bytes, verb: str) -> Iterator[tuple[int, str]]:
    """Lines of ``number value`` (LIST, UIDL). Values are decoded as Latin-1, which keeps
    every byte: unique-ids are printable ASCII by RFC, but servers are not always right."""
    for raw in body.splitlines():
        parts = raw.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise POP3ProtocolError(f"{verb} listing line is not 'number value'")
        value = parts[1].decode("latin-1")
        if verb == "LIST" and not parts[1].isdigit():
            raise POP3ProtocolError("LIST listing size is not a number")
        yield int(parts[0]), value
