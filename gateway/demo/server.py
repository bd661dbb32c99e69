"""A small POP3 server for the demo mailbox (RFC 1939, RFC 2449, RFC 5034 AUTH PLAIN).

It listens on 127.0.0.1 only, knows one user, and keeps its maildrop in memory: messages
deleted by a session (DELE, then QUIT) are gone for later sessions and come back when the
server is started again (or after every QUIT with ``reset_after_quit=True``).

Usage::

    async with DemoPOP3Server(port=0) as server:     # 0: an ephemeral port
        ...                                          # POP3 on server.host, server.port

Protocol behaviour, for clients that test against it:

- States AUTHORIZATION -> TRANSACTION -> UPDATE; only QUIT in TRANSACTION applies the
  deletions. EOF, a reset, the idle timeout or stop() end a session without them.
- A session sees a snapshot of the maildrop taken at login.
- Commands are read and answered strictly in order, so any number may be pipelined.
- Command lines may be up to `max_line_length` octets, line ending included (RFC 2449
  asks for 255; the default 1024 leaves room for long AUTH lines). A longer line gets
  ``-ERR line too long`` and the connection is closed.
- After `idle_timeout` seconds without a command the server closes the connection without
  a reply (RFC 1939 section 3, autologout).
- Beyond `max_connections` concurrent sessions a new connection gets
  ``-ERR [SYS/TEMP] ...`` instead of a greeting and is closed.
- Bad credentials get ``-ERR [AUTH] ...`` (RFC 3206); unknown user names are accepted by
  USER and rejected at PASS, so names cannot be probed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .messages import demo_messages

__all__ = ["DemoPOP3Server"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
IMPLEMENTATION = "pop3gw-demo"

_READ_CHUNK = 4096
_CLOSE_TIMEOUT = 1.0
"""How long a closing connection may take to flush its replies before it is aborted."""
_LINGER_TIMEOUT = 1.0
_LINGER_BYTES = 64 * 1024
"""After a final error reply, input is read and dropped for this long (or this much) so
that closing does not reset the connection before the client has read the reply."""

_UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")
_NUMBER = re.compile(r"[0-9]{1,9}")
_CAPA_BEFORE_LOGIN = ("USER", "SASL PLAIN")
_CAPA_ALWAYS = (
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "PIPELINING",
    "TOP",
    "UIDL",
    f"IMPLEMENTATION {IMPLEMENTATION}",
)
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
_AUTHORIZATION_COMMANDS = frozenset({"USER", "PASS", "AUTH", "CAPA", "QUIT"})
_TRANSACTION_COMMANDS = frozenset(
    {"STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "RSET", "NOOP", "CAPA", "QUIT"}
)


@dataclass(frozen=True, eq=False)
class _Message:
    """One message; compared by identity, so a session deletes exactly what it saw."""

    uid: str
    lines: tuple[bytes, ...]
    """The message's lines without their line endings."""

    @classmethod
    def parse(cls, uid: str, data: bytes) -> _Message:
        if not _UNIQUE_ID.fullmatch(uid):
            raise ValueError(f"invalid POP3 unique-id {uid!r}: 1-70 characters 0x21-0x7E")
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return cls(uid, tuple(line.removesuffix(b"\r") for line in lines))

    @property
    def size(self) -> int:
        """Octets with CRLF line endings, before dot-stuffing (what RETR's body holds)."""
        return sum(len(line) + 2 for line in self.lines)

    @property
    def data(self) -> bytes:
        return b"".join(line + b"\r\n" for line in self.lines)


class _Closed(Exception):
    """The connection is gone; unwind the session."""


class _LineTooLong(Exception):
    pass


