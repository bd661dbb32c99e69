"""An in-process, scriptable asyncio POP3 server for tests.

It speaks correct POP3 (RFC 1939, 2449, 2595, 5034, 6856) and, on request, produces the
faults a real server will not produce on demand: dropped connections, half replies,
stalls, garbage, error codes, delays, 1-byte writes, bare LF line endings, Courier's lost
pipelined commands, a server that lies about PIPELINING and the STLS response-injection
attack.

Usage::

    mailbox = FakeMailbox([("uid-1", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")])
    async with FakePOP3Server(mailbox, users={"alice": "secret"}) as server:
        server.script("RETR", DropAfter(10))      # the first RETR is cut after 10 bytes
        ...                                        # connect to server.host, server.port
    assert mailbox.uids() == ["uid-1"]             # nothing deleted without QUIT

Fault rules are counted server-wide (across connections), so "fail once, then work" is
`times=1` (the default) and "always fail" is `times=None`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import enum
import functools
import hashlib
import itertools
import json
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, cast

__all__ = [
    "Action",
    "ConnectionRecord",
    "Delay",
    "Drop",
    "DropAfter",
    "Err",
    "FakeMailbox",
    "FakeMessage",
    "FakePOP3Server",
    "Reply",
    "Rule",
    "Stall",
]

# Input waiting to be parsed is capped: reading from the socket pauses above the high mark.
_READ_HIGH_WATER = 64 * 1024
_READ_LOW_WATER = 16 * 1024
_HANDSHAKE_TIMEOUT = 10.0
_TLS_SHUTDOWN_TIMEOUT = 2.0
_DIGITS = re.compile(r"[0-9]{1,9}")
_timestamp_counter = itertools.count(1)


# --------------------------------------------------------------------------- mailbox


@dataclass(eq=False)
class FakeMessage:
    """One message. Compared by identity, so identical messages and duplicate uids coexist."""

    uid: str
    data: bytes
    list_size: int | None = None
    """What LIST and STAT report; None means the real size (what RETR sends)."""

    def lines(self) -> list[bytes]:
        """The message as lines without their endings (LF or CRLF both end a line)."""
        lines = self.data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    @property
    def size(self) -> int:
        """Octets RETR transmits with CRLF line endings, before dot-stuffing."""
        return sum(len(line) + 2 for line in self.lines())


class FakeMailbox:
    """A maildrop shared by all connections of a server (or by all servers given it).

    Only QUIT from the TRANSACTION state removes messages; `removed` lists what was removed,
    in order, so tests can check that nothing was lost or deleted by accident.
    """

    def __init__(self, messages: Iterable[tuple[str, bytes] | FakeMessage] = ()) -> None:
        self.messages: list[FakeMessage] = [
            m if isinstance(m, FakeMessage) else FakeMessage(m[0], m[1]) for m in messages
        ]
        self.removed: list[FakeMessage] = []
        self.locked_by: ConnectionRecord | None = None

    def add(self, uid: str, data: bytes, *, list_size: int | None = None) -> FakeMessage:
        message = FakeMessage(uid, data, list_size)
        self.messages.append(message)
        return message

    def uids(self) -> list[str]:
        return [m.uid for m in self.messages]

    def items(self) -> list[tuple[str, bytes]]:
        return [(m.uid, m.data) for m in self.messages]

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"FakeMailbox({self.uids()!r})"


# --------------------------------------------------------------------------- fault script


@dataclass(frozen=True)
class Drop:
    """Close the connection on receiving the command, without a reply or its effects.

    `abort=True` discards whatever is still queued for sending as well.
    """

    abort: bool = False


@dataclass(frozen=True)
class DropAfter:
    """Run the command (with its effects: QUIT does delete), send the first `n_bytes` of its
    real reply, then close."""

    n_bytes: int


@dataclass(frozen=True)
class Stall:
    """Never answer this command or any later one; keep reading and recording input."""


@dataclass(frozen=True)
class Reply:
    """Send exactly `data` instead of the real reply; the command has no effect."""

    data: bytes
    close: bool = False


@dataclass(frozen=True)
class Err:
    """Answer `-ERR [code] text` (no brackets when `code` is None); no effect."""

    code: str | None = None
    text: str = "Temporary failure"
    close: bool = False


@dataclass(frozen=True)
class Delay:
    """Wait, then run the command and send its real reply.

    The command runs even if the client gave up meanwhile (a delayed QUIT still deletes),
    as a real server that already read the command would.
    """

    seconds: float


Action = Drop | DropAfter | Stall | Reply | Err | Delay


@dataclass
class Rule:
    """Apply `action` to commands whose verb is `verb`.

    `verb` is a command verb (case-insensitive), `"*"` for every command, or `"GREETING"`
    for the greeting. `arg` restricts the rule to one exact argument string. The first
    `skip` matches pass untouched; then the rule fires `times` times (None: always).
    """

    verb: str
    action: Action
    times: int | None = 1
    skip: int = 0
    arg: str | None = None
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        self.verb = self.verb.upper()

    def take(self, verb: str, arg: str) -> bool:
        if self.verb not in ("*", verb) or (self.arg is not None and self.arg != arg):
            return False
        if verb == "GREETING" and self.verb == "*":
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        self.fired += 1
        return True


# --------------------------------------------------------------------------- server


@dataclass
class ConnectionRecord:
    """What one connection did, kept after it closed."""

    received: list[bytes] = field(default_factory=list)
    """Every input line exactly as received, ending included (a final partial line too)."""
    timestamp: bytes = b""
    """The APOP timestamp of the greeting (empty without one)."""
    user: str | None = None
    """Set once logged in."""
    tls: bool = False
    utf8: bool = False
    updated: bool = False
    """QUIT from TRANSACTION was processed and the deletions applied."""
    closed: bool = False


class _Closed(Exception):
    """The connection is gone or being closed; unwind the handler."""


class _LineTooLong(Exception):
    pass


class _AuthFailed(Exception):
    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class _Then(enum.Enum):
    NOTHING = enum.auto()
    CLOSE = enum.auto()
    STLS = enum.auto()


@dataclass
class _Outcome:
    data: bytes
    then: _Then = _Then.NOTHING


class FakePOP3Server:
    """A POP3 server on 127.0.0.1 and an ephemeral port, running on the current loop.

    Options:
      mailbox / mailboxes: the shared maildrop, or one per user (users not in `mailboxes`
        get `mailbox`).
      users: user -> password (USER/PASS, APOP, AUTH PLAIN/LOGIN).
      tokens: user -> OAuth bearer token (AUTH XOAUTH2/OAUTHBEARER).
      tls_context: a server-side SSLContext; enables STLS (or implicit TLS with
        `implicit_tls=True`, as on port 995).
      greeting: the first line (`+OK` gets an APOP timestamp appended when `apop` and it has
        none); None closes without greeting; a `-ERR` greeting closes after sending.
      uidl: False makes UIDL an unknown command (and leaves it out of CAPA).
      capa_before / capa_after: CAPA lines before and after login (default: computed).
      login_delay / expire: advertised in CAPA as `LOGIN-DELAY n` / `EXPIRE x`.
      list_size_delta: added to every LIST/STAT size (Courier's wrong sizes).
      lock: a second login on a mailbox in use gets `-ERR [IN-USE]`.
      chunk_size: write replies in chunks of this many bytes, yielding between them.
      bare_lf: end every line with LF instead of CRLF, the multi-line terminator included.
      drop_pipelined_after_pass: discard input already buffered when a login succeeds.
      pipelining_lies: handle only the first command of each received packet.
      inject_after_stls: plaintext sent right after `+OK` to STLS, before the handshake.
      max_line: longer command lines get `-ERR line too long` and a close.
    """

    def __init__(
        self,
        mailbox: FakeMailbox | None = None,
        *,
        mailboxes: Mapping[str, FakeMailbox] | None = None,
        users: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        greeting: bytes | None = b"+OK fakepop3 ready.",
        apop: bool = True,
        uidl: bool = True,
        mechanisms: Sequence[str] = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"),
        capa_before: Sequence[str] | None = None,
        capa_after: Sequence[str] | None = None,
        login_delay: int | None = None,
        expire: str | None = None,
        list_size_delta: int = 0,
        lock: bool = False,
        chunk_size: int | None = None,
        bare_lf: bool = False,
        drop_pipelined_after_pass: bool = False,
        pipelining_lies: bool = False,
        inject_after_stls: bytes = b"",
        max_line: int = 8192,
        rules: Iterable[Rule] = (),
        host: str = "127.0.0.1",
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.mailbox = mailbox if mailbox is not None else FakeMailbox()
        self.mailboxes: dict[str, FakeMailbox] = dict(mailboxes or {})
        self.users: dict[str, str] = dict(users if users is not None else {"user": "password"})
        self.tokens: dict[str, str] = dict(tokens or {})
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.greeting = greeting
        self.apop = apop
        self.uidl = uidl
        self.mechanisms = tuple(m.upper() for m in mechanisms)
        self.capa_before = capa_before
        self.capa_after = capa_after
        self.login_delay = login_delay
        self.expire = expire
        self.list_size_delta = list_size_delta
        self.lock = lock
        self.chunk_size = chunk_size
        self.bare_lf = bare_lf
        self.drop_pipelined_after_pass = drop_pipelined_after_pass
        self.pipelining_lies = pipelining_lies
        self.inject_after_stls = inject_after_stls
        self.max_line = max_line
        self.rules: list[Rule] = list(rules)
        self.host = host
        self.port = 0
        self.connections: list[ConnectionRecord] = []
        self.errors: list[BaseException] = []
        """Unexpected exceptions in connection handlers; stop() raises the first."""
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ----------------------------------------------------------------- control

    @property
    def received(self) -> list[list[bytes]]:
        """Raw input lines, one list per connection, in connection order."""
        return [c.received for c in self.connections]

    def script(
        self,
        verb: str,
        action: Action,
        *,
        times: int | None = 1,
        skip: int = 0,
        arg: str | None = None,
    ) -> Rule:
        """Add a fault rule (see `Rule`); earlier rules win. Returns it (see `rule.fired`)."""
        rule = Rule(verb, action, times=times, skip=skip, arg=arg)
        self.rules.append(rule)
        return rule

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._server = await loop.create_server(
            lambda: _Session(self),
            self.host,
            0,
            ssl=self.tls_context if self.implicit_tls else None,
            ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if self.implicit_tls else None,
            ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT if self.implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every connection handler has finished (clients gone or dropped)."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} POP3 connection(s) still open")

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, close every connection (bounded by `timeout`), cancel handlers."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        # A polite close waits for queued replies (and TLS close_notify); then abort.
        if not await _all_set([s.lost for s in sessions], timeout):
            for session in sessions:
                if not session.lost.is_set():
                    session.close(abort=True)
            await _all_set([s.lost for s in sessions], timeout)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self.errors:
            raise RuntimeError("a fake POP3 connection handler failed") from self.errors[0]

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

    # ----------------------------------------------------------------- helpers for sessions

    def _rule_for(self, verb: str, arg: str) -> Action | None:
        for rule in self.rules:
            if rule.take(verb, arg):
                return rule.action
        return None

    def _mailbox_for(self, user: str) -> FakeMailbox:
        return self.mailboxes.get(user, self.mailbox)

    def _capabilities(self, session: _Session) -> list[str]:
        logged_in = session.state == "TRANSACTION"
        configured = self.capa_after if logged_in else self.capa_before
        if configured is not None:
            return list(configured)
        caps = ["TOP"]
        if self.uidl:
            caps.append("UIDL")
        if not logged_in:
            caps.append("USER")
            if self.mechanisms:
                caps.append("SASL " + " ".join(self.mechanisms))
            if self.tls_context is not None and not session.record.tls:
                caps.append("STLS")
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UTF8"]
        if self.login_delay is not None:
            caps.append(f"LOGIN-DELAY {self.login_delay}")
        if self.expire is not None:
            caps.append(f"EXPIRE {self.expire}")
        caps.append("IMPLEMENTATION fakepop3")
        return caps


async def _all_set(events: Sequence[asyncio.Event], timeout: float) -> bool:
    """Wait until every event is set; False if `timeout` passed first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events if not e.is_set()]
    if not waiters:
        return True
    _done, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return not pending


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


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


