"""The fake POP3 server speaks POP3 correctly and produces each scripted fault.

CPython's poplib is the independent client (run in a thread: the server lives on the
test's event loop); raw connections observe the faults byte by byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import poplib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest
import trustme

from tests.support.fakepop3 import (
    Delay,
    Drop,
    DropAfter,
    Err,
    FakeMailbox,
    FakePOP3Server,
    Reply,
    Stall,
)

T = TypeVar("T")

USERS = {"alice": "s3cret pass", "bob": "hunter2"}
TOKENS = {"alice": "ya29." + "t" * 3000}

MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nfirst body\r\nline two\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\n"
MSG3 = b"Subject: three\r\n\r\n" + b"x" * 2000 + b"\r\nlast\r\n"


def mailbox() -> FakeMailbox:
    return FakeMailbox([("uid-1", MSG1), ("uid-2", MSG2), ("uid-3", MSG3)])


def fake(box: FakeMailbox | None = None, **options: Any) -> FakePOP3Server:
    return FakePOP3Server(box or mailbox(), users=USERS, tokens=TOKENS, **options)


async def with_poplib(
    server: FakePOP3Server,
    session: Callable[[poplib.POP3], T],
    *,
    implicit: ssl.SSLContext | None = None,
) -> T:
    """Run `session` on a poplib connection in a worker thread; always closes the socket."""

    def run() -> T:
        if implicit is not None:
            pop: poplib.POP3 = poplib.POP3_SSL(
                server.host, server.port, context=implicit, timeout=5
            )
        else:
            pop = poplib.POP3(server.host, server.port, timeout=5)
        try:
            return session(pop)
        finally:
            pop.close()

    return await asyncio.to_thread(run)


class Raw:
    """A byte-level client on the test's loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: FakePOP3Server) -> Raw:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def multi(self, end: bytes = b"\r\n.\r\n", timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(end), timeout)

    async def command(self, line: bytes) -> bytes:
        await self.send(line + b"\r\n")
        return await self.line()

    async def rest(self, timeout: float = 3.0) -> bytes:
        """Everything until the server closes."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def silent(self, seconds: float = 0.3) -> bool:
        """True if nothing arrives (not even EOF) within `seconds`."""
        try:
            await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return True
        return False

    async def login(self, user: str = "alice") -> None:
        assert (await self.line()).startswith(b"+OK")
        assert await self.command(b"USER " + user.encode()) == b"+OK\r\n"
        assert (await self.command(b"PASS " + USERS[user].encode())).startswith(b"+OK")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(server: FakePOP3Server) -> AsyncIterator[Raw]:
    client = await Raw.connect(server)
    try:
        yield client
    finally:
        await client.close()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --------------------------------------------------------------------------- TLS material


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# --------------------------------------------------------------------------- POP3 semantics


async def test_poplib_full_session_deletes_only_on_quit() -> None:
    box = mailbox()
    async with fake(box) as server:

        def session(pop: poplib.POP3) -> None:
            assert pop.getwelcome().startswith(b"+OK fakepop3 ready. <")
            pop.user("alice")
            pop.pass_(USERS["alice"])
            count, size = pop.stat()
            assert count == 3
            assert size == len(MSG1) + len(MSG2) + len(MSG3)
            assert pop.list()[1] == [b"1 %d" % len(MSG1), b"2 %d" % len(MSG2), b"3 %d" % len(MSG3)]
            assert cast(bytes, pop.list(2)) == b"+OK 2 %d" % len(MSG2)
            assert pop.uidl()[1] == [b"1 uid-1", b"2 uid-2", b"3 uid-3"]
            assert pop.uidl(3) == b"+OK 3 uid-3"
            assert pop.top(1, 1)[1] == [b"From: a@example.org", b"Subject: one", b"", b"first body"]
            assert pop.top(1, 0)[1] == [b"From: a@example.org", b"Subject: one", b""]
            response, lines, _octets = pop.retr(3)
            assert response == b"+OK %d octets" % len(MSG3)
            assert b"\r\n".join(lines) + b"\r\n" == MSG3
            pop.dele(1)
            pop.dele(3)
            assert pop.stat() == (1, len(MSG2))
            assert box.uids() == ["uid-1", "uid-2", "uid-3"]  # marks only
            assert pop.quit() == b"+OK Logging out, messages deleted"

        await with_poplib(server, session)
    assert box.uids() == ["uid-2"]
    assert [m.uid for m in box.removed] == ["uid-1", "uid-3"]
    assert server.connections[0].updated


async def test_dot_stuffing_round_trip() -> None:
    tricky = b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.x\r\nx.\r\n \r\n.\r\n"
    box = FakeMailbox([("d", tricky)])
    async with fake(box) as server:
        lines = await with_poplib(
            server, lambda pop: (pop.user("bob"), pop.pass_("hunter2"), pop.retr(1)[1])[2]
        )
        assert b"\r\n".join(lines) + b"\r\n" == tricky
        async with raw(server) as client:
            await client.login("bob")
            await client.send(b"RETR 1\r\n")
            wire = await client.multi()
            assert wire.endswith(b"\r\n..\r\n...\r\n....\r\n..x\r\nx.\r\n \r\n..\r\n.\r\n")


async def test_bare_lf_and_missing_final_newline_are_sent_as_crlf() -> None:
    box = FakeMailbox([("lf", b"Subject: lf\n\nbody")])
    async with fake(box) as server, raw(server) as client:
        await client.login()
        assert await client.command(b"LIST 1") == b"+OK 1 21\r\n"
        await client.send(b"RETR 1\r\n")
        assert await client.multi() == b"+OK 21 octets\r\nSubject: lf\r\n\r\nbody\r\n.\r\n"


async def test_message_numbers_and_deleted_marks_follow_rfc1939() -> None:
    async with fake() as server, raw(server) as client:
        await client.login()
        assert await client.command(b"DELE 1") == b"+OK Message 1 deleted\r\n"
        for command in (b"RETR 1", b"LIST 1", b"UIDL 1", b"TOP 1 0", b"DELE 1"):
            assert await client.command(command) == b"-ERR Message is deleted\r\n"
        for command in (b"RETR 4", b"LIST 0", b"DELE 99"):
            assert await client.command(command) == b"-ERR No such message\r\n"
        for command in (b"RETR x", b"LIST -1", b"RETR"):
            assert await client.command(command) == b"-ERR Invalid message number\r\n"
        assert await client.command(b"TOP 2 x") == b"-ERR Invalid number of lines\r\n"
        await client.send(b"LIST\r\n")
        listing = await client.multi()
        assert listing.splitlines()[1:] == [b"2 %d" % len(MSG2), b"3 %d" % len(MSG3), b"."]
        assert await client.command(b"RSET") == b"+OK 3 messages\r\n"
        assert await client.command(b"LIST 1") == b"+OK 1 %d\r\n" % len(MSG1)
        assert await client.command(b"USER x") == b"-ERR Command not valid in this state\r\n"
        assert await client.command(b"XYZZY") == b"-ERR Unknown command\r\n"
        assert await client.command(b"noop") == b"+OK\r\n"


async def test_authorization_state_rules() -> None:
    async with fake() as server, raw(server) as client:
        assert (await client.line()).startswith(b"+OK")
        assert await client.command(b"STAT") == b"-ERR Command not valid in this state\r\n"
        assert await client.command(b"PASS x") == b"-ERR No user name given\r\n"
        assert await client.command(b"USER alice") == b"+OK\r\n"
        assert await client.command(b"PASS wrong") == b"-ERR [AUTH] Authentication failed.\r\n"
        assert await client.command(b"QUIT") == b"+OK Logging out\r\n"
        assert await client.rest() == b""


async def test_dropped_connection_rolls_back() -> None:
    box = mailbox()
    async with fake(box) as server:
        async with raw(server) as client:
            await client.login()
            assert (await client.command(b"DELE 1")).startswith(b"+OK")
            assert (await client.command(b"DELE 2")).startswith(b"+OK")
        await server.wait_idle()
        assert box.uids() == ["uid-1", "uid-2", "uid-3"]
        assert box.removed == []
        assert not server.connections[0].updated


async def test_quit_dropped_before_processing_versus_reply_lost() -> None:
    box = mailbox()
    async with fake(box) as server:
        server.script("QUIT", Drop())
        async with raw(server) as client:
            await client.login()
            await client.command(b"DELE 1")
            await client.send(b"QUIT\r\n")
            assert await client.rest() == b""
        assert box.uids() == ["uid-1", "uid-2", "uid-3"]

        server.script("QUIT", DropAfter(0))
        async with raw(server) as client:
            await client.login()
            await client.command(b"DELE 1")
            await client.send(b"QUIT\r\n")
            assert await client.rest() == b""  # the reply is lost, the update happened
        assert box.uids() == ["uid-2", "uid-3"]


async def test_maildrop_is_a_snapshot_and_duplicate_uids_are_kept_apart() -> None:
    box = FakeMailbox([("same", MSG1), ("same", MSG1)])
    async with fake(box) as server, raw(server) as client:
        await client.login()
        box.add("new", MSG2)
        assert await client.command(b"STAT") == b"+OK 2 %d\r\n" % (2 * len(MSG1))
        assert await client.command(b"DELE 2") == b"+OK Message 2 deleted\r\n"
        assert await client.command(b"QUIT") == b"+OK Logging out, messages deleted\r\n"
    assert box.uids() == ["same", "new"]
    assert box.messages[0] is not box.removed[0]


async def test_list_sizes_may_differ_from_retr() -> None:
    box = FakeMailbox()
    box.add("a", MSG1, list_size=7)
    box.add("b", MSG2)
    async with fake(box, list_size_delta=-3) as server, raw(server) as client:
        await client.login()
        assert await client.command(b"LIST 1") == b"+OK 1 4\r\n"
        assert await client.command(b"LIST 2") == b"+OK 2 %d\r\n" % (len(MSG2) - 3)
        assert await client.command(b"STAT") == b"+OK 2 %d\r\n" % (4 + len(MSG2) - 3)
        await client.send(b"RETR 1\r\n")
        assert (await client.multi()).startswith(b"+OK %d octets\r\n" % len(MSG1))


async def test_pipelined_commands_are_answered_in_order() -> None:
    async with fake() as server, raw(server) as client:
        assert (await client.line()).startswith(b"+OK")
        await client.send(
            b"USER alice\r\nPASS s3cret pass\r\nSTAT\r\nUIDL 2\r\nTOP 1 0\r\nNOOP\r\n"
        )
        assert await client.line() == b"+OK\r\n"
        assert await client.line() == b"+OK Logged in.\r\n"
        assert (await client.line()).startswith(b"+OK 3 ")
        assert await client.line() == b"+OK 2 uid-2\r\n"
        assert (await client.multi()).endswith(b"Subject: one\r\n\r\n.\r\n")
        assert await client.line() == b"+OK\r\n"


async def test_capa_differs_before_and_after_login(server_tls: ssl.SSLContext) -> None:
    async with fake(tls_context=server_tls, login_delay=300, expire="NEVER") as server:

        def session(pop: poplib.POP3) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
            before = pop.capa()
            pop.user("alice")
            pop.pass_(USERS["alice"])
            return before, pop.capa()

        before, after = await with_poplib(server, session)
    assert before["SASL"] == ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"]
    for name in ("USER", "STLS", "TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"):
        assert name in before
    assert before["LOGIN-DELAY"] == ["300"]
    assert before["EXPIRE"] == ["NEVER"]
    assert before["IMPLEMENTATION"] == ["fakepop3"]
    assert "UTF8" in before
    for name in ("USER", "STLS", "SASL"):
        assert name not in after
    assert "PIPELINING" in after


async def test_capa_lists_are_configurable_and_uidl_can_be_missing() -> None:
    async with fake(uidl=False, capa_before=["USER", "EXPIRENEVER"], capa_after=["TOP"]) as server:

        def session(pop: poplib.POP3) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
            before = pop.capa()
            pop.user("alice")
            pop.pass_(USERS["alice"])
            after = pop.capa()
            with pytest.raises(poplib.error_proto, match="Unknown command"):
                pop.uidl()
            return before, after

        before, after = await with_poplib(server, session)
    assert before == {"USER": [], "EXPIRENEVER": []}
    assert after == {"TOP": []}


async def test_apop_and_utf8() -> None:
    async with fake() as server:

        def session(pop: poplib.POP3) -> tuple[bytes, int]:
            utf8 = pop.utf8()
            pop.apop("bob", "hunter2")
            return utf8, pop.stat()[0]

        assert await with_poplib(server, session) == (b"+OK UTF8 enabled", 3)
        record = server.connections[0]
        assert record.utf8
        assert record.user == "bob"
        digest = hashlib.md5(record.timestamp + b"hunter2", usedforsecurity=False).hexdigest()
        assert server.received[0][1] == b"APOP bob " + digest.encode() + b"\r\n"

        async with raw(server) as client:
            await client.line()
            assert (
                await client.command(b"APOP bob 0123") == b"-ERR [AUTH] Authentication failed.\r\n"
            )


async def test_no_apop_without_timestamp() -> None:
    async with fake(apop=False) as server, raw(server) as client:
        assert await client.line() == b"+OK fakepop3 ready.\r\n"
        assert await client.command(b"APOP bob x") == b"-ERR APOP not available\r\n"


# --------------------------------------------------------------------------- AUTH


async def test_auth_plain_with_initial_response_and_continuation() -> None:
    plain = b64(b"\0alice\0s3cret pass")
    async with fake() as server:
        async with raw(server) as client:
            await client.line()
            assert await client.command(b"AUTH PLAIN " + plain) == b"+OK Logged in.\r\n"
        async with raw(server) as client:
            await client.line()
            assert await client.command(b"AUTH plain") == b"+ \r\n"
            assert await client.command(plain) == b"+OK Logged in.\r\n"
        async with raw(server) as client:
            await client.line()
            assert (
                await client.command(b"AUTH PLAIN =") == b"-ERR [AUTH] Authentication failed.\r\n"
            )
            assert await client.command(b"AUTH PLAIN") == b"+ \r\n"
            assert await client.command(b"*") == b"-ERR Authentication cancelled\r\n"
            assert await client.command(b"AUTH PLAIN !!!") == b"-ERR Invalid base64 data\r\n"
            assert (
                await client.command(b"AUTH CRAM-MD5")
                == b"-ERR Unsupported authentication mechanism\r\n"
            )
            await client.send(b"AUTH\r\n")
            assert (
                await client.multi() == b"+OK\r\nPLAIN\r\nLOGIN\r\nXOAUTH2\r\nOAUTHBEARER\r\n.\r\n"
            )
    assert [r.user for r in server.connections] == ["alice", "alice", None]


async def test_auth_login() -> None:
    async with fake() as server, raw(server) as client:
        await client.line()
        assert await client.command(b"AUTH LOGIN") == b"+ " + b64(b"Username:") + b"\r\n"
        assert await client.command(b64(b"bob")) == b"+ " + b64(b"Password:") + b"\r\n"
        assert await client.command(b64(b"hunter2")) == b"+OK Logged in.\r\n"


async def test_xoauth2_two_step_with_a_long_token() -> None:
    token = b"user=alice\x01auth=Bearer " + TOKENS["alice"].encode() + b"\x01\x01"
    assert len(b64(token)) > 4000
    async with fake() as server, raw(server) as client:
        await client.line()
        assert await client.command(b"AUTH XOAUTH2") == b"+ \r\n"
        assert await client.command(b64(token)) == b"+OK Logged in.\r\n"
        assert server.received[0][-1] == b64(token) + b"\r\n"


async def test_xoauth2_failure_sends_a_json_challenge_first() -> None:
    token = b64(b"user=alice\x01auth=Bearer expired\x01\x01")
    async with fake() as server, raw(server) as client:
        await client.line()
        challenge = await client.command(b"AUTH XOAUTH2 " + token)
        assert challenge.startswith(b"+ ")
        error = json.loads(base64.b64decode(challenge[2:]))
        assert error["status"] == "400"
        assert await client.command(b"") == b"-ERR [AUTH] Authentication failed.\r\n"
        assert server.connections[0].user is None


async def test_oauthbearer_success_and_failure() -> None:
    def bearer(token: str) -> bytes:
        return b64(
            b"n,a=alice,\x01host=127.0.0.1\x01port=110\x01auth=Bearer %s\x01\x01" % token.encode()
        )

    async with fake() as server:
        async with raw(server) as client:
            await client.line()
            assert await client.command(b"AUTH OAUTHBEARER") == b"+ \r\n"
            assert await client.command(bearer(TOKENS["alice"])) == b"+OK Logged in.\r\n"
        async with raw(server) as client:
            await client.line()
            challenge = await client.command(b"AUTH OAUTHBEARER " + bearer("nope"))
            assert json.loads(base64.b64decode(challenge[2:]))["status"] == "invalid_token"
            assert await client.command(b"AQ==") == b"-ERR [AUTH] Authentication failed.\r\n"


# --------------------------------------------------------------------------- recording


async def test_every_received_line_is_recorded_raw() -> None:
    async with fake() as server:

        def session(pop: poplib.POP3) -> None:
            # poplib does not check arguments for CR/LF: the injection reaches the wire.
            pop.user("alice\r\nDELE 1")
            with contextlib.suppress(poplib.error_proto):
                pop.pass_("x\0y")

        await with_poplib(server, session)
        await server.wait_idle()
    assert server.received == [[b"USER alice\r\n", b"DELE 1\r\n", b"PASS x\0y\r\n"]]


async def test_partial_final_line_is_recorded() -> None:
    async with fake() as server:
        async with raw(server) as client:
            await client.line()
            await client.send(b"NOOP\r\nQUI")
        await server.wait_idle()
    assert server.received == [[b"NOOP\r\n", b"QUI"]]


# --------------------------------------------------------------------------- scripted faults


async def test_drop_closes_without_reply() -> None:
    async with fake() as server:
        rule = server.script("stat", Drop())
        async with raw(server) as client:
            await client.login()
            await client.send(b"STAT\r\n")
            assert await client.rest() == b""
        async with raw(server) as client:  # times=1: the next connection works
            await client.login()
            assert (await client.command(b"STAT")).startswith(b"+OK 3 ")
    assert rule.fired == 1


async def test_drop_after_sends_part_of_the_real_reply() -> None:
    async with fake() as server, raw(server) as client:
        server.script("RETR", DropAfter(20))
        await client.login()
        await client.send(b"RETR 1\r\n")
        assert await client.rest() == (b"+OK %d octets\r\n" % len(MSG1) + MSG1)[:20]


async def test_stall_keeps_the_connection_open_and_silent() -> None:
    server = fake()
    await server.start()
    client = await Raw.connect(server)
    try:
        await client.login()
        server.script("RETR", Stall())
        await client.send(b"RETR 1\r\nNOOP\r\n")
        assert await client.silent(0.3)
        await client.send(b"NOOP\r\n")
        assert await client.silent(0.2)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 10  # bounded (a hang would block forever)
        assert await client.rest() == b""
    finally:
        await client.close()
    assert server.received[0][-3:] == [b"RETR 1\r\n", b"NOOP\r\n", b"NOOP\r\n"]


async def test_reply_sends_exact_bytes_instead() -> None:
    async with fake() as server, raw(server) as client:
        await client.login()
        half = b"+OK 2 messages\r\n1 10\r\n2 2"
        server.script("LIST", Reply(half), arg="")
        server.script("NOOP", Reply(b"garbage\x00\xff\r\n", close=True))
        await client.send(b"LIST\r\n")
        assert await asyncio.wait_for(client.reader.readexactly(len(half)), 3) == half
        assert await client.command(b"LIST 1") == b"+OK 1 %d\r\n" % len(MSG1)
        await client.send(b"NOOP\r\n")
        assert await client.rest() == b"garbage\x00\xff\r\n"


async def test_err_with_and_without_code() -> None:
    async with fake() as server:
        server.script("PASS", Err("IN-USE", "Mailbox in use"))
        server.script("PASS", Err("LOGIN-DELAY", ""))
        server.script("PASS", Err("SYS/TEMP", "try later", close=True))
        server.script("PASS", Err(None, "Login failed."))
        async with raw(server) as client:
            await client.line()
            replies = []
            for _ in range(3):
                await client.command(b"USER alice")
                replies.append(await client.command(b"PASS s3cret pass"))
            assert await client.rest() == b""
        assert replies == [
            b"-ERR [IN-USE] Mailbox in use\r\n",
            b"-ERR [LOGIN-DELAY]\r\n",
            b"-ERR [SYS/TEMP] try later\r\n",
        ]
        async with raw(server) as client:
            await client.line()
            await client.command(b"USER alice")
            assert await client.command(b"PASS s3cret pass") == b"-ERR Login failed.\r\n"
            await client.command(b"USER alice")
            assert await client.command(b"PASS s3cret pass") == b"+OK Logged in.\r\n"


async def test_delay_then_the_real_reply() -> None:
    async with fake() as server, raw(server) as client:
        await client.login()
        server.script("NOOP", Delay(0.3))
        started = time.monotonic()
        assert await client.command(b"NOOP") == b"+OK\r\n"
        assert time.monotonic() - started >= 0.3


async def test_rule_skip_times_and_wildcard() -> None:
    async with fake() as server, raw(server) as client:
        await client.login()
        server.script("RETR", Err("SYS/TEMP", "busy"), skip=1, times=2)
        replies = [await client.command(b"LIST 1")]
        for _ in range(4):
            await client.send(b"RETR 1\r\n")
            first = await client.line()
            if first.startswith(b"+OK"):
                await client.multi(b"\r\n.\r\n")
            replies.append(first)
        assert replies[1:] == [
            b"+OK %d octets\r\n" % len(MSG1),
            b"-ERR [SYS/TEMP] busy\r\n",
            b"-ERR [SYS/TEMP] busy\r\n",
            b"+OK %d octets\r\n" % len(MSG1),
        ]
        server.script("*", Err(None, "everything fails"), times=None)
        assert await client.command(b"NOOP") == b"-ERR everything fails\r\n"
        assert await client.command(b"STAT") == b"-ERR everything fails\r\n"


async def test_greeting_faults() -> None:
    async with fake(greeting=None) as server, raw(server) as client:
        assert await client.rest() == b""
    async with (
        fake(greeting=b"-ERR [IN-USE] too many connections") as server,
        raw(server) as client,
    ):
        assert await client.rest() == b"-ERR [IN-USE] too many connections\r\n"
    async with fake() as server:
        server.script("GREETING", Stall())
        server.script("GREETING", Reply(b"+OK half"))
        server.script("GREETING", Delay(0.2))
        async with raw(server) as client:
            assert await client.silent()
        async with raw(server) as client:
            assert await client.reader.readexactly(8) == b"+OK half"
            assert await client.silent(0.1)
        started = time.monotonic()
        async with raw(server) as client:
            assert (await client.line()).startswith(b"+OK fakepop3 ready. <")
            assert time.monotonic() - started >= 0.2


async def test_custom_greeting_keeps_its_timestamp() -> None:
    async with fake(greeting=b"+OK hello <1.2@host>") as server:

        def session(pop: poplib.POP3) -> bytes:
            pop.apop("alice", USERS["alice"])
            return pop.getwelcome()

        assert await with_poplib(server, session) == b"+OK hello <1.2@host>"
        assert server.connections[0].timestamp == b"<1.2@host>"


# --------------------------------------------------------------------------- server-wide quirks


async def test_one_byte_chunks_still_parse_with_poplib() -> None:
    box = mailbox()
    async with fake(box, chunk_size=1) as server:

        def session(pop: poplib.POP3) -> list[bytes]:
            pop.user("alice")
            pop.pass_(USERS["alice"])
            lines = pop.retr(2)[1]
            pop.dele(2)
            pop.quit()
            return lines

        lines = await with_poplib(server, session)
    assert b"\r\n".join(lines) + b"\r\n" == MSG2
    assert box.uids() == ["uid-1", "uid-3"]


async def test_one_byte_chunks_arrive_separately() -> None:
    async with fake(chunk_size=1) as server, raw(server) as client:
        sizes: list[int] = []
        while sum(sizes) < 5:
            sizes.append(len(await client.reader.read(100)))
        assert max(sizes) < 5


async def test_bare_lf_everywhere() -> None:
    async with fake(bare_lf=True) as server:

        def session(pop: poplib.POP3) -> list[bytes]:
            pop.user("alice")
            pop.pass_(USERS["alice"])
            return pop.retr(2)[1]

        lines = await with_poplib(server, session)
        assert b"\r\n".join(lines) + b"\r\n" == MSG2
        async with raw(server) as client:
            greeting = await client.line()
            assert greeting.endswith(b">\n")
            assert not greeting.endswith(b"\r\n")
            await client.send(b"USER alice\r\nPASS s3cret pass\r\nRETR 2\r\n")
            assert await client.line() == b"+OK\n"
            assert await client.line() == b"+OK Logged in.\n"
            wire = await client.multi(b"\n.\n")
            assert b"\r" not in wire
            assert wire.endswith(b"\n..starts with a dot\n...two dots\n..\n.\n")


async def test_courier_loses_what_was_pipelined_with_pass() -> None:
    async with fake(drop_pipelined_after_pass=True) as server, raw(server) as client:
        await client.line()
        await client.send(b"USER alice\r\nPASS s3cret pass\r\nSTAT\r\n")
        assert await client.line() == b"+OK\r\n"
        assert await client.line() == b"+OK Logged in.\r\n"
        assert await client.silent()
        assert (await client.command(b"STAT")).startswith(b"+OK 3 ")


async def test_pipelining_lies_answers_the_first_command_of_each_packet() -> None:
    async with fake(pipelining_lies=True) as server, raw(server) as client:
        await client.login()
        await client.send(b"NOOP\r\nSTAT\r\nLIST 1\r\n")
        assert await client.line() == b"+OK\r\n"
        assert await client.silent()
        assert await client.command(b"LIST 2") == b"+OK 2 %d\r\n" % len(MSG2)
    # Dropped input is still recorded.
    assert server.received[0][-4:] == [b"NOOP\r\n", b"STAT\r\n", b"LIST 1\r\n", b"LIST 2\r\n"]


async def test_overlong_command_line_is_refused_and_closed() -> None:
    async with fake(max_line=255) as server:
        async with raw(server) as client:
            await client.line()
            assert (await client.command(b"USER " + b"a" * 250)) == b"+OK\r\n"
            await client.send(b"USER " + b"a" * 251 + b"\r\nNOOP\r\n")
            assert await client.rest() == b"-ERR line too long\r\n"
        async with raw(server) as client:  # no line ending at all: refused just the same
            await client.line()
            await client.send(b"X" * 10_000)
            assert await client.rest() == b"-ERR line too long\r\n"


async def test_lock_refuses_a_second_session() -> None:
    async with fake(lock=True) as server:
        async with raw(server) as first, raw(server) as second:
            await first.login()
            await second.line()
            await second.command(b"USER alice")
            assert await second.command(b"PASS s3cret pass") == (
                b"-ERR [IN-USE] Mailbox is locked by another session\r\n"
            )
        await server.wait_idle()
        async with raw(server) as third:
            await third.login()


async def test_per_user_mailboxes() -> None:
    shared, bobs = mailbox(), FakeMailbox([("b1", MSG1)])
    server = FakePOP3Server(shared, mailboxes={"bob": bobs}, users=USERS)
    async with server, raw(server) as client:
        await client.login("bob")
        assert await client.command(b"STAT") == b"+OK 1 %d\r\n" % len(MSG1)
        assert await client.command(b"DELE 1") == b"+OK Message 1 deleted\r\n"
        assert (await client.command(b"QUIT")).startswith(b"+OK")
    assert len(bobs) == 0
    assert len(shared) == 3


# --------------------------------------------------------------------------- TLS


async def test_stls_with_poplib(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with fake(tls_context=server_tls) as server:

        def session(pop: poplib.POP3) -> tuple[dict[str, list[str]], int]:
            pop.stls(client_tls)
            capa = pop.capa()
            pop.user("alice")
            pop.pass_(USERS["alice"])
            count = pop.stat()[0]
            pop.quit()
            return capa, count

        capa, count = await with_poplib(server, session)
    assert "STLS" not in capa
    assert count == 3
    assert server.connections[0].tls


async def test_stls_refused_after_login_and_without_context() -> None:
    async with fake() as server, raw(server) as client:
        await client.line()
        assert await client.command(b"STLS") == b"-ERR STLS not available\r\n"
        await client.command(b"USER alice")
        await client.command(b"PASS s3cret pass")
        assert await client.command(b"STLS") == b"-ERR Command not valid in this state\r\n"


async def test_stls_injection_arrives_before_the_handshake(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with fake(tls_context=server_tls, inject_after_stls=b"+OK injected\r\n") as server:
        async with raw(server) as client:
            await client.line()
            await client.send(b"STLS\r\n")
            assert await client.line() == b"+OK Begin TLS negotiation\r\n"
            assert await client.line() == b"+OK injected\r\n"  # plaintext, before any TLS
            await client.writer.start_tls(client_tls, server_hostname="localhost")
            await client.send(b"CAPA\r\n")
            capa = await client.multi()
            assert b"\r\nSTLS\r\n" not in capa
            assert server.connections[0].tls
        async with raw(server) as client:  # a client that never starts the handshake
            await client.line()
            await client.send(b"STLS\r\n")
            await client.line()
            await client.line()


async def test_stls_discards_plaintext_sent_with_it(server_tls: ssl.SSLContext) -> None:
    async with fake(tls_context=server_tls) as server, raw(server) as client:
        await client.line()
        await client.send(b"STLS\r\nUSER injected\r\n")
        assert await client.line() == b"+OK Begin TLS negotiation\r\n"
        assert await client.silent()
    assert server.connections[0].user is None


async def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with fake(tls_context=server_tls, implicit_tls=True) as server:

        def session(pop: poplib.POP3) -> dict[str, list[str]]:
            capa = pop.capa()
            pop.user("alice")
            pop.pass_(USERS["alice"])
            pop.quit()
            return capa

        capa = await with_poplib(server, session, implicit=client_tls)
    assert "STLS" not in capa
    assert server.connections[0].tls


async def test_stop_is_bounded_with_tls_clients_that_never_answer(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = fake(tls_context=server_tls)
    await server.start()
    client = await Raw.connect(server)
    try:
        await client.line()
        await client.send(b"STLS\r\n")
        await client.line()
        await client.writer.start_tls(client_tls, server_hostname="localhost")
        server.script("NOOP", Stall())
        await client.send(b"NOOP\r\n")
        assert await client.silent(0.2)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 10  # bounded (a hang would block forever)
    finally:
        await client.close()


async def test_stop_is_bounded_during_a_handshake_that_never_starts(
    server_tls: ssl.SSLContext,
) -> None:
    server = fake(tls_context=server_tls)
    await server.start()
    client = await Raw.connect(server)
    try:
        await client.line()
        assert await client.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 10  # bounded (a hang would block forever)
        assert await client.rest() == b""
    finally:
        await client.close()


async def test_stop_is_bounded_when_the_client_reads_nothing() -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2000
    server = fake(FakeMailbox([("big", big)]))
    await server.start()
    client = await Raw.connect(server)
    try:
        await client.line()
        await client.send(b"USER alice\r\nPASS s3cret pass\r\n" + b"RETR 1\r\n" * 50)
        await asyncio.sleep(0.2)  # the server is now blocked on a full socket
        started = time.monotonic()
        await server.stop(timeout=0.3)
        assert time.monotonic() - started < 1.9  # the short timeout applied, not the 2 s default
    finally:
        client.writer.transport.abort()
        await client.close()
