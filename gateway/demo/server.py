"""The POP3 server we own, and the demo mailbox server ``pop3gw demo`` runs on it.

`POP3Server` is one POP3 implementation (the dialogue itself is in `session.py`): users,
maildrops, optional commands (APOP, STLS, UTF8), SASL mechanisms, TLS, mailbox locks and
the wording of replies are configuration. Its hook methods let a subclass watch and change
what happens on the wire without a second implementation of the protocol; the test
suite's fault-injecting fake (``tests/support/fakepop3.py``) is built that way.

`DemoPOP3Server` is the demo: one user, the demo messages, on 127.0.0.1 only::

    async with DemoPOP3Server(port=0) as server:     # 0: an ephemeral port
        ...                                          # POP3 on server.host, server.port

Protocol behaviour, for clients that test against either:

- States AUTHORIZATION -> TRANSACTION -> UPDATE; only QUIT in TRANSACTION applies the
  deletions. EOF, a reset, the idle timeout or stop() end a session without them.
- A session sees a snapshot of the maildrop taken at login.
- Commands are read and answered strictly in order, so any number may be pipelined.
- Command lines may be up to `max_line_length` octets, line ending included (RFC 2449
  asks for 255; the demo's 1024 leaves room for long AUTH lines). A longer line gets
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
import contextlib
import hmac
import logging
import re
import ssl
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self

from .mailbox import Mailbox, Message
from .messages import demo_messages
from .session import (
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    MECHANISMS,
    OPTIONAL_COMMANDS,
    TLS_SHUTDOWN_TIMEOUT,
    Answer,
    Session,
    Step,
    Wording,
)

__all__ = ["DemoPOP3Server", "POP3Server"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
IMPLEMENTATION = "pop3gw-demo"

_UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")


class POP3Server:
    """An asyncio POP3 server on the current event loop.

    Options:
      mailbox / mailboxes: the maildrop of every user, or one per user (users not in
        `mailboxes` get `mailbox`).
      users: user -> password (USER/PASS, APOP, AUTH PLAIN/LOGIN); case-sensitive.
      tokens: user -> OAuth bearer token (AUTH XOAUTH2/OAUTHBEARER).
      greeting: the first line; an APOP timestamp is appended to a `+OK` greeting without
        one when `apop`; a `-ERR` greeting closes the connection after it is sent.
      commands: the optional AUTHORIZATION commands spoken (APOP, STLS, UTF8); the others
        are unknown commands.
      mechanisms: the SASL mechanisms offered (of PLAIN, LOGIN, XOAUTH2, OAUTHBEARER).
      tls_context: a server-side SSLContext for STLS (or implicit TLS with
        `implicit_tls=True`, as on port 995).
      lock: a second login on a mailbox in use gets `-ERR [IN-USE]`.
      wording: the text of each reply.
      idle_timeout / max_connections: None for no limit.

    Hooks, for subclasses (the defaults do nothing special):
      connected(session), line_received(session, line), on_greeting(session, run),
      on_command(session, verb, arg, run), capabilities(session), send(session, data),
      listed_size(message), update(mailbox, deleted), session_failed(session, error).
    """

    def __init__(
        self,
        mailbox: Mailbox | None = None,
        *,
        mailboxes: Mapping[str, Mailbox] | None = None,
        users: Mapping[str, str],
        tokens: Mapping[str, str] | None = None,
        host: str = HOST,
        port: int = 0,
        implementation: str = IMPLEMENTATION,
        greeting: bytes | None = None,
        apop: bool = False,
        commands: Collection[str] = (),
        mechanisms: Sequence[str] = ("PLAIN",),
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        lock: bool = False,
        wording: Wording | None = None,
        idle_timeout: float | None = 600.0,
        max_connections: int | None = 32,
        max_line_length: int = 1024,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0-65535")
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        if not {c.upper() for c in commands} <= OPTIONAL_COMMANDS:
            raise ValueError(f"commands must be of {sorted(OPTIONAL_COMMANDS)}")
        if not {m.upper() for m in mechanisms} <= set(MECHANISMS):
            raise ValueError(f"mechanisms must be of {list(MECHANISMS)}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.mailbox = mailbox if mailbox is not None else Mailbox()
        self.mailboxes: dict[str, Mailbox] = dict(mailboxes or {})
        self.users: dict[str, str] = dict(users)
        self.tokens: dict[str, str] = dict(tokens or {})
        self.host = host
        self.port = port
        self.implementation = implementation
        self.greeting = (
            greeting if greeting is not None else f"+OK {implementation} POP3 server ready".encode()
        )
        self.apop = apop
        self.commands = frozenset(c.upper() for c in commands)
        self.mechanisms = tuple(m.upper() for m in mechanisms)
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.lock = lock
        self.wording = wording or Wording()
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_line_length = max_line_length
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._active: set[Session] = set()
        """Sessions that count against `max_connections`."""
        self._open: set[Session] = set()
        """Every connection not yet closed, rejected ones included."""
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- state

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def active_sessions(self) -> int:
        """Sessions currently open (connections refused over the limit not counted)."""
        return len(self._active)

    def mailbox_for(self, user: str) -> Mailbox:
        return self.mailboxes.get(user, self.mailbox)

    def check_password(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        given = password.encode("utf-8", "surrogateescape")
        expected = (stored if stored is not None else "").encode("utf-8")
        return hmac.compare_digest(given, expected) and stored is not None

    def check_token(self, user: str, token: str) -> bool:
        stored = self.tokens.get(user)
        given = token.encode("utf-8", "surrogateescape")
        expected = (stored if stored is not None else "").encode("utf-8")
        return hmac.compare_digest(given, expected) and stored is not None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Listen on `host` and `port` (0: an ephemeral one); returns the port."""
        if self._server is not None:
            raise RuntimeError("the POP3 server is already running")
        self._stopping = False
        tls = self.tls_context if self.implicit_tls else None
        server = await asyncio.get_running_loop().create_server(
            lambda: Session(self),
            self.host,
            self.port,
            ssl=tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if tls else None,
        )
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self.port

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
            session.close(abort=True)
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await server.wait_closed()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every session has ended (clients gone or dropped)."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} POP3 connection(s) still open")

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

    def _accept(self, session: Session) -> None:
        """Called for each new connection, synchronously: the session is tracked at once."""
        if self._stopping:
            session.close(abort=True)
            return
        self._open.add(session)
        self.connected(session)
        if self.max_connections is not None and len(self._active) >= self.max_connections:
            coro = session.reject()
        else:
            self._active.add(session)
            coro = session.run()
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, session: Session) -> None:
        self._active.discard(session)
        self._open.discard(session)

    # ----------------------------------------------------------------- hooks

    def connected(self, session: Session) -> None:
        """A connection was accepted (`session.record` describes it from now on)."""

    def line_received(self, session: Session, line: bytes) -> None:
        """An input line exactly as received (ending included), before it is parsed; also
        a final partial line, a line too long, and input thrown away unparsed."""

    async def on_greeting(self, session: Session, run: Step) -> Answer:
        """The greeting: `await run()` builds the real one. Return what to send instead,
        and whether to go on, close, reset or stall (see `Then`)."""
        return await run()

    async def on_command(self, session: Session, verb: str, arg: str, run: Step) -> Answer:
        """One command (`verb` upper-cased, `arg` the rest of the line): `await run()`
        executes it, with its effects, and returns its real answer. A hook may delay it,
        answer something else without running it, or cut, replace or extend the answer
        (an STLS answer is written in one piece right before the handshake)."""
        return await run()

    def capabilities(self, session: Session) -> list[str]:
        """The CAPA lines for this session (they differ before and after login)."""
        capabilities = []
        if session.state == "AUTHORIZATION":
            capabilities.append("USER")
            if self.mechanisms:
                capabilities.append("SASL " + " ".join(self.mechanisms))
            tls_possible = self.tls_context is not None and not session.record.tls
            if "STLS" in self.commands and tls_possible:
                capabilities.append("STLS")
        capabilities += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL"]
        if "UTF8" in self.commands:
            capabilities.append("UTF8")
        capabilities.append(f"IMPLEMENTATION {self.implementation}")
        return capabilities

    async def send(self, session: Session, data: bytes) -> None:
        """Everything the session sends, but an STLS answer (`session.write` writes)."""
        await session.write(data)

    def listed_size(self, message: Message) -> int:
        """The size LIST and STAT report for `message`."""
        return message.size if message.list_size is None else message.list_size

    def update(self, mailbox: Mailbox, deleted: Iterable[Message]) -> int:
        """The UPDATE state: remove what a session deleted; returns how many are left."""
        return mailbox.update(deleted)

    def session_failed(self, session: Session, error: Exception) -> None:
        """A session ended with an unexpected exception."""
        logger.error("demo POP3 session failed", exc_info=error)