class _Session(asyncio.Protocol):
    """One connection: protocol callbacks feed a bounded queue; a task runs the dialogue."""

    def __init__(self, server: FakePOP3Server) -> None:
        self.server = server
        self.record = ConnectionRecord(tls=server.implicit_tls)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._buf = bytearray()
        self._eof = False
        self._reading_paused = False
        self._data = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._stalled = False
        self.state = "AUTHORIZATION"
        self._user: str | None = None
        self._mailbox: FakeMailbox | None = None
        self._maildrop: list[FakeMessage] = []
        self._deleted: set[int] = set()

    # ----------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.server._stopping:
            self.transport.abort()
            return
        self.server.connections.append(self.record)
        self.server._sessions.add(self)
        task = asyncio.get_running_loop().create_task(self._run())
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)

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
        self.server._sessions.discard(self)
        self.lost.set()
        self._data.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ----------------------------------------------------------------- transport helpers

    def close(self, *, abort: bool = False) -> None:
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    def _discard_input(self, *, queued: bool = True) -> None:
        """Throw away buffered input (recorded all the same), and what is queued too."""
        data = bytes(self._buf)
        self._buf.clear()
        if queued:
            data += b"".join(self._chunks)
            self._chunks.clear()
            self._queued = 0
            self._resume_reading()
        self.record.received += _split_lines(data)

    def _resume_reading(self) -> None:
        if self._reading_paused and self._queued < _READ_LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    async def _next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self._eof or self.lost.is_set():
                return None
            self._data.clear()
            await self._data.wait()
        chunk = self._chunks.popleft()
        self._queued -= len(chunk)
        self._resume_reading()
        return chunk

    async def _read_line(self) -> bytes | None:
        """The next input line with its ending, or None at end of input."""
        limit = self.server.max_line
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                self.record.received.append(line)
                if len(_strip_eol(line)) > limit:
                    raise _LineTooLong
                return line
            if len(self._buf) > limit + 1:
                self.record.received.append(bytes(self._buf))
                self._buf.clear()
                raise _LineTooLong
            chunk = await self._next_chunk()
            if chunk is None:
                if self._buf:
                    self.record.received.append(bytes(self._buf))
                    self._buf.clear()
                return None
            self._buf += chunk

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.lost.is_set() or self.transport is None or self.transport.is_closing():
            raise _Closed
        size = self.server.chunk_size or len(data)
        for start in range(0, len(data), size):
            if start:
                await asyncio.sleep(0)
            self.transport.write(data[start : start + size])
            if not self._writable.is_set():
                await self._writable.wait()
            if self.lost.is_set():
                raise _Closed

    # ----------------------------------------------------------------- reply builders

    @property
    def _eol(self) -> bytes:
        return b"\n" if self.server.bare_lf else b"\r\n"

    def _ok(self, text: str = "") -> bytes:
        return (b"+OK " + text.encode() if text else b"+OK") + self._eol

    def _err(self, text: str, code: str | None = None) -> bytes:
        parts = ["-ERR"]
        if code:
            parts.append(f"[{code}]")
        if text:
            parts.append(text)
        return " ".join(parts).encode() + self._eol

    def _multi(self, first: bytes, lines: Iterable[bytes]) -> bytes:
        eol = self._eol
        out = [first]
        for line in lines:
            out.append(b"." + line + eol if line.startswith(b".") else line + eol)
        out.append(b"." + eol)
        return b"".join(out)

    # ----------------------------------------------------------------- dialogue

    async def _run(self) -> None:
        try:
            await self._serve()
        except (_Closed, OSError):
            pass
        except Exception as exc:
            self.server.errors.append(exc)
        finally:
            if self._mailbox is not None and self._mailbox.locked_by is self.record:
                self._mailbox.locked_by = None
            self.close()

    async def _serve(self) -> None:
        if self.server.greeting is None:
            return
        await self._step("GREETING", "", self._greeting)
        while True:
            try:
                line = await self._read_line()
            except _LineTooLong:
                if self._stalled:
                    continue
                await self._send(self._err("line too long"))
                return
            if line is None:
                return
            if self._stalled:
                continue
            text = _strip_eol(line).decode("utf-8", "surrogateescape")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            await self._step(verb, arg, functools.partial(self._execute, verb, arg))
            if self.server.pipelining_lies:
                self._discard_input(queued=False)

    async def _step(self, verb: str, arg: str, run: Callable[[], Awaitable[_Outcome]]) -> None:
        """Run one command (or the greeting) under whatever fault rule applies to it."""
        action = self.server._rule_for(verb, arg)
        match action:
            case Drop(abort=abort):
                self.close(abort=abort)
                raise _Closed
            case Stall():
                self._stalled = True
                return
            case Reply(data=data, close=close):
                await self._send(data)
                if close:
                    self.close()
                    raise _Closed
                return
            case Err(code=code, text=text, close=close):
                await self._send(self._err(text, code))
                if close:
                    self.close()
                    raise _Closed
                return
            case Delay(seconds=seconds):
                await asyncio.sleep(seconds)
        outcome = await run()
        if isinstance(action, DropAfter):
            await self._send(outcome.data[: action.n_bytes])
            self.close()
            raise _Closed
        if outcome.then is _Then.STLS:
            await self._start_tls(outcome.data)
            return
        await self._send(outcome.data)
        if outcome.then is _Then.CLOSE:
            self.close()
            raise _Closed

    async def _greeting(self) -> _Outcome:
        greeting = self.server.greeting or b""
        if greeting.startswith(b"+OK"):
            found = re.search(rb"<[^<>]*>", greeting)
            if found:
                self.record.timestamp = found.group()
            elif self.server.apop:
                stamp = f"<{os.getpid()}.{next(_timestamp_counter)}.{int(time.time())}@fakepop3>"
                self.record.timestamp = stamp.encode()
                greeting = greeting.rstrip(b"\r\n") + b" " + self.record.timestamp
        if not greeting.endswith(b"\n"):
            greeting += self._eol
        then = _Then.CLOSE if greeting.startswith(b"-ERR") else _Then.NOTHING
        return _Outcome(greeting, then)

    async def _start_tls(self, reply: bytes) -> None:
        assert self.transport is not None
        assert self.server.tls_context is not None
        # One write, then the handshake without yielding to the loop in between: the
        # client's ClientHello must reach the TLS layer, not this protocol.
        self.transport.write(reply + self.server.inject_after_stls)
        self._discard_input()
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport,
                self,
                self.server.tls_context,
                server_side=True,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
                ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT,
            )
        except BaseException as exc:
            # A handshake that fails (or is cancelled) closes the socket without telling
            # this protocol: connection_lost is only forwarded after a completed handshake.
            self._mark_lost()
            if isinstance(exc, OSError):
                raise _Closed from None
            raise
        if transport is None:  # the client went away during the handshake
            self._mark_lost()
            raise _Closed
        self.transport = transport
        self.record.tls = True

    # ----------------------------------------------------------------- commands

    _AUTHORIZATION = frozenset({"USER", "PASS", "APOP", "AUTH", "STLS", "UTF8", "CAPA", "QUIT"})
    _TRANSACTION = frozenset(
        {"STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "RSET", "NOOP", "CAPA", "QUIT"}
    )

    async def _execute(self, verb: str, arg: str) -> _Outcome:
        if verb == "UIDL" and not self.server.uidl:
            return _Outcome(self._err("Unknown command"))
        if verb == "APOP" and not self.record.timestamp:
            return _Outcome(self._err("APOP not available"))
        known = self._AUTHORIZATION | self._TRANSACTION
        if verb not in known:
            return _Outcome(self._err("Unknown command"))
        allowed = self._AUTHORIZATION if self.state == "AUTHORIZATION" else self._TRANSACTION
        if verb not in allowed:
            return _Outcome(self._err("Command not valid in this state"))
        if verb == "AUTH":
            return _Outcome(await self._auth(arg))
        handler: Callable[[str], _Outcome] = getattr(self, "_cmd_" + verb.lower())
        return handler(arg)

    def _cmd_capa(self, arg: str) -> _Outcome:
        lines = [c.encode() for c in self.server._capabilities(self)]
        return _Outcome(self._multi(self._ok("Capability list follows"), lines))

    def _cmd_quit(self, arg: str) -> _Outcome:
        if self.state != "TRANSACTION":
            return _Outcome(self._ok("Logging out"), _Then.CLOSE)
        self.state = "UPDATE"
        assert self._mailbox is not None
        doomed = {id(self._maildrop[i]) for i in self._deleted}
        kept: list[FakeMessage] = []
        for message in self._mailbox.messages:
            (self._mailbox.removed if id(message) in doomed else kept).append(message)
        self._mailbox.messages[:] = kept
        self.record.updated = True
        return _Outcome(self._ok("Logging out, messages deleted"), _Then.CLOSE)

    def _cmd_stls(self, arg: str) -> _Outcome:
        if self.server.tls_context is None or self.record.tls:
            return _Outcome(self._err("STLS not available"))
        return _Outcome(self._ok("Begin TLS negotiation"), _Then.STLS)

    def _cmd_utf8(self, arg: str) -> _Outcome:
        self.record.utf8 = True
        return _Outcome(self._ok("UTF8 enabled"))

    def _cmd_user(self, arg: str) -> _Outcome:
        if not arg:
            return _Outcome(self._err("Missing user name"))
        self._user = arg
        return _Outcome(self._ok())

    def _cmd_pass(self, arg: str) -> _Outcome:
        user, self._user = self._user, None
        if user is None:
            return _Outcome(self._err("No user name given"))
        if self.server.users.get(user) != arg:
            return _Outcome(self._err("Authentication failed.", "AUTH"))
        return _Outcome(self._login(user))

    def _cmd_apop(self, arg: str) -> _Outcome:
        user, _, digest = arg.rpartition(" ")
        password = self.server.users.get(user)
        if password is None:
            return _Outcome(self._err("Authentication failed.", "AUTH"))
        expected = hashlib.md5(
            self.record.timestamp + password.encode(), usedforsecurity=False
        ).hexdigest()
        if digest.lower() != expected:
            return _Outcome(self._err("Authentication failed.", "AUTH"))
        return _Outcome(self._login(user))

    def _login(self, user: str) -> bytes:
        mailbox = self.server._mailbox_for(user)
        if self.server.lock and mailbox.locked_by is not None:
            return self._err("Mailbox is locked by another session", "IN-USE")
        if self.server.lock:
            mailbox.locked_by = self.record
        self._mailbox = mailbox
        self._maildrop = list(mailbox.messages)
        self._deleted = set()
        self.state = "TRANSACTION"
        self.record.user = user
        if self.server.drop_pipelined_after_pass:
            self._discard_input()
        return self._ok("Logged in.")

    # --- AUTH (RFC 5034)

    async def _auth(self, arg: str) -> bytes:
        if not arg:
            return self._multi(self._ok(), [m.encode() for m in self.server.mechanisms])
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.server.mechanisms:
            return self._err("Unsupported authentication mechanism")
        if " " in initial:
            return self._err("Invalid AUTH arguments")
        first: bytes | None
        if not initial:
            first = None
        elif initial == "=":
            first = b""
        elif initial == "*":
            return self._err("Authentication cancelled")
        else:
            first = _b64decode(initial)
            if first is None:
                return self._err("Invalid base64 data")
        try:
            match mechanism:
                case "PLAIN":
                    user = await self._auth_plain(first)
                case "LOGIN":
                    user = await self._auth_login(first)
                case "XOAUTH2":
                    user = await self._auth_xoauth2(first)
                case _:
                    user = await self._auth_oauthbearer(first)
        except _AuthFailed as failure:
            return failure.reply
        return self._login(user)

    async def _challenge(self, challenge: bytes) -> bytes:
        """Send `+ base64`, return the decoded answer; `*` cancels."""
        await self._send(b"+ " + base64.b64encode(challenge) + self._eol)
        line = await self._read_line()
        if line is None:
            raise _Closed
        answer = _strip_eol(line).decode("ascii", "replace")
        if answer == "*":
            raise _AuthFailed(self._err("Authentication cancelled"))
        decoded = _b64decode(answer)
        if decoded is None:
            raise _AuthFailed(self._err("Invalid base64 data"))
        return decoded

    def _auth_error(self) -> _AuthFailed:
        return _AuthFailed(self._err("Authentication failed.", "AUTH"))

    async def _auth_plain(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise self._auth_error()
        authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
        if authzid not in ("", authcid) or self.server.users.get(authcid) != password:
            raise self._auth_error()
        return authcid

    async def _auth_login(self, first: bytes | None) -> str:
        name = first if first else await self._challenge(b"Username:")
        password = await self._challenge(b"Password:")
        user = name.decode("utf-8", "replace")
        if self.server.users.get(user) != password.decode("utf-8", "replace"):
            raise self._auth_error()
        return user

    async def _oauth_failed(self, error: dict[str, str]) -> _AuthFailed:
        """As providers do: a JSON error challenge, the client's dummy answer, then -ERR."""
        await self._send(b"+ " + base64.b64encode(json.dumps(error).encode()) + self._eol)
        if await self._read_line() is None:
            raise _Closed
        return self._auth_error()

    async def _auth_xoauth2(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        fields = _fields(response)
        user = fields.get(b"user", b"").decode("utf-8", "replace")
        auth = fields.get(b"auth", b"").decode("utf-8", "replace")
        if not auth.startswith("Bearer ") or self.server.tokens.get(user) != auth[7:]:
            error = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
            raise await self._oauth_failed(error)
        return user

    async def _auth_oauthbearer(self, first: bytes | None) -> str:
        response = first if first is not None else await self._challenge(b"")
        gs2, _, rest = response.partition(b"\x01")
        user = ""
        for attr in gs2.split(b","):
            if attr.startswith(b"a="):
                user = attr[2:].replace(b"=2C", b",").replace(b"=3D", b"=").decode()
        fields = _fields(rest)
        auth = fields.get(b"auth", b"").decode("utf-8", "replace")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if not user and token is not None:
            user = next((u for u, t in self.server.tokens.items() if t == token), "")
        if (
            not gs2.startswith((b"n,", b"y,"))
            or token is None
            or (self.server.tokens.get(user) != token)
        ):
            error = {"status": "invalid_token", "scope": "https://mail.google.com/"}
            raise await self._oauth_failed(error)
        return user

    # --- TRANSACTION (RFC 1939)

    def _size(self, message: FakeMessage) -> int:
        size = message.size if message.list_size is None else message.list_size
        return size + self.server.list_size_delta

    def _live(self) -> list[tuple[int, FakeMessage]]:
        return [(i + 1, m) for i, m in enumerate(self._maildrop) if i not in self._deleted]

    def _message(self, arg: str) -> tuple[int, FakeMessage] | bytes:
        """The (number, message) named by `arg`, or the -ERR reply."""
        if not _DIGITS.fullmatch(arg):
            return self._err("Invalid message number")
        number = int(arg)
        if not 1 <= number <= len(self._maildrop):
            return self._err("No such message")
        if number - 1 in self._deleted:
            return self._err("Message is deleted")
        return number, self._maildrop[number - 1]

    def _cmd_stat(self, arg: str) -> _Outcome:
        live = self._live()
        return _Outcome(self._ok(f"{len(live)} {sum(self._size(m) for _, m in live)}"))

    def _cmd_list(self, arg: str) -> _Outcome:
        if arg:
            found = self._message(arg)
            if isinstance(found, bytes):
                return _Outcome(found)
            return _Outcome(self._ok(f"{found[0]} {self._size(found[1])}"))
        live = self._live()
        total = sum(self._size(m) for _, m in live)
        lines = [f"{n} {self._size(m)}".encode() for n, m in live]
        return _Outcome(self._multi(self._ok(f"{len(live)} messages ({total} octets)"), lines))

    def _cmd_uidl(self, arg: str) -> _Outcome:
        if arg:
            found = self._message(arg)
            if isinstance(found, bytes):
                return _Outcome(found)
            return _Outcome(self._ok(f"{found[0]} {found[1].uid}"))
        lines = [f"{n} {m.uid}".encode() for n, m in self._live()]
        return _Outcome(self._multi(self._ok(), lines))

    def _cmd_retr(self, arg: str) -> _Outcome:
        found = self._message(arg)
        if isinstance(found, bytes):
            return _Outcome(found)
        message = found[1]
        return _Outcome(self._multi(self._ok(f"{message.size} octets"), message.lines()))

    def _cmd_top(self, arg: str) -> _Outcome:
        number, _, count = arg.partition(" ")
        if not _DIGITS.fullmatch(count):
            return _Outcome(self._err("Invalid number of lines"))
        found = self._message(number)
        if isinstance(found, bytes):
            return _Outcome(found)
        lines = found[1].lines()
        try:
            body = lines.index(b"") + 1
        except ValueError:
            body = len(lines)
        return _Outcome(self._multi(self._ok(), lines[: body + int(count)]))

    def _cmd_dele(self, arg: str) -> _Outcome:
        found = self._message(arg)
        if isinstance(found, bytes):
            return _Outcome(found)
        self._deleted.add(found[0] - 1)
        return _Outcome(self._ok(f"Message {found[0]} deleted"))

    def _cmd_rset(self, arg: str) -> _Outcome:
        self._deleted.clear()
        return _Outcome(self._ok(f"{len(self._maildrop)} messages"))

    def _cmd_noop(self, arg: str) -> _Outcome:
        return _Outcome(self._ok())
