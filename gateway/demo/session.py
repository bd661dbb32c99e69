"""One POP3 connection: its transport (bounded input, flow control, STLS) and the dialogue.

The dialogue is RFC 1939 (USER/PASS, APOP, TRANSACTION commands, UPDATE on QUIT), RFC 2449
(CAPA, response codes, pipelining: commands are read and answered strictly in order),
RFC 2595 (STLS), RFC 5034 (AUTH PLAIN, LOGIN, XOAUTH2, OAUTHBEARER) and RFC 6856 (UTF8).
Which optional parts a server speaks, and how its replies are worded, is the server's
configuration (`POP3Server`); every reply passes through the server's hooks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import enum
import functools
import hashlib
import hmac
import itertools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .mailbox import Mailbox, Message
    from .server import POP3Server

__all__ = ["Answer", "Closed", "ConnectionRecord", "Session", "Then", "Wording"]

_READ_HIGH_WATER = 64 * 1024
_READ_LOW_WATER = 16 * 1024
"""Input waiting to be parsed is capped: reading from the socket pauses above the high mark."""
CLOSE_TIMEOUT = 1.0
"""How long a closing connection may take to flush its replies before it is aborted."""
_LINGER_TIMEOUT = 1.0
_LINGER_BYTES = 64 * 1024
"""After a final error reply, input is read and dropped for this long (or this much) so
that closing does not reset the connection before the client has read the reply."""
HANDSHAKE_TIMEOUT = 10.0
TLS_SHUTDOWN_TIMEOUT = 2.0

_NUMBER = re.compile(r"[0-9]{1,9}")
_ARITY = {
    "STAT": (0,),
    "LIST": (0, 1),
    "UIDL": (0, 1),
    "TOP": (2,),
    "RETR": (1,),
    "DELE": (1,),
    "RSET": (0,),
    "NOOP": (0,),
}
"""How many arguments each TRANSACTION command takes (separated by single spaces)."""
OPTIONAL_COMMANDS = frozenset({"APOP", "STLS", "UTF8"})
"""AUTHORIZATION commands a server speaks only when configured to."""
_AUTHORIZATION = frozenset({"USER", "PASS", "AUTH", "CAPA", "QUIT"}) | OPTIONAL_COMMANDS
_TRANSACTION = frozenset({*_ARITY, "CAPA", "QUIT"})
MECHANISMS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
"""The SASL mechanisms the dialogue implements."""
_timestamps = itertools.count(1)


class Then(enum.Enum):
    """What the session does after sending an `Answer`'s data."""

    CONTINUE = enum.auto()
    CLOSE = enum.auto()
    """Close politely (queued output leaves first)."""
    ABORT = enum.auto()
    """Reset the connection; queued output is lost."""
    STALL = enum.auto()
    """Never answer again; keep reading (and reporting) input until the client leaves."""
    STLS = enum.auto()
    """Write the data in one piece and start the TLS handshake (the STLS reply)."""


@dataclass(frozen=True)
class Answer:
    """What the session sends for the greeting or a command, and what it does next."""

    data: bytes
    then: Then = Then.CONTINUE


Step = Callable[[], Awaitable[Answer]]
"""Runs the greeting or a command for real (with its effects) and returns its answer."""


@dataclass
class ConnectionRecord:
    """What one connection did; kept after it closed."""

    received: list[bytes] = field(default_factory=list)
    """Input lines as received, ending included; filled by whoever overrides
    `POP3Server.line_received` (the server itself keeps none)."""
    timestamp: bytes = b""
    """The APOP timestamp of the greeting (empty without one)."""
    user: str | None = None
    """Set once logged in."""
    tls: bool = False
    utf8: bool = False
    updated: bool = False
    """QUIT from TRANSACTION was processed and the deletions applied."""
    closed: bool = False
    turns: int = 0
    """Times the session waited for input with every command answered and nothing left
    to read: after the greeting, each is a round trip the client paid."""


