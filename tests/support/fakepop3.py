"""An in-process, scriptable POP3 server for tests: the demo's POP3 server plus faults.

The POP3 dialogue is `gateway.demo.POP3Server`'s (RFC 1939, 2449, 2595, 5034, 6856),
configured the way this fake always answered, and its hooks produce the faults a real
server will not produce on demand: dropped connections, half replies, stalls, garbage,
error codes, delays, 1-byte writes, bare LF line endings, Courier's lost pipelined
commands, a server that lies about PIPELINING and the STLS response-injection attack.

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
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.demo import (
    Answer,
    ConnectionRecord,
    Mailbox,
    Message,
    POP3Server,
    Session,
    Then,
    Wording,
)
from gateway.demo.session import Step

__all__ = [
    "Action",
    "ConnectionRecord",
    "Delay",
    "Drop",
    "DropAfter",
    "Endless",
    "Err",
    "FakeMailbox",
    "FakeMessage",
    "FakePOP3Server",
    "Reply",
    "Rule",
    "Stall",
]

FakeMailbox = Mailbox
FakeMessage = Message

WORDING = Wording(
    quit="Logging out",
    quit_update="Logging out, messages deleted",
    user="",
    user_missing="Missing user name",
    user_first="No user name given",
    logged_in="Logged in.",
    auth_failed="[AUTH] Authentication failed.",
    sasl_list="",
    sasl_unsupported="Unsupported authentication mechanism",
    sasl_arguments="Invalid AUTH arguments",
    sasl_cancelled="Authentication cancelled",
    sasl_base64="Invalid base64 data",
    plain_malformed="[AUTH] Authentication failed.",
    plain_authzid="[AUTH] Authentication failed.",
    unknown="Unknown command",
    wrong_state="Command not valid in this state",
    wrong_arguments="Invalid message number",
    bad_number="Invalid message number",
    bad_lines="Invalid number of lines",
    no_such_message="No such message",
    deleted="Message is deleted",
    list_all="{count} messages ({octets} octets)",
    uidl_all="",
    top="",
    dele="Message {number} deleted",
    rset="{count} messages",
)
"""How this fake has always worded its replies (tests compare them byte for byte)."""


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


@dataclass
class Endless:
    """Answer `+OK`, then send `line` over and over and never the terminating `.`: a
    multi-line reply that does not end. No effect on the mailbox.

    The server writes only as fast as the client reads (it waits on the transport's flow
    control), and stops after `limit` bytes by closing, so a client that never gives up
    still ends the test. `sent` counts the body bytes written (across connections).
    """

    line: bytes = b"1 endless-unique-id\r\n"
    limit: int = 64 * 1024 * 1024
    sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.line.endswith(b"\n") or self.line.startswith(b"."):
            raise ValueError("an endless line ends with LF and does not start with a dot")


Action = Drop | DropAfter | Stall | Reply | Err | Delay | Endless


@dataclass
class Rule:
    """Apply `action` to commands whose verb is `verb`.

    `verb` is a command verb (case-insensitive), `"*"` for every command, or `"GREETING"`
    for the greeting. `arg` restricts the rule to one exact argument string, `user` to the
    sessions logged in as that user. The first `skip` matches pass untouched; then the rule
    fires `times` times (None: always).
    """

    verb: str
    action: Action
    times: int | None = 1
    skip: int = 0
    arg: str | None = None
    user: str | None = None
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        self.verb = self.verb.upper()

    def take(self, verb: str, arg: str, user: str | None = None) -> bool:
        if self.verb not in ("*", verb) or (self.arg is not None and self.arg != arg):
            return False
        if self.user is not None and self.user != user:
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


class FakePOP3Server(POP3Server):
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
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        super().__init__(
            mailbox,
            mailboxes=mailboxes,
            users=users if users is not None else {"user": "password"},
            tokens=tokens,
            host=host,
            implementation="fakepop3",
            greeting=greeting if greeting is not None else b"",
            apop=apop,
            commands=("APOP", "STLS", "UTF8"),
            mechanisms=mechanisms,
            tls_context=tls_context,
            implicit_tls=implicit_tls,
            lock=lock,
            wording=WORDING,
            idle_timeout=None,
            max_connections=None,
            max_line_length=max_line + 2,  # `max_line` does not count the CRLF
        )
        self.silent = greeting is None
        self.uidl = uidl
        self.capa_before = capa_before
        self.capa_after = capa_after
        self.login_delay = login_delay
        self.expire = expire
        self.list_size_delta = list_size_delta
        self.chunk_size = chunk_size
        self.bare_lf = bare_lf
        self.drop_pipelined_after_pass = drop_pipelined_after_pass
        self.pipelining_lies = pipelining_lies
        self.inject_after_stls = inject_after_stls
        self.rules: list[Rule] = list(rules)
        self.connections: list[ConnectionRecord] = []
        #: per connection (id of its record): the most commands held at once
        self.max_pipelined: dict[int, int] = {}
        self.errors: list[BaseException] = []
        """Unexpected exceptions in connection handlers; stop() raises the first."""

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
        user: str | None = None,
    ) -> Rule:
        """Add a fault rule (see `Rule`); earlier rules win. Returns it (see `rule.fired`)."""
        rule = Rule(verb, action, times=times, skip=skip, arg=arg, user=user)
        self.rules.append(rule)
        return rule

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, close every connection (bounded by `timeout`), cancel handlers."""
        await super().stop(timeout)
        if self.errors:
            raise RuntimeError("a fake POP3 connection handler failed") from self.errors[0]

    # ----------------------------------------------------------------- hooks

    def connected(self, session: Session) -> None:
        self.connections.append(session.record)
        if self.bare_lf:
            session.eol = b"\n"

    def line_received(self, session: Session, line: bytes) -> None:
        session.record.received.append(line)
        pending = session.pending_lines()
        if pending >= self.max_pipelined.get(id(session.record), 0):
            self.max_pipelined[id(session.record)] = pending + 1

    def turns(self, connection: int = 0) -> int:
        """Round trips the client paid on a connection (in connection order) after the
        greeting: how often the server waited for input with everything answered."""
        return self.connections[connection].turns

    def most_pipelined(self, connection: int = 0) -> int:
        """The most commands the server held at once on a connection: the one it read and
        those received behind it (1 in lockstep)."""
        return self.max_pipelined.get(id(self.connections[connection]), 0)

    def session_failed(self, session: Session, error: Exception) -> None:
        self.errors.append(error)

    async def on_greeting(self, session: Session, run: Step) -> Answer:
        if self.silent:
            return Answer(b"", Then.CLOSE)
        return await self._step(session, "GREETING", "", run)

    async def on_command(self, session: Session, verb: str, arg: str, run: Step) -> Answer:
        answer = await self._step(session, verb, arg, run)
        if self.pipelining_lies:
            session.discard_input(queued=False)
        return answer

    async def _step(self, session: Session, verb: str, arg: str, run: Step) -> Answer:
        """Run one command (or the greeting) under whatever fault rule applies to it."""
        user = session.record.user
        action = next((rule.action for rule in self.rules if rule.take(verb, arg, user)), None)
        match action:
            case Drop(abort=abort):
                return Answer(b"", Then.ABORT if abort else Then.CLOSE)
            case Stall():
                return Answer(b"", Then.STALL)
            case Reply(data=data, close=close):
                return Answer(data, Then.CLOSE if close else Then.CONTINUE)
            case Err(code=code, text=text, close=close):
                reply = session.err(" ".join(p for p in (code and f"[{code}]", text) if p))
                return Answer(reply, Then.CLOSE if close else Then.CONTINUE)
            case Delay(seconds=seconds):
                await asyncio.sleep(seconds)
            case Endless():
                await self._endless(session, action)
                return Answer(b"", Then.CLOSE)
        if verb == "UIDL" and not self.uidl:
            answer = Answer(session.err(WORDING.unknown))
        else:
            state = session.state
            answer = await run()
            logged_in = state == "AUTHORIZATION" and session.state == "TRANSACTION"
            if logged_in and self.drop_pipelined_after_pass:
                session.discard_input()
        if answer.then is Then.STLS:
            answer = replace(answer, data=answer.data + self.inject_after_stls)
        if isinstance(action, DropAfter):
            return Answer(answer.data[: action.n_bytes], Then.CLOSE)
        return answer

    async def _endless(self, session: Session, action: Endless) -> None:
        """`+OK` and `action.line` repeated in 64 KiB writes, up to `action.limit` bytes;
        `Closed` (the client left) ends the session."""
        await session.write(session.ok(""))
        chunk = action.line * max(1, 64 * 1024 // len(action.line))
        while action.sent < action.limit:
            await session.write(chunk)
            action.sent += len(chunk)

    def capabilities(self, session: Session) -> list[str]:
        configured = self.capa_before if session.state == "AUTHORIZATION" else self.capa_after
        if configured is not None:
            return list(configured)
        capabilities = [c for c in super().capabilities(session) if self.uidl or c != "UIDL"]
        if self.login_delay is not None:
            capabilities.insert(-1, f"LOGIN-DELAY {self.login_delay}")
        if self.expire is not None:
            capabilities.insert(-1, f"EXPIRE {self.expire}")
        return capabilities

    async def send(self, session: Session, data: bytes) -> None:
        size = self.chunk_size or len(data)
        for start in range(0, len(data), size):
            if start:
                await asyncio.sleep(0)
            await session.write(data[start : start + size])

    def listed_size(self, message: Message) -> int:
        return super().listed_size(message) + self.list_size_delta