class DemoPOP3Server:
    """An asyncio POP3 server on 127.0.0.1 with one user and an in-memory maildrop.

    `messages` defaults to `demo_messages()`; unique-ids must be distinct, 1-70 characters
    of 0x21-0x7E. Line endings may be CRLF or LF: the server sends CRLF, and sizes count
    CRLF.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        user: str = "demo",
        password: str = "demo",  # noqa: S107 - the demo's published credentials
        messages: Iterable[tuple[str, bytes]] | None = None,
        reset_after_quit: bool = False,
        idle_timeout: float = 600.0,
        max_connections: int = 32,
        max_line_length: int = 1024,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0-65535")
        for name, value in (("user", user), ("password", password)):
            if not value or any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name} must be non-empty, without CR, LF or NUL")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_line_length < 255:
            raise ValueError("max_line_length must be at least 255 (RFC 2449)")
        initial = tuple(
            _Message.parse(uid, data)
            for uid, data in (demo_messages() if messages is None else messages)
        )
        uids = [m.uid for m in initial]
        if len(set(uids)) != len(uids):
            raise ValueError("unique-ids must be distinct within the maildrop")
        self._port = port
        self.user = user
        self._user_bytes = user.encode("utf-8")
        self._password_bytes = password.encode("utf-8")
        self.reset_after_quit = reset_after_quit
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_line_length = max_line_length
        self._initial = initial
        self._maildrop: list[_Message] = list(initial)
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._sessions: set[_Session] = set()
        """Sessions that count against `max_connections`."""
        self._open: set[_Session] = set()
        """Every connection not yet closed, rejected ones included."""
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "listening" if self._server is not None else "stopped"
        return (
            f"<DemoPOP3Server {HOST}:{self._port} {state} user={self.user!r} "
            f"messages={len(self._maildrop)}>"
        )

    # ----------------------------------------------------------------- state

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The listening port (the ephemeral one once started with port 0)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """Sessions currently open (rejected connections not counted)."""
        return len(self._sessions)

    def messages(self) -> list[tuple[str, bytes]]:
        """The maildrop a new session would see: ``[(unique_id, data)]`` with CRLF endings."""
        return [(m.uid, m.data) for m in self._maildrop]

    def reset(self) -> None:
        """Restore every message (sessions already logged in keep their snapshot)."""
        self._maildrop = list(self._initial)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Listen on 127.0.0.1 with a full maildrop; returns the port."""
        if self._server is not None:
            raise RuntimeError("the demo POP3 server is already running")
        self.reset()
        self._stopping = False
        server = await asyncio.start_server(self._accept, HOST, self._port)
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        logger.info("demo POP3 server listening on %s:%d (user %r)", HOST, self._port, self.user)
        return self._port

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close every connection, in `timeout` + 2 seconds at most.

        Sessions end without their deletions (no UPDATE state), as with a dropped
        connection. Replies already queued get up to a second (and at most `timeout`) to
        leave; then the connections are reset.
        """
        server = self._server
        if server is None:
            return
        self._server = None
        self._stopping = True
        server.close()
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for session in list(self._open):
            session.abort()
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await server.wait_closed()
        logger.info("demo POP3 server on %s:%d stopped", HOST, self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- connections

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called for each new connection, synchronously: the session is tracked at once."""
        if self._stopping:
            writer.transport.abort()
            return
        session = _Session(self, reader, writer)
        self._open.add(session)
        if len(self._sessions) >= self.max_connections:
            coro = session.reject()
        else:
            self._sessions.add(session)
            coro = session.run()
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _login(self, user: bytes, password: bytes) -> bool:
        user_ok = hmac.compare_digest(user, self._user_bytes)
        password_ok = hmac.compare_digest(password, self._password_bytes)
        return user_ok and password_ok

    def _apply_deletions(self, deleted: set[_Message]) -> int:
        """The UPDATE state: remove what a session deleted (and is still there).

        Returns how many messages are left (before a `reset_after_quit` restores them).
        """
        self._maildrop = [m for m in self._maildrop if m not in deleted]
        left = len(self._maildrop)
        if self.reset_after_quit:
            self.reset()
        return left


def _ok(text: str = "") -> bytes:
    return f"+OK {text}\r\n".encode() if text else b"+OK\r\n"


def _err(text: str, code: str | None = None) -> bytes:
    return (f"-ERR [{code}] {text}\r\n" if code else f"-ERR {text}\r\n").encode()


def _multi(first: bytes, lines: Iterable[bytes]) -> bytes:
    """A multi-line reply: dot-stuffed lines, then the terminating ``.`` line."""
    out = [first]
    out.extend(b"." + line + b"\r\n" if line[:1] == b"." else line + b"\r\n" for line in lines)
    out.append(b".\r\n")
    return b"".join(out)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _octets(messages: Iterable[_Message]) -> int:
    return sum(m.size for m in messages)