@dataclass(frozen=True)
class Wording:
    """The text of each reply, after ``+OK `` or ``-ERR ``; response codes included.

    Texts are `str.format` templates; the fields each may use are named in its comment
    (`messages` is a count with its noun: ``1 message``, ``7 messages``). The defaults are
    the demo server's.
    """

    quit: str = "pop3gw-demo signing off"
    quit_update: str = "pop3gw-demo signing off ({left} left)"  # left, count
    user: str = "send PASS"
    user_missing: str = "USER needs a name"
    user_first: str = "send USER first"
    logged_in: str = "{user}'s maildrop has {messages} ({octets} octets)"  # count, too
    auth_failed: str = "[AUTH] invalid user name or password"
    locked: str = "[IN-USE] Mailbox is locked by another session"
    apop_unavailable: str = "APOP not available"
    stls: str = "Begin TLS negotiation"
    stls_unavailable: str = "STLS not available"
    utf8: str = "UTF8 enabled"
    sasl_list: str = "SASL mechanisms follow"
    sasl_unsupported: str = "unsupported SASL mechanism {mechanism!a}"
    sasl_arguments: str = "AUTH takes a mechanism and at most one initial response"
    sasl_cancelled: str = "authentication cancelled"
    sasl_base64: str = "invalid base64 in the SASL response"
    plain_malformed: str = "malformed PLAIN response"
    plain_authzid: str = "[AUTH] cannot act as another user"
    unknown: str = "unknown command"
    wrong_state: str = "{verb} is not valid in the {state} state"
    wrong_arguments: str = "wrong number of arguments for {verb}"
    bad_number: str = "invalid message number {arg!a}"
    bad_lines: str = "invalid number of lines {arg!a}"
    no_such_message: str = "no such message, only {count} in maildrop"
    deleted: str = "message {number} already deleted"
    list_all: str = "{messages} ({octets} octets)"  # count, too
    uidl_all: str = "unique-id listing follows"
    retr: str = "{octets} octets"
    top: str = "top of message follows"
    dele: str = "message {number} deleted"
    rset: str = "maildrop has {messages} ({octets} octets)"  # count, too
    line_too_long: str = "line too long"
    too_many_connections: str = "[SYS/TEMP] too many connections, try again later"


class Closed(Exception):
    """The connection is gone or being closed; unwind the session."""


class _LineTooLong(Exception):
    pass


class _AuthFailed(Exception):
    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _strip_eol(line: bytes) -> bytes:
    return line.removesuffix(b"\n").removesuffix(b"\r") if line.endswith(b"\n") else line