class DemoPOP3Server(POP3Server):
    """The demo: 127.0.0.1, one user, an in-memory maildrop, AUTH PLAIN.

    `messages` defaults to `demo_messages()`; unique-ids must be distinct, 1-70 characters
    of 0x21-0x7E. Line endings may be CRLF or LF: the server sends CRLF, and sizes count
    CRLF. Messages deleted by a session (DELE, then QUIT) are gone for later sessions and
    come back when the server is started again (or after every QUIT with
    ``reset_after_quit=True``).
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
        for name, value in (("user", user), ("password", password)):
            if not value or any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name} must be non-empty, without CR, LF or NUL")
        if max_line_length < 255:
            raise ValueError("max_line_length must be at least 255 (RFC 2449)")
        initial = [
            Message(uid, data) for uid, data in (demo_messages() if messages is None else messages)
        ]
        for message in initial:
            if not _UNIQUE_ID.fullmatch(message.uid):
                raise ValueError(
                    f"invalid POP3 unique-id {message.uid!r}: 1-70 characters 0x21-0x7E"
                )
        uids = [m.uid for m in initial]
        if len(set(uids)) != len(uids):
            raise ValueError("unique-ids must be distinct within the maildrop")
        super().__init__(
            Mailbox(initial),
            users={user: password},
            port=port,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_line_length=max_line_length,
        )
        self.user = user
        self.reset_after_quit = reset_after_quit
        self._initial = initial

    def __repr__(self) -> str:
        state = "listening" if self.running else "stopped"
        return (
            f"<DemoPOP3Server {self.host}:{self.port} {state} user={self.user!r} "
            f"messages={len(self.mailbox)}>"
        )

    @property
    def connections(self) -> int:
        """Sessions currently open (rejected connections not counted)."""
        return self.active_sessions

    def messages(self) -> list[tuple[str, bytes]]:
        """The maildrop a new session would see: ``[(unique_id, data)]`` with CRLF endings."""
        return [(m.uid, m.crlf_data) for m in self.mailbox.messages]

    def reset(self) -> None:
        """Restore every message (sessions already logged in keep their snapshot)."""
        self.mailbox.messages[:] = self._initial
        self.mailbox.removed.clear()

    async def start(self) -> int:
        """Listen on 127.0.0.1 with a full maildrop; returns the port."""
        if self.running:
            raise RuntimeError("the demo POP3 server is already running")
        self.reset()
        port = await super().start()
        logger.info("demo POP3 server listening on %s:%d (user %r)", self.host, port, self.user)
        return port

    async def stop(self, timeout: float = 5.0) -> None:
        if not self.running:
            return
        await super().stop(timeout)
        logger.info("demo POP3 server on %s:%d stopped", self.host, self.port)

    def update(self, mailbox: Mailbox, deleted: Iterable[Message]) -> int:
        left = super().update(mailbox, deleted)
        if self.reset_after_quit:
            self.reset()
        return left
