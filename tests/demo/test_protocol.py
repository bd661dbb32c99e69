"""The demo server speaks POP3 (RFC 1939, 2449, 5034) to poplib and to raw sockets."""

from __future__ import annotations

import base64
import poplib
from typing import cast

import pytest

from gateway.demo import DemoPOP3Server, demo_messages
from gateway.pop3 import POP3AuthError, POP3Client, Timeouts, TLSMode

from .helpers import poplib_login, raw, unstuff, with_poplib

MESSAGES = demo_messages()
SIZES = [len(data) for _, data in MESSAGES]  # the demo messages are CRLF already
CAPA_BEFORE = [
    b"USER",
    b"SASL PLAIN",
    b"RESP-CODES",
    b"AUTH-RESP-CODE",
    b"PIPELINING",
    b"TOP",
    b"UIDL",
    b"IMPLEMENTATION pop3gw-demo",
]
CAPA_AFTER = CAPA_BEFORE[2:]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --------------------------------------------------------------------------- poplib


async def test_poplib_session_with_every_command(server: DemoPOP3Server) -> None:
    def session(pop: poplib.POP3) -> None:
        assert pop.getwelcome() == b"+OK pop3gw-demo POP3 server ready"
        assert pop.capa() == {
            "USER": [],
            "SASL": ["PLAIN"],
            "RESP-CODES": [],
            "AUTH-RESP-CODE": [],
            "PIPELINING": [],
            "TOP": [],
            "UIDL": [],
            "IMPLEMENTATION": ["pop3gw-demo"],
        }
        assert pop.user("demo") == b"+OK send PASS"
        assert pop.pass_("demo") == (
            b"+OK demo's maildrop has %d messages (%d octets)" % (len(SIZES), sum(SIZES))
        )
        assert list(pop.capa()) == [
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "TOP",
            "UIDL",
            "IMPLEMENTATION",
        ]
        assert pop.stat() == (len(SIZES), sum(SIZES))
        response, listing, _ = pop.list()
        assert response == b"+OK %d messages (%d octets)" % (len(SIZES), sum(SIZES))
        assert listing == [b"%d %d" % (n, size) for n, size in enumerate(SIZES, 1)]
        assert cast(bytes, pop.list(2)) == b"+OK 2 %d" % SIZES[1]
        _, uidl, _ = pop.uidl()
        assert uidl == [b"%d %s" % (n, uid.encode()) for n, (uid, _) in enumerate(MESSAGES, 1)]
        assert pop.uidl(5) == b"+OK 5 demo/2024+05?x"
        for number, (_uid, data) in enumerate(MESSAGES, 1):
            response, lines, _ = pop.retr(number)
            assert response == b"+OK %d octets" % len(data)
            assert b"".join(line + b"\r\n" for line in lines) == data
        header = MESSAGES[0][1].split(b"\r\n\r\n")[0].split(b"\r\n")
        body = MESSAGES[0][1].split(b"\r\n\r\n", 1)[1].split(b"\r\n")
        assert pop.top(1, 0)[1] == [*header, b""]
        assert pop.top(1, 2)[1] == [*header, b"", *body[:2]]
        assert pop.top(1, 10_000)[1] == [*header, b"", *body[:-1]]
        assert pop.dele(1) == b"+OK message 1 deleted"
        assert pop.stat() == (len(SIZES) - 1, sum(SIZES) - SIZES[0])
        assert [n for n, *_ in (x.split() for x in pop.list()[1])] == [
            b"%d" % n for n in range(2, len(SIZES) + 1)
        ]
        assert pop.rset() == b"+OK maildrop has %d messages (%d octets)" % (
            len(SIZES),
            sum(SIZES),
        )
        assert pop.stat() == (len(SIZES), sum(SIZES))
        assert pop.noop() == b"+OK"
        assert pop.quit() == b"+OK pop3gw-demo signing off (%d messages left)" % len(SIZES)

    await with_poplib(server, session)
    assert server.messages() == MESSAGES


async def test_poplib_wrong_password_then_right_one(server: DemoPOP3Server) -> None:
    def session(pop: poplib.POP3) -> bytes:
        pop.user("demo")
        with pytest.raises(poplib.error_proto) as wrong:
            pop.pass_("wrong")
        with pytest.raises(poplib.error_proto) as unknown:
            poplib_login(pop, ("nobody", "demo"))
        with pytest.raises(poplib.error_proto) as case:
            poplib_login(pop, ("DEMO", "demo"))
        for failure in (wrong, unknown, case):
            assert failure.value.args[0] == b"-ERR [AUTH] invalid user name or password"
        with pytest.raises(poplib.error_proto, match="send USER first"):
            pop.pass_("demo")  # USER is forgotten after a failed PASS
        poplib_login(pop)
        return pop.quit()

    assert (await with_poplib(server, session)).startswith(b"+OK")


