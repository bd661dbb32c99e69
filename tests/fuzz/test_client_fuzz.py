"""The POP3 client end to end against a server that answers random and mutated replies.

Every operation must end with a result of the documented shape or a ``POP3Error``, within a
bound (no hang); a timeout or a broken connection must leave the session closed. The server
is a tiny asyncio server on 127.0.0.1 that plays a script drawn by hypothesis: a greeting,
then one reply per command line received (a plausible answer to that command, possibly
mutated, or random bytes), or sent unasked, cut into random chunks; then a close, an abort
or a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.pop3 import (
    Capabilities,
    POP3Client,
    POP3ConnectionError,
    POP3Error,
    POP3ResponseError,
    POP3TimeoutError,
    QuitResult,
    State,
    Timeouts,
    TLSMode,
)
from tests.fuzz.profiles import budget, ran

#: Short timeouts: a stalled reply costs 0.1 s.
TIMEOUTS = Timeouts(connect=2.0, tls=0.2, command=0.1, idle=0.1)
#: Far above anything a script can legitimately take: reaching it means a hang.
HANG_BOUND = 20.0

# -- the scripted server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One reply. ``data`` None: a plausible answer to the command just received (see
    :func:`plausible`). ``mutation`` is applied to either."""

    data: bytes | None
    cuts: tuple[int, ...] = ()
    #: wait for a command line before sending (False: sent unasked, right after the last)
    answer: bool = True
    #: (operation, where as a fraction of the reply, argument)
    mutation: tuple[str, float, int] | None = None


@dataclass(frozen=True)
class Script:
    greeting: Step
    steps: tuple[Step, ...]
    #: after the steps: "serve" (plausible answers until the client leaves), "close",
    #: "abort" or "stall"
    end: str