class _Session:
    """One connection: reads a command, answers it, repeats."""

    def __init__(
        self,
        server: DemoPOP3Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self._state = "AUTHORIZATION"
        self._user: bytes | None = None
        self._snapshot: list[_Message] = []
        self._deleted: set[int] = set()
        """Message numbers marked by DELE (1-based)."""

    def abort(self) -> None:
        self._writer.transport.abort()

    # ----------------------------------------------------------------- entry points

    async def run(self) -> None:
        try:
            await self._dialogue()
        except (_Closed, OSError):  # includes TimeoutError: the autologout
            pass
        except Exception:
            logger.exception("demo POP3 session failed")
        finally:
            await self._close()

    async def reject(self) -> None:
        """Over the connection limit: an error instead of a greeting, then close."""
        try:
            await self._send(_err("too many connections, try again later", "SYS/TEMP"))
            await self._linger()
        except (_Closed, OSError):
            pass
        finally:
            await self._close()

    # ----------------------------------------------------------------- transport

    async def _close(self) -> None:
        """Close politely (queued replies leave first), abort if that takes too long."""
        self._writer.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._writer.wait_closed()
        except OSError:
            pass
        finally:
            self._server._sessions.discard(self)
            self._server._open.discard(self)

    async def _send(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise _Closed
        self._writer.write(data)
        async with asyncio.timeout(self._server.idle_timeout):
            await self._writer.drain()

    async def _linger(self) -> None:
        """Half-close, then drop input until the client closes (bounded).

        Closing a socket with unread input resets the connection, and a reset can
        destroy the reply the client has not read yet.
        """
        if self._writer.can_write_eof():
            self._writer.write_eof()
        received = 0
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_LINGER_TIMEOUT):
                while received < _LINGER_BYTES:
                    chunk = await self._reader.read(_READ_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)

    async def _read_line(self) -> bytes | None:
        """The next command line without its ending (CRLF or LF); None at EOF.

        Raises TimeoutError after `idle_timeout` without input, _LineTooLong for a line
        longer than `max_line_length` octets (ending included).
        """
        limit = self._server.max_line_length
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    raise _LineTooLong
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.removesuffix(b"\r")
            if len(self._buffer) >= limit:
                raise _LineTooLong
            async with asyncio.timeout(self._server.idle_timeout):
                chunk = await self._reader.read(_READ_CHUNK)
            if not chunk:
                return None
            self._buffer += chunk

    # ----------------------------------------------------------------- dialogue

    async def _dialogue(self) -> None:
        await self._send(_ok(f"{IMPLEMENTATION} POP3 server ready"))
        while True:
            try:
                line = await self._read_line()
                if line is None:
                    return
                reply, close = await self._execute(line)
            except _LineTooLong:
                await self._send(_err("line too long"))
                await self._linger()
                return
            await self._send(reply)
            if close:
                return

    async def _execute(self, line: bytes) -> tuple[bytes, bool]:
        """The reply to one command line, and whether to close afterwards."""
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb not in _AUTHORIZATION_COMMANDS | _TRANSACTION_COMMANDS:
            return _err("unknown command"), False
        allowed = (
            _AUTHORIZATION_COMMANDS if self._state == "AUTHORIZATION" else _TRANSACTION_COMMANDS
        )
        if verb not in allowed:
            return _err(f"{verb} is not valid in the {self._state} state"), False
        match verb:
            case "QUIT":
                return self._quit(), True
            case "CAPA":
                return self._capa(), False
            case "USER":
                return self._user_command(arg), False
            case "PASS":
                return self._pass(arg), False
            case "AUTH":
                return await self._auth(arg), False
        return self._transaction(verb, arg.split(" ") if arg else []), False

    # --- any state

    def _quit(self) -> bytes:
        if self._state != "TRANSACTION":
            return _ok(f"{IMPLEMENTATION} signing off")
        self._state = "UPDATE"
        left = self._server._apply_deletions({self._snapshot[n - 1] for n in self._deleted})
        return _ok(f"{IMPLEMENTATION} signing off ({_plural(left, 'message')} left)")

    def _capa(self) -> bytes:
        capabilities: tuple[str, ...] = _CAPA_ALWAYS
        if self._state == "AUTHORIZATION":
            capabilities = _CAPA_BEFORE_LOGIN + capabilities
        return _multi(_ok("Capability list follows"), (c.encode() for c in capabilities))

    # --- AUTHORIZATION

    def _user_command(self, arg: str) -> bytes:
        if not arg:
            self._user = None
            return _err("USER needs a name")
        self._user = arg.encode("utf-8", "surrogateescape")
        return _ok("send PASS")

    def _pass(self, arg: str) -> bytes:
        """PASS takes the rest of the line: a password may contain spaces (RFC 1939 7)."""
        user, self._user = self._user, None
        if user is None:
            return _err("send USER first")
        return self._log_in(user, arg.encode("utf-8", "surrogateescape"))

    async def _auth(self, arg: str) -> bytes:
        """AUTH PLAIN (RFC 5034, RFC 4616), with or without an initial response."""
        if not arg:
            return _multi(_ok("SASL mechanisms follow"), [b"PLAIN"])
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() != "PLAIN":
            return _err(f"unsupported SASL mechanism {mechanism[:20]!a}")
        if " " in initial:
            return _err("AUTH takes a mechanism and at most one initial response")
        if initial:
            encoded = "" if initial == "=" else initial
        else:
            await self._send(b"+ \r\n")
            answer = await self._read_line()
            if answer is None:
                raise _Closed
            encoded = answer.decode("ascii", "replace")
            if encoded == "*":
                return _err("authentication cancelled")
        try:
            response = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return _err("invalid base64 in the SASL response")
        parts = response.split(b"\0")
        if len(parts) != 3:
            return _err("malformed PLAIN response")
        authzid, authcid, password = parts
        if authzid not in (b"", authcid):
            return _err("cannot act as another user", "AUTH")
        return self._log_in(authcid, password)

    def _log_in(self, user: bytes, password: bytes) -> bytes:
        if not self._server._login(user, password):
            return _err("invalid user name or password", "AUTH")
        self._state = "TRANSACTION"
        self._snapshot = list(self._server._maildrop)
        self._deleted = set()
        count, octets = len(self._snapshot), _octets(self._snapshot)
        return _ok(
            f"{self._server.user}'s maildrop has {_plural(count, 'message')} ({octets} octets)"
        )

    # --- TRANSACTION

    def _live(self) -> list[tuple[int, _Message]]:
        return [(n, m) for n, m in enumerate(self._snapshot, 1) if n not in self._deleted]

    def _message(self, arg: str) -> tuple[int, _Message] | bytes:
        """The message numbered `arg`, or the -ERR reply."""
        if not _NUMBER.fullmatch(arg):
            return _err(f"invalid message number {arg[:20]!a}")
        number = int(arg)
        if not 1 <= number <= len(self._snapshot):
            return _err(f"no such message, only {len(self._snapshot)} in maildrop")
        if number in self._deleted:
            return _err(f"message {number} already deleted")
        return number, self._snapshot[number - 1]

    def _transaction(self, verb: str, args: list[str]) -> bytes:
        if len(args) not in _ARITY[verb]:
            return _err(f"wrong number of arguments for {verb}")
        if verb == "STAT":
            kept = [m for _, m in self._live()]
            return _ok(f"{len(kept)} {_octets(kept)}")
        if verb == "NOOP":
            return _ok()
        if verb == "RSET":
            self._deleted.clear()
            count, octets = len(self._snapshot), _octets(self._snapshot)
            return _ok(f"maildrop has {_plural(count, 'message')} ({octets} octets)")
        if not args:  # LIST or UIDL for every message
            live = self._live()
            if verb == "LIST":
                octets = _octets(m for _, m in live)
                first = _ok(f"{_plural(len(live), 'message')} ({octets} octets)")
                return _multi(first, (f"{n} {m.size}".encode() for n, m in live))
            return _multi(
                _ok("unique-id listing follows"), (f"{n} {m.uid}".encode() for n, m in live)
            )
        found = self._message(args[0])
        if isinstance(found, bytes):
            return found
        number, message = found
        match verb:
            case "LIST":
                return _ok(f"{number} {message.size}")
            case "UIDL":
                return _ok(f"{number} {message.uid}")
            case "RETR":
                return _multi(_ok(f"{message.size} octets"), message.lines)
            case "DELE":
                self._deleted.add(number)
                return _ok(f"message {number} deleted")
        # TOP n k: the header, the empty line, then k lines of the body
        if not _NUMBER.fullmatch(args[1]):
            return _err(f"invalid number of lines {args[1][:20]!a}")
        lines = message.lines
        try:
            body = lines.index(b"") + 1
        except ValueError:
            body = len(lines)
        return _multi(_ok("top of message follows"), lines[: body + int(args[1])])