async def test_poplib_dele_and_quit_removes(server: DemoPOP3Server) -> None:
    def session(pop: poplib.POP3) -> None:
        poplib_login(pop)
        pop.dele(2)
        pop.dele(5)
        left = len(MESSAGES) - 2
        assert pop.quit() == b"+OK pop3gw-demo signing off (%d messages left)" % left

    await with_poplib(server, session)
    expected = [m for i, m in enumerate(MESSAGES) if i not in (1, 4)]
    assert server.messages() == expected

    def next_session(pop: poplib.POP3) -> list[bytes]:
        poplib_login(pop)
        uids = pop.uidl()[1]
        pop.quit()
        return uids

    uids = await with_poplib(server, next_session)
    assert uids == [b"%d %s" % (n, uid.encode()) for n, (uid, _) in enumerate(expected, 1)]


async def test_poplib_dot_stuffing_round_trip() -> None:
    tricky = b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.x\r\nx.\r\n \r\n.. .\r\na line\r\n.\r\n.\r\n"
    async with DemoPOP3Server(messages=[("dots", tricky)]) as server:

        def session(pop: poplib.POP3) -> tuple[bytes, list[bytes]]:
            poplib_login(pop)
            lines = pop.retr(1)[1]
            top = pop.top(1, 3)[1]
            pop.quit()
            return b"".join(line + b"\r\n" for line in lines), top

        data, top = await with_poplib(server, session)
    assert data == tricky
    assert top == [b"Subject: dots", b"", b".", b"..", b"..."]


async def test_gateway_client_reads_and_deletes_by_unique_id(server: DemoPOP3Server) -> None:
    """The client pop3gw itself uses: capabilities, pipelined TOP/RETR, delete, QUIT."""
    timeouts = Timeouts(connect=5, tls=5, command=5, idle=5)
    client = await POP3Client.connect(
        server.host, server.port, tls=TLSMode.PLAIN, timeouts=timeouts
    )
    async with client:
        capabilities = await client.capa()
        assert capabilities.sasl == ("PLAIN",)
        assert capabilities.implementation == "pop3gw-demo"
        await client.auth_plain("demo", "demo")
        assert (await client.ensure_transaction_capabilities()).pipelining
        uids = await client.uidl()
        assert list(uids.values()) == [uid for uid, _ in MESSAGES]
        heads = await client.top_many(sorted(uids), 0)
        assert [h for h in heads if not isinstance(h, bytes)] == []
        bodies = await client.retr_many(sorted(uids))
        assert bodies == [data for _, data in MESSAGES]
        number = next(n for n, uid in uids.items() if uid == "demo/2024+05?x")
        await client.dele(number)
        result = await client.quit()
        assert result.updated
    assert "demo/2024+05?x" not in [uid for uid, _ in server.messages()]


async def test_gateway_client_wrong_password_is_an_auth_error(server: DemoPOP3Server) -> None:
    client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN)
    async with client:
        with pytest.raises(POP3AuthError):
            await client.login("demo", "nope")


# --------------------------------------------------------------------------- raw: states