@dataclass
class ScriptedServer:
    script: Script | None = None
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self.wait_idle(5.0)
        await self._server.wait_closed()

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every connection handler finished within ``timeout`` seconds."""
        await asyncio.sleep(0)
        if not self._handlers:
            return True
        _, pending = await asyncio.wait(set(self._handlers), timeout=timeout)
        return not pending

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        script = self.script
        try:
            assert script is not None
            await _send(writer, script.greeting, b"")
            for step in script.steps:
                line = b""
                if step.answer:
                    line = await reader.readline()
                    if not line:
                        return
                await _send(writer, step, line)
            if script.end == "abort":
                writer.transport.abort()
            elif script.end == "serve":
                while line := await reader.readline():
                    await _send(writer, Step(None), line)
            elif script.end == "stall":
                while await reader.read(65536):
                    pass
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass  # the client hung up or sent an overlong line: this connection is over
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._writers.discard(writer)
            self._handlers.discard(task)


def plausible(command: bytes) -> bytes:
    """What a correct server would answer to ``command`` (a line as received)."""
    words = command.split()
    verb = words[0].upper() if words else b""
    arg = len(words) > 1
    if verb == b"CAPA":
        caps = [b"TOP", b"UIDL", b"USER", b"PIPELINING", b"SASL PLAIN LOGIN", b"LOGIN-DELAY 900"]
        return b"+OK\r\n" + b"".join(c + b"\r\n" for c in caps) + b".\r\n"
    if verb == b"STAT":
        return b"+OK 2 320\r\n"
    if verb == b"LIST":
        return b"+OK 1 120\r\n" if arg else b"+OK\r\n1 120\r\n2 200\r\n.\r\n"
    if verb == b"UIDL":
        return b"+OK 2 uid-2\r\n" if arg else b"+OK\r\n1 uid-1\r\n2 u/2?=\r\n.\r\n"
    if verb in (b"TOP", b"RETR"):
        return b"+OK\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    if verb == b"QUIT":
        return b"+OK bye\r\n"
    return b"+OK\r\n"


INSERTS = [b"\r\n", b"\n", b".\r\n", b"\x00", b"+OK\r\n", b"-ERR x\r\n", "²".encode(), b"\xff"]


def mutate(data: bytes, op: str, where: float, value: int) -> bytes:
    out = bytearray(data)
    at = min(int(where * len(out)), len(out) - 1)
    if op == "flip":
        out[at] ^= value % 255 + 1
    elif op == "cut":
        del out[at:]
    elif op == "delete":
        del out[at : at + value % 8 + 1]
    elif op == "insert":
        out[at:at] = INSERTS[value % len(INSERTS)]
    elif op == "duplicate":
        out[at:at] = out[at : at + value % 40 + 1]
    return bytes(out)


async def _send(writer: asyncio.StreamWriter, step: Step, command: bytes) -> None:
    data = plausible(command) if step.data is None else step.data
    if step.mutation is not None and data:
        data = mutate(data, *step.mutation)
    start = 0
    for cut in (*sorted({c % (len(data) + 1) for c in step.cuts}), len(data)):
        if cut > start:
            writer.write(data[start:cut])
            await writer.drain()
            await asyncio.sleep(0)
            start = cut


# -- what the server says -----------------------------------------------------------------

STATUS = st.sampled_from(
    [b"+OK", b"+OK", b"+OK", b"-ERR", b"-ERR", b"+", b"+ ", b"+OKAY", b"OK", b"", b"-ERR "]
)
CODES = st.sampled_from(
    [
        *(b"", b"", b"", b"[IN-USE] ", b"[LOGIN-DELAY] ", b"[SYS/TEMP] ", b"[SYS/PERM] "),
        *(b"[AUTH] ", b"[UTF8] ", b"[XYZ] ", b"[", b"[]"),
    ]
)
TEXTS = st.one_of(
    st.sampled_from(
        [
            b"",
            b"2 320",
            b"1 uid-1",
            b"0 0",
            b"3",
            b"x y",
            b"-1 5",
            b"99999999999999999999999 1",
            "² 5".encode(),
            "١ ٢".encode(),
            b"<1896.697170952@dbc.mimecast.com>",
            b"dXNlcj0=",
            b"not base64 !",
            b"\xff\xfe",
        ]
    ),
    st.binary(max_size=24),
)
EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\r\r\n"])
BODY_LINES = st.one_of(
    st.sampled_from(
        [
            b"1 uid-1",
            b"2 120",
            b"1",
            b"x 1",
            b"3 \xff\xfe",
            "4 ²".encode(),
            b"TOP",
            b"UIDL",
            b"PIPELINING",
            b"SASL PLAIN LOGIN XOAUTH2",
            b"LOGIN-DELAY 900",
            "LOGIN-DELAY ²".encode(),
            b"IMPLEMENTATION fuzz",
            b"Subject: hi",
            b"",
            b".",
            b"..",
            b".x",
            b"+OK",
            b"-ERR",
        ]
    ),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
TERMINATOR = st.sampled_from([b".\r\n", b".\r\n", b".\r\n", b".\n", b"", b".", b"..\r\n"])


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=120))
    if kind == 1:
        return b"+OK " + b"A" * draw(st.sampled_from([600, 9000])) + b"\r\n"
    status = draw(STATUS) + draw(st.sampled_from([b" ", b" ", b"", b"\t"]))
    line = status + draw(CODES) + draw(TEXTS) + draw(EOL)
    if status.startswith(b"+OK") and draw(st.booleans()):
        body = draw(st.lists(st.tuples(BODY_LINES, EOL), max_size=8))
        line += b"".join(text + eol for text, eol in body) + draw(TERMINATOR)
    return line


MUTATIONS = st.tuples(
    st.sampled_from(["flip", "cut", "delete", "insert", "duplicate"]),
    st.floats(0, 1),
    st.integers(0, 1000),
)


@st.composite
def steps(draw: st.DrawFn, *, greeting: bool = False) -> Step:
    kind = draw(st.integers(0, 19))
    if greeting:
        data: bytes | None = b"+OK ready <1.2@fuzz>\r\n" if kind < 17 else draw(replies())
    else:
        data = None if kind < 15 else draw(replies())
    mutation = draw(MUTATIONS) if draw(st.integers(0, 7)) == 0 else None
    cuts = tuple(draw(st.lists(st.integers(0, 10_000), max_size=4)))
    answer = greeting or draw(st.integers(0, 14)) > 0
    return Step(data, cuts, answer, mutation)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    return Script(
        greeting=draw(steps(greeting=True)),
        steps=tuple(draw(st.lists(steps(), max_size=16))),
        end=draw(st.sampled_from(["serve", "serve", "serve", "close", "abort", "stall"])),
    )


# -- what the client does -------------------------------------------------------------------

Op = Callable[[POP3Client], Awaitable[Any]]


async def _capa(client: POP3Client) -> Any:
    caps = await client.capa()
    assert isinstance(caps, Capabilities)
    # The derived views are part of the client's API: they must hold for any CAPA answer.
    assert isinstance(caps.pipelining, bool)
    assert all(isinstance(m, str) for m in caps.sasl)
    delay = caps.login_delay
    assert delay is None or (isinstance(delay, int) and delay >= 0)
    assert caps.implementation is None or isinstance(caps.implementation, str)
    return caps


async def _stat(client: POP3Client) -> Any:
    count, octets = await client.stat()
    assert isinstance(count, int)
    assert isinstance(octets, int)
    assert count >= 0
    assert octets >= 0
    return count, octets


async def _list(client: POP3Client) -> Any:
    sizes = await client.list()
    assert all(isinstance(n, int) and isinstance(s, int) for n, s in sizes.items())
    return sizes


async def _uidl(client: POP3Client) -> Any:
    uids = await client.uidl()
    assert all(isinstance(n, int) and isinstance(u, str) for n, u in uids.items())
    return uids


async def _uidl_and_list(client: POP3Client) -> Any:
    uids, sizes = await client.uidl_and_list()
    assert isinstance(uids, dict)
    assert isinstance(sizes, dict)
    return uids, sizes


async def _top_many(client: POP3Client) -> Any:
    got = await client.top_many([1, 2, 3], 0)
    assert len(got) == 3
    assert all(isinstance(item, bytes | POP3ResponseError) for item in got)
    return got


async def _retr_many(client: POP3Client) -> Any:
    got = await client.retr_many([2, 1])
    assert len(got) == 2
    assert all(isinstance(item, bytes | POP3ResponseError) for item in got)
    return got


async def _dele_many(client: POP3Client) -> Any:
    got = await client.dele_many([1, 2])
    assert len(got) == 2
    assert all(item is None or isinstance(item, POP3ResponseError) for item in got)
    return got


async def _retr_stream(client: POP3Client) -> Any:
    total = 0
    async with client.retr_stream(1) as chunks:
        async for chunk in chunks:
            assert isinstance(chunk, bytes)
            total += len(chunk)
    return total


async def _retr_stream_partly(client: POP3Client) -> Any:
    got_one = False
    async with client.retr_stream(1) as chunks:
        async for _chunk in chunks:
            got_one = True
            break
    # Leaving before the end of the reply closes the session: the rest cannot be skipped.
    assert client.state is State.CLOSED or not got_one
    return None


async def _quit(client: POP3Client) -> Any:
    result = await client.quit()
    assert isinstance(result, QuitResult)
    assert client.state is State.CLOSED
    return result


async def _bytes(value: Awaitable[bytes]) -> bytes:
    data = await value
    assert isinstance(data, bytes)
    return data


OPS: dict[str, Op] = {
    "capa": _capa,
    "login": lambda c: c.login("alice", "pw"),
    "user": lambda c: c.user("alice"),
    "pass": lambda c: c.pass_("pw"),
    "apop": lambda c: c.apop("alice", "pw"),
    "auth_plain": lambda c: c.auth_plain("alice", "pw"),
    "auth_login": lambda c: c.auth_login("alice", "pw"),
    "auth_xoauth2": lambda c: c.auth_xoauth2("alice", "t" * 300),
    "auth_oauthbearer": lambda c: c.auth_oauthbearer("alice", "token"),
    "stls": lambda c: c.stls(),
    "utf8": lambda c: c.utf8(),
    "stat": _stat,
    "list": _list,
    "list_one": lambda c: c.list_one(1),
    "uidl": _uidl,
    "uidl_one": lambda c: c.uidl_one(2),
    "uidl_and_list": _uidl_and_list,
    "top": lambda c: _bytes(c.top(1, 3)),
    "retr": lambda c: _bytes(c.retr(1)),
    "retr_capped": lambda c: _bytes(c.retr(1, max_bytes=16)),
    "retr_stream": _retr_stream,
    "retr_stream_partly": _retr_stream_partly,
    "top_many": _top_many,
    "retr_many": _retr_many,
    "dele": lambda c: c.dele(1),
    "dele_many": _dele_many,
    "rset": lambda c: c.rset(),
    "noop": lambda c: c.noop(),
    "quit": _quit,
    "capabilities": lambda c: c.ensure_transaction_capabilities(),
}
# Logging in comes first more often than not, so that TRANSACTION commands are reached.
FIRST = st.sampled_from(["login"] * 5 + ["auth_plain", "auth_xoauth2", "capa", "stls", "quit"])
_TRANSACTION = ["stat", "list", "uidl", "uidl_and_list", "top", "retr", "retr_stream"]
_TRANSACTION += ["top_many", "retr_many", "dele", "dele_many", "list_one", "uidl_one"]
OP_NAMES = st.sampled_from(sorted(OPS) + _TRANSACTION)


@dataclass(frozen=True)
class Session:
    pipelining: bool
    max_line: int
    ops: tuple[str, ...]


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    ops = (draw(FIRST), *draw(st.lists(OP_NAMES, max_size=8)))
    return Session(draw(st.booleans()), draw(st.sampled_from([512, 8192])), ops)


# -- the property ---------------------------------------------------------------------------


async def play(server: ScriptedServer, script: Script, session: Session) -> list[str]:
    """Run the session against the script; return how each operation ended."""
    server.script = script
    outcomes: list[str] = []
    client: POP3Client | None = None
    try:
        async with asyncio.timeout(HANG_BOUND):
            try:
                client = await POP3Client.connect(
                    "127.0.0.1",
                    server.port,
                    tls=TLSMode.PLAIN,
                    timeouts=TIMEOUTS,
                    pipelining=session.pipelining,
                    pipeline_window=4,
                    max_line=session.max_line,
                    allow_apop=True,
                )
            except POP3Error as exc:
                return [f"connect: {type(exc).__name__}"]
            for name in session.ops:
                outcomes.append(await _step(client, name))
    except TimeoutError:
        raise AssertionError(f"the client hung; steps so far: {outcomes}") from None
    finally:
        if client is not None:
            client.abort()
    assert await server.wait_idle(5.0), "a server connection outlived the client"
    return outcomes


async def _step(client: POP3Client, name: str) -> str:
    error: POP3Error | None = None
    try:
        await OPS[name](client)
    except POP3Error as exc:
        error = exc
    if error is None:
        return f"{name}: ok"
    if isinstance(error, POP3TimeoutError | POP3ConnectionError):
        # A timeout or a broken connection closes the session: it is never reused.
        assert client.state is State.CLOSED, f"{name}: {error!r} left the session open"
    return f"{name}: {type(error).__name__}"


def test_client_against_random_servers() -> None:
    with asyncio.Runner() as runner:
        server = ScriptedServer()
        runner.run(server.start())
        try:

            @given(scripts(), sessions())
            @budget("client: end to end", default=200, long=12_000)
            def check(script: Script, session: Session) -> None:
                ran("client: end to end")
                runner.run(play(server, script, session))

            check()
        finally:
            runner.run(server.stop())