def _split_lines(data: bytes) -> list[bytes]:
    """Lines with their endings kept (LF ends a line; a final partial line is kept)."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _fields(data: bytes) -> dict[bytes, bytes]:
    """`key=value` pairs separated by ^A (XOAUTH2, OAUTHBEARER)."""
    pairs = (part.partition(b"=") for part in data.split(b"\x01"))
    return {key: value for key, sep, value in pairs if sep}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Session(asyncio.Protocol):
    """One connection: protocol callbacks feed a bounded queue; a task runs the dialogue.

    Hooks may use `state`, `record`, `eol`, the reply builders `ok`/`err`/`multi`,
    `write`, `discard_input` and `close`.
    """

    def __init__(self, server: POP3Server) -> None:
        self.server = server
        self.record = ConnectionRecord(tls=server.implicit_tls)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self.state = "AUTHORIZATION"
        self.stalled = False
        self.eol = b"\r\n"
        """What ends every line this session sends (a `connected` hook may change it)."""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._buf = bytearray()
        self._eof = False
        self._reading_paused = False
        self._data = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._user: str | None = None
        self._mailbox: Mailbox | None = None
        self._snapshot: list[Message] = []
        self._deleted: set[int] = set()
        """Message numbers marked by DELE (1-based)."""

    # ----------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server._accept(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        self._data.set()
        if self._queued > _READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._data.set()
        # Keep the write side open on plain TCP to answer what was sent before the EOF.
        return not self.record.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_lost()

    def _mark_lost(self) -> None:
        self.record.closed = True
        self.server._forget(self)
        self.lost.set()
        self._data.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ----------------------------------------------------------------- transport

    def close(self, *, abort: bool = False) -> None:
        """Close politely (queued output leaves first), or reset with `abort=True`."""
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    async def write(self, data: bytes) -> None:
        """Write `data` and wait while the transport's buffer is full (bounded by the
        server's `idle_timeout`). Raises `Closed` once the connection is gone."""
        if self.lost.is_set() or self.transport is None or self.transport.is_closing():
            raise Closed
        self.transport.write(data)
        if not self._writable.is_set():
            async with asyncio.timeout(self.server.idle_timeout):
                await self._writable.wait()
        if self.lost.is_set():
            raise Closed

    async def send(self, data: bytes) -> None:
        if data:
            await self.server.send(self, data)

    def discard_input(self, *, queued: bool = True) -> None:
        """Throw away input not yet parsed: the current packet's rest, and with `queued`
        everything received so far. Discarded lines are reported all the same."""
        data = bytes(self._buf)
        self._buf.clear()
        if queued:
            data += b"".join(self._chunks)
            self._chunks.clear()
            self._queued = 0
            self._resume_reading()
        for line in _split_lines(data):
            self.server.line_received(self, line)

    def _resume_reading(self) -> None:
        if self._reading_paused and self._queued < _READ_LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def pending_lines(self) -> int:
        """Complete input lines received and not read yet: pipelined commands waiting for
        their turn."""
        return self._buf.count(b"\n") + sum(chunk.count(b"\n") for chunk in self._chunks)

    async def _next_chunk(self) -> bytes | None:
        """The next piece of input; None at EOF. TimeoutError after `idle_timeout`."""
        waited = not self._chunks and not self._buf
        while not self._chunks:
            if self._eof or self.lost.is_set():
                return None
            self._data.clear()
            async with asyncio.timeout(self.server.idle_timeout):
                await self._data.wait()
        chunk = self._chunks.popleft()
        if waited:
            self.record.turns += 1
        self._queued -= len(chunk)
        self._resume_reading()
        return chunk

    async def _read_line(self) -> bytes | None:
        """The next input line with its ending; None at EOF.

        Raises _LineTooLong for a line longer than `max_line_length` octets (ending
        included); every line, partial or too long, is reported to `line_received`.
        """
        limit = self.server.max_line_length
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                self.server.line_received(self, line)
                if end + 1 > limit:
                    raise _LineTooLong
                return line
            if len(self._buf) >= limit:
                self.server.line_received(self, bytes(self._buf))
                self._buf.clear()
                raise _LineTooLong
            chunk = await self._next_chunk()
            if chunk is None:
                if self._buf:
                    self.server.line_received(self, bytes(self._buf))
                    self._buf.clear()
                return None
            self._buf += chunk

    async def _linger(self) -> None:
        """Half-close, then drop input until the client closes (bounded).

        Closing a socket with unread input resets the connection, and a reset can
        destroy the reply the client has not read yet.
        """
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        received = 0
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_LINGER_TIMEOUT):
                while received < _LINGER_BYTES:
                    chunk = await self._next_chunk()
                    if chunk is None:
                        break
                    received += len(chunk)

    async def _finish(self) -> None:
        """Close politely; reset the connection if that takes too long."""
        try:
            self.close()
            if not self.lost.is_set():
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await self.lost.wait()
                except TimeoutError:
                    self.close(abort=True)
        finally:
            if self._mailbox is not None and self._mailbox.locked_by is self.record:
                self._mailbox.locked_by = None
            self.server._forget(self)

    async def _start_tls(self, reply: bytes) -> None:
        assert self.transport is not None
        assert self.server.tls_context is not None
        # One write, then the handshake without yielding to the loop in between: the
        # client's ClientHello must reach the TLS layer, not this protocol.
        self.transport.write(reply)
        self.discard_input()
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport,
                self,
                self.server.tls_context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )
        except BaseException as exc:
            # A handshake that fails (or is cancelled) closes the socket without telling
            # this protocol: connection_lost is only forwarded after a completed handshake.
            self._mark_lost()
            if isinstance(exc, OSError):
                raise Closed from None
            raise
        if transport is None:  # the client went away during the handshake
            self._mark_lost()
            raise Closed
        self.transport = transport
        self.record.tls = True

    # ----------------------------------------------------------------- reply builders

    def ok(self, text: str = "") -> bytes:
        return (b"+OK " + text.encode("utf-8", "surrogateescape") if text else b"+OK") + self.eol

    def err(self, text: str) -> bytes:
        return (b"-ERR " + text.encode("utf-8", "surrogateescape") if text else b"-ERR") + self.eol

    def multi(self, first: bytes, lines: Iterable[bytes]) -> bytes:
        """A multi-line reply: dot-stuffed lines, then the terminating ``.`` line."""
        eol = self.eol
        out = [first]
        out.extend(b"." + line + eol if line[:1] == b"." else line + eol for line in lines)
        out.append(b"." + eol)
        return b"".join(out)

    # ----------------------------------------------------------------- entry points

    async def run(self) -> None:
        try:
            await self._dialogue()
        except (Closed, OSError):  # includes TimeoutError: the autologout
            pass
        except Exception as exc:
            self.server.session_failed(self, exc)
        finally:
            await self._finish()

    async def reject(self) -> None:
        """Over the connection limit: an error instead of a greeting, then close."""
        try:
            await self.send(self.err(self.server.wording.too_many_connections))
            await self._linger()
        except (Closed, OSError):
            pass
        finally:
            await self._finish()

    # ----------------------------------------------------------------- dialogue

    async def _dialogue(self) -> None:
        await self._answer(await self.server.on_greeting(self, self._greeting))
        while True:
            try:
                line = await self._read_line()
                if line is None:
                    return
                if self.stalled:
                    continue
                verb, _, arg = _text(_strip_eol(line)).partition(" ")
                verb = verb.upper()
                run = functools.partial(self._execute, verb, arg)
                answer = await self.server.on_command(self, verb, arg, run)
            except _LineTooLong:
                if self.stalled:
                    continue
                await self.send(self.err(self.server.wording.line_too_long))
                await self._linger()
                return
            await self._answer(answer)

    async def _answer(self, answer: Answer) -> None:
        if answer.then is Then.STLS:
            await self._start_tls(answer.data)
            return
        await self.send(answer.data)
        if answer.then is Then.STALL:
            self.stalled = True
        elif answer.then is not Then.CONTINUE:
            self.close(abort=answer.then is Then.ABORT)
            raise Closed

    async def _greeting(self) -> Answer:
        greeting = self.server.greeting
        if greeting.startswith(b"+OK"):
            found = re.search(rb"<[^<>]*>", greeting)
            if found:
                self.record.timestamp = found.group()
            elif self.server.apop:
                stamp = f"<{os.getpid()}.{next(_timestamps)}.{int(time.time())}"
                self.record.timestamp = f"{stamp}@{self.server.implementation}>".encode()
                greeting = greeting.rstrip(b"\r\n") + b" " + self.record.timestamp
        if not greeting.endswith(b"\n"):
            greeting += self.eol
        return Answer(greeting, Then.CLOSE if greeting.startswith(b"-ERR") else Then.CONTINUE)

    async def _execute(self, verb: str, arg: str) -> Answer:
        """The answer to one command (with its effects)."""
        wording = self.server.wording
        if verb not in (_AUTHORIZATION - OPTIONAL_COMMANDS) | self.server.commands | _TRANSACTION:
            return Answer(self.err(wording.unknown))
        allowed = _AUTHORIZATION if self.state == "AUTHORIZATION" else _TRANSACTION
        if verb not in allowed:
            return Answer(self.err(wording.wrong_state.format(verb=verb, state=self.state)))
        match verb:
            case "QUIT":
                return self._quit()
            case "CAPA":
                lines = [c.encode() for c in self.server.capabilities(self)]
                return Answer(self.multi(self.ok("Capability list follows"), lines))
            case "USER":
                return Answer(self._user_command(arg))
            case "PASS":
                return Answer(self._pass(arg))
            case "APOP":
                return Answer(self._apop(arg))
            case "AUTH":
                return Answer(await self._auth(arg))
            case "STLS":
                if self.server.tls_context is None or self.record.tls:
                    return Answer(self.err(wording.stls_unavailable))
                return Answer(self.ok(wording.stls), Then.STLS)
            case "UTF8":
                self.record.utf8 = True
                return Answer(self.ok(wording.utf8))
        return Answer(self._transaction(verb, arg.split(" ") if arg else []))

    def _quit(self) -> Answer:
        wording = self.server.wording
        if self.state != "TRANSACTION":
            return Answer(self.ok(wording.quit), Then.CLOSE)
        self.state = "UPDATE"
        assert self._mailbox is not None
        deleted = [self._snapshot[n - 1] for n in self._deleted]
        left = self.server.update(self._mailbox, deleted)
        self.record.updated = True
        text = wording.quit_update.format(left=_plural(left, "message"), count=left)
        return Answer(self.ok(text), Then.CLOSE)

    # --- AUTHORIZATION

    def _user_command(self, arg: str) -> bytes:
        if not arg:
            self._user = None
            return self.err(self.server.wording.user_missing)
        self._user = arg
        return self.ok(self.server.wording.user)

    def _pass(self, arg: str) -> bytes:
        """PASS takes the rest of the line: a password may contain spaces (RFC 1939 7)."""
        user, self._user = self._user, None
        if user is None:
            return self.err(self.server.wording.user_first)
        if not self.server.check_password(user, arg):
            return self.err(self.server.wording.auth_failed)
        return self._log_in(user)

    def _apop(self, arg: str) -> bytes:
        wording = self.server.wording
        if not self.record.timestamp:
            return self.err(wording.apop_unavailable)
        user, _, digest = arg.rpartition(" ")
        password = self.server.users.get(user)
        if password is None:
            return self.err(wording.auth_failed)
        expected = hashlib.md5(
            self.record.timestamp + password.encode(), usedforsecurity=False
        ).hexdigest()
        if not hmac.compare_digest(digest.lower().encode("utf-8", "replace"), expected.encode()):
            return self.err(wording.auth_failed)
        return self._log_in(user)

    def _log_in(self, user: str) -> bytes:
        mailbox = self.server.mailbox_for(user)
        if self.server.lock:
            if mailbox.locked_by is not None:
                return self.err(self.server.wording.locked)
            mailbox.locked_by = self.record
        self._mailbox = mailbox
        self._snapshot = list(mailbox.messages)
        self._deleted = set()
        self.state = "TRANSACTION"
        self.record.user = user
        count = len(self._snapshot)
        octets = sum(self.server.listed_size(m) for m in self._snapshot)
        text = self.server.wording.logged_in.format(
            user=user, count=count, messages=_plural(count, "message"), octets=octets
        )
        return self.ok(text)

    # --- AUTH (RFC 5034)

    async def _auth(self, arg: str) -> bytes:
        wording = self.server.wording
        mechanisms = self.server.mechanisms
        if not arg:
            return self.multi(self.ok(wording.sasl_list), [m.encode() for m in mechanisms])
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() not in mechanisms:
            return self.err(wording.sasl_unsupported.format(mechanism=mechanism[:20]))
        if " " in initial:
            return self.err(wording.sasl_arguments)
        first: bytes | None = None
        if initial:
            first = _b64decode("" if initial == "=" else initial)
            if first is None:
                return self.err(wording.sasl_base64)
        steps = {
            "PLAIN": self._auth_plain,
            "LOGIN": self._auth_login,
            "XOAUTH2": self._auth_xoauth2,
            "OAUTHBEARER": self._auth_oauthbearer,
        }
        try:
            user = await steps[mechanism.upper()](first)
        except _AuthFailed as failure:
            return failure.reply
        return self._log_in(user)

    def _auth_failed(self, text: str | None = None) -> _AuthFailed:
        return _AuthFailed(self.err(self.server.wording.auth_failed if text is None else text))

    async def _challenge(self, challenge: bytes) -> bytes:
        """Send `+ base64`, return the decoded answer; `*` cancels."""
        await self.send(b"+ " + base64.b64encode(challenge) + self.eol)
        line = await self._read_line()
        if line is None:
            raise Closed
        answer = _strip_eol(line).decode("ascii", "replace")
        if answer == "*":
            raise self._auth_failed(self.server.wording.sasl_cancelled)
        decoded = _b64decode(answer)
        if decoded is None:
            raise self._auth_failed(self.server.wording.sasl_base64)
        return decoded

    async def _auth_plain(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise self._auth_failed(self.server.wording.plain_malformed)
        authzid, authcid, password = parts
        if authzid not in (b"", authcid):
            raise self._auth_failed(self.server.wording.plain_authzid)
        user = _text(authcid)
        if not self.server.check_password(user, _text(password)):
            raise self._auth_failed()
        return user

    async def _auth_login(self, first: bytes | None) -> str:
        name = first if first else await self._challenge(b"Username:")
        password = await self._challenge(b"Password:")
        user = _text(name)
        if not self.server.check_password(user, _text(password)):
            raise self._auth_failed()
        return user

    async def _oauth_failed(self, error: dict[str, str]) -> _AuthFailed:
        """As providers do: a JSON error challenge, the client's dummy answer, then -ERR."""
        await self.send(b"+ " + base64.b64encode(json.dumps(error).encode()) + self.eol)
        if await self._read_line() is None:
            raise Closed
        return self._auth_failed()

    async def _auth_xoauth2(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        fields = _fields(response)
        user = _text(fields.get(b"user", b""))
        auth = _text(fields.get(b"auth", b""))
        if not auth.startswith("Bearer ") or not self.server.check_token(user, auth[7:]):
            error = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
            raise await self._oauth_failed(error)
        return user

    async def _auth_oauthbearer(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        gs2, _, rest = response.partition(b"\x01")
        user = ""
        for attr in gs2.split(b","):
            if attr.startswith(b"a="):
                user = _text(attr[2:].replace(b"=2C", b",").replace(b"=3D", b"="))
        auth = _text(_fields(rest).get(b"auth", b""))
        token = auth[7:] if auth.startswith("Bearer ") else None
        if not user and token is not None:
            user = next((u for u, t in self.server.tokens.items() if t == token), "")
        if (
            not gs2.startswith((b"n,", b"y,"))
            or token is None
            or not self.server.check_token(user, token)
        ):
            error = {"status": "invalid_token", "scope": "https://mail.google.com/"}
            raise await self._oauth_failed(error)
        return user

    # --- TRANSACTION (RFC 1939)

    def _live(self) -> list[tuple[int, Message]]:
        return [(n, m) for n, m in enumerate(self._snapshot, 1) if n not in self._deleted]

    def _octets(self, messages: Iterable[Message]) -> int:
        return sum(self.server.listed_size(m) for m in messages)

    def _message(self, arg: str) -> tuple[int, Message] | bytes:
        """The message numbered `arg`, or the -ERR reply."""
        wording = self.server.wording
        if not _NUMBER.fullmatch(arg):
            return self.err(wording.bad_number.format(arg=arg[:20]))
        number = int(arg)
        if not 1 <= number <= len(self._snapshot):
            return self.err(wording.no_such_message.format(count=len(self._snapshot)))
        if number in self._deleted:
            return self.err(wording.deleted.format(number=number))
        return number, self._snapshot[number - 1]

    def _transaction(self, verb: str, args: list[str]) -> bytes:
        wording = self.server.wording
        if len(args) not in _ARITY[verb]:
            return self.err(wording.wrong_arguments.format(verb=verb))
        if verb == "STAT":
            kept = [m for _, m in self._live()]
            return self.ok(f"{len(kept)} {self._octets(kept)}")
        if verb == "NOOP":
            return self.ok()
        if verb == "RSET":
            self._deleted.clear()
            count, octets = len(self._snapshot), self._octets(self._snapshot)
            messages = _plural(count, "message")
            return self.ok(wording.rset.format(count=count, messages=messages, octets=octets))
        if not args:  # LIST or UIDL for every message
            live = self._live()
            if verb == "LIST":
                count, octets = len(live), self._octets(m for _, m in live)
                first = wording.list_all.format(
                    count=count, messages=_plural(count, "message"), octets=octets
                )
                lines = (f"{n} {self.server.listed_size(m)}".encode() for n, m in live)
                return self.multi(self.ok(first), lines)
            lines = (f"{n} {m.uid}".encode() for n, m in live)
            return self.multi(self.ok(wording.uidl_all), lines)
        found = self._message(args[0])
        if isinstance(found, bytes):
            return found
        number, message = found
        match verb:
            case "LIST":
                return self.ok(f"{number} {self.server.listed_size(message)}")
            case "UIDL":
                return self.ok(f"{number} {message.uid}")
            case "RETR":
                status = self.ok(wording.retr.format(octets=message.size))
                return self.multi(status, message.lines())
            case "DELE":
                self._deleted.add(number)
                return self.ok(wording.dele.format(number=number))
        # TOP n k: the header, the empty line, then k lines of the body
        if not _NUMBER.fullmatch(args[1]):
            return self.err(wording.bad_lines.format(arg=args[1][:20]))
        text = message.lines()
        try:
            body = text.index(b"") + 1
        except ValueError:
            body = len(text)
        return self.multi(self.ok(wording.top), text[: body + int(args[1])])