async def test_capa_before_and_after_login(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(b"CAPA") == b"+OK Capability list follows\r\n"
        assert await c.multi() == b"\r\n".join(CAPA_BEFORE) + b"\r\n.\r\n"
        assert (await c.command(b"USER demo")).startswith(b"+OK")
        assert (await c.command(b"PASS demo")).startswith(b"+OK")
        assert await c.command(b"capa") == b"+OK Capability list follows\r\n"
        assert await c.multi() == b"\r\n".join(CAPA_AFTER) + b"\r\n.\r\n"


@pytest.mark.parametrize(
    "line",
    [b"STAT", b"LIST", b"UIDL", b"TOP 1 0", b"RETR 1", b"DELE 1", b"RSET", b"NOOP"],
)
async def test_transaction_commands_refused_before_login(
    server: DemoPOP3Server, line: bytes
) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert (await c.command(line)).startswith(b"-ERR ")
        assert (await c.command(b"USER demo")).startswith(b"+OK")  # still usable


@pytest.mark.parametrize("line", [b"USER demo", b"PASS demo", b"AUTH PLAIN"])
async def test_authorization_commands_refused_after_login(
    server: DemoPOP3Server, line: bytes
) -> None:
    async with raw(server) as c:
        await c.login()
        assert (await c.command(line)).startswith(b"-ERR ")
        assert (await c.command(b"NOOP")) == b"+OK\r\n"


@pytest.mark.parametrize("line", [b"", b"HELO", b"APOP demo 0123", b"STLS", b"UTF8", b"\xff"])
async def test_unknown_commands(server: DemoPOP3Server, line: bytes) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(line) == b"-ERR unknown command\r\n"


async def test_keywords_are_case_insensitive_and_bare_lf_accepted(
    server: DemoPOP3Server,
) -> None:
    async with raw(server) as c:
        await c.greeting()
        await c.send(b"user demo\npAsS demo\nstat\n")
        assert (await c.line()).startswith(b"+OK")
        assert (await c.line()).startswith(b"+OK demo's maildrop")
        assert await c.line() == b"+OK %d %d\r\n" % (len(SIZES), sum(SIZES))


async def test_quit_in_authorization_closes(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(b"QUIT") == b"+OK pop3gw-demo signing off\r\n"
        assert await c.rest() == b""


# --------------------------------------------------------------------------- raw: auth


async def test_user_pass_password_may_contain_spaces() -> None:
    async with DemoPOP3Server(user="alice", password=" two  words ") as server, raw(server) as c:
        await c.greeting()
        await c.command(b"USER alice")
        assert (await c.command(b"PASS  two  words ")).startswith(b"+OK alice's maildrop")


@pytest.mark.parametrize(
    "payload", [b"\0demo\0demo", b"demo\0demo\0demo"], ids=["no-authzid", "authzid"]
)
async def test_auth_plain_initial_response(server: DemoPOP3Server, payload: bytes) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert (await c.command(b"AUTH PLAIN " + b64(payload))).startswith(b"+OK demo's")
        assert (await c.command(b"STAT")).startswith(b"+OK")


async def test_auth_plain_continuation(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(b"auth plain") == b"+ \r\n"
        assert (await c.command(b64(b"\0demo\0demo"))).startswith(b"+OK demo's")


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH PLAIN " + b64(b"\0demo\0nope")], b"-ERR [AUTH] invalid user name or password"),
        ([b"AUTH PLAIN " + b64(b"\0nobody\0demo")], b"-ERR [AUTH] invalid user name or password"),
        ([b"AUTH PLAIN " + b64(b"root\0demo\0demo")], b"-ERR [AUTH] cannot act as another user"),
        ([b"AUTH PLAIN", b64(b"\0demo\0nope")], b"-ERR [AUTH] invalid user name or password"),
        ([b"AUTH PLAIN", b"*"], b"-ERR authentication cancelled"),
        ([b"AUTH PLAIN", b"not base64!"], b"-ERR invalid base64 in the SASL response"),
        ([b"AUTH PLAIN ="], b"-ERR malformed PLAIN response"),
        ([b"AUTH PLAIN " + b64(b"demo\0demo")], b"-ERR malformed PLAIN response"),
        ([b"AUTH PLAIN a b"], b"-ERR AUTH takes a mechanism and at most one initial response"),
        ([b"AUTH LOGIN"], b"-ERR unsupported SASL mechanism 'LOGIN'"),
        ([b"AUTH \xc3\xa9"], b"-ERR unsupported SASL mechanism '\\xe9'"),
        ([b"PASS demo"], b"-ERR send USER first"),
        ([b"USER"], b"-ERR USER needs a name"),
    ],
)
async def test_authentication_failures(
    server: DemoPOP3Server, lines: list[bytes], reply: bytes
) -> None:
    async with raw(server) as c:
        await c.greeting()
        for line in lines[:-1]:
            assert await c.command(line) == b"+ \r\n"
        assert await c.command(lines[-1]) == reply + b"\r\n"
        # still in AUTHORIZATION, and a good login works
        assert (await c.command(b"STAT")).startswith(b"-ERR")
        assert (await c.command(b"AUTH PLAIN " + b64(b"\0demo\0demo"))).startswith(b"+OK")


async def test_auth_without_mechanism_lists_plain(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert (await c.command(b"AUTH")).startswith(b"+OK")
        assert await c.multi() == b"PLAIN\r\n.\r\n"


async def test_auth_continuation_then_eof_ends_quietly(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(b"AUTH PLAIN") == b"+ \r\n"
        c.writer.write_eof()
        assert await c.rest() == b""


# --------------------------------------------------------------------------- raw: TRANSACTION


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"RETR 0", b"-ERR no such message, only 7 in maildrop"),
        (b"RETR 8", b"-ERR no such message, only 7 in maildrop"),
        (b"RETR -1", b"-ERR invalid message number '-1'"),
        (b"RETR x", b"-ERR invalid message number 'x'"),
        ("RETR é".encode(), b"-ERR invalid message number '\\xe9'"),
        (b"RETR \xff", b"-ERR invalid message number '\\udcff'"),
        (b"RETR 99999999999", b"-ERR invalid message number '99999999999'"),
        (b"RETR", b"-ERR wrong number of arguments for RETR"),
        (b"RETR 1 2", b"-ERR wrong number of arguments for RETR"),
        (b"TOP 1", b"-ERR wrong number of arguments for TOP"),
        (b"TOP 1 x", b"-ERR invalid number of lines 'x'"),
        (b"TOP 1 -1", b"-ERR invalid number of lines '-1'"),
        (b"TOP 9 1", b"-ERR no such message, only 7 in maildrop"),
        (b"LIST 0", b"-ERR no such message, only 7 in maildrop"),
        (b"LIST 1 2", b"-ERR wrong number of arguments for LIST"),
        (b"UIDL 8", b"-ERR no such message, only 7 in maildrop"),
        (b"DELE", b"-ERR wrong number of arguments for DELE"),
        (b"STAT 1", b"-ERR wrong number of arguments for STAT"),
        (b"NOOP x", b"-ERR wrong number of arguments for NOOP"),
    ],
)
async def test_bad_arguments(server: DemoPOP3Server, line: bytes, reply: bytes) -> None:
    async with raw(server) as c:
        await c.login()
        assert await c.command(line) == reply + b"\r\n"
        assert await c.command(b"NOOP") == b"+OK\r\n"


async def test_deleted_messages_are_refused_until_rset(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        assert await c.command(b"DELE 3") == b"+OK message 3 deleted\r\n"
        for line in (b"DELE 3", b"RETR 3", b"TOP 3 0", b"LIST 3", b"UIDL 3"):
            assert await c.command(line) == b"-ERR message 3 already deleted\r\n"
        assert (await c.command(b"UIDL")).startswith(b"+OK")
        assert b"\r\n3 " not in b"\r\n" + await c.multi()
        assert (await c.command(b"RSET")).startswith(b"+OK maildrop has 7 messages")
        assert await c.command(b"UIDL 3") == b"+OK 3 UID3-1715088600\r\n"


async def test_retr_is_dot_stuffed_on_the_wire(server: DemoPOP3Server) -> None:
    number, (_uid, data) = len(MESSAGES), MESSAGES[-1]
    assert b"\r\n.\r\n" in data  # the thread reply holds a line that is a single dot
    async with raw(server) as c:
        await c.login()
        status = await c.command(b"RETR %d" % number)
        assert status == b"+OK %d octets\r\n" % len(data)
        wire = await c.multi()  # up to the first CRLF "." CRLF: stuffed lines never match
        assert b"\r\n..\r\n" in wire
        assert b"\r\n..venv/\r\n" in wire
        assert b"\r\n...and-one-with-two-dots\r\n" in wire
        assert len(wire) == len(data) + data.count(b"\r\n.") + 3
        assert unstuff(wire) == data


async def test_top_of_a_message_without_a_body() -> None:
    messages = [("h", b"Subject: only a header\r\nX-A: b"), ("lf", b"Subject: lf\n\nbody\n")]
    async with DemoPOP3Server(messages=messages) as server, raw(server) as c:
        await c.login()
        assert await c.command(b"LIST") == b"+OK 2 messages (%d octets)\r\n" % (32 + 21)
        assert await c.multi() == b"1 32\r\n2 21\r\n.\r\n"
        assert await c.command(b"TOP 1 5") == b"+OK top of message follows\r\n"
        assert await c.multi() == b"Subject: only a header\r\nX-A: b\r\n.\r\n"
        assert await c.command(b"RETR 2") == b"+OK 21 octets\r\n"
        assert await c.multi() == b"Subject: lf\r\n\r\nbody\r\n.\r\n"


async def test_pipelined_commands_in_one_write_are_answered_in_order(
    server: DemoPOP3Server,
) -> None:
    commands = [
        b"CAPA",
        b"USER demo",
        b"PASS demo",
        b"STAT",
        b"LIST",
        b"UIDL",
        *(b"TOP %d 1" % n for n in range(1, len(MESSAGES) + 1)),
        b"RETR 7",
        b"DELE 1",
        b"LIST 1",
        b"RETR 99",
        b"RSET",
        b"NOOP",
        b"QUIT",
    ]

    # lockstep first, to know each reply
    expected = []
    async with raw(server) as c:
        await c.greeting()
        for line in commands:
            status = await c.command(line)
            verb = line.split(b" ")[0]
            if status.startswith(b"+OK") and (
                verb in (b"CAPA", b"TOP", b"RETR") or line in (b"LIST", b"UIDL")
            ):
                status += await c.multi()
            expected.append(status)
        assert await c.rest() == b""

    async with raw(server) as c:
        await c.greeting()
        await c.send(b"".join(line + b"\r\n" for line in commands))
        assert await c.rest() == b"".join(expected)
    assert server.messages() == MESSAGES
