"""The client against a scriptable server: every fault gives its typed error, the session is
closed when it cannot be trusted any more, and no message is lost or deleted by mistake."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme

from gateway.pop3 import (
    POP3AuthError,
    POP3CapabilityError,
    POP3Client,
    POP3ConnectionError,
    POP3InjectionError,
    POP3InUseError,
    POP3LineTooLongError,
    POP3LoginDelayError,
    POP3OutcomeUnknownError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3SysPermError,
    POP3SysTempError,
    POP3TimeoutError,
    POP3TLSError,
    POP3UpdateError,
    POP3UTF8Error,
    State,
    Timeouts,
    TLSConfig,
    TLSMode,
)
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

FAST = Timeouts(connect=2, tls=2, command=0.5, idle=0.5)
MESSAGES = [
    ("uid-1", b"Subject: one\r\n\r\nfirst\r\n.dot line\r\n"),
    ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
    ("uid-3", b"Subject: three\r\n\r\n" + b"x" * 100_000 + b"\r\nend\r\n"),
]


@pytest.fixture
def mailbox() -> FakeMailbox:
    return FakeMailbox(MESSAGES)


@pytest.fixture
async def server(mailbox: FakeMailbox) -> AsyncIterator[FakePOP3Server]:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, tokens={"alice": "tok"}) as srv:
        yield srv


async def connect(srv: FakePOP3Server, **kwargs: object) -> POP3Client:
    kwargs.setdefault("timeouts", FAST)
    return await POP3Client.connect(srv.host, srv.port, tls=TLSMode.PLAIN, **kwargs)  # type: ignore[arg-type]


async def session(srv: FakePOP3Server, **kwargs: object) -> POP3Client:
    client = await connect(srv, **kwargs)
    await client.login("alice", "pw")
    return client


def assert_intact(mailbox: FakeMailbox) -> None:
    assert mailbox.uids() == [uid for uid, _ in MESSAGES]
    assert mailbox.removed == []


# -- drops, stalls, garbage ------------------------------------------------------------------
async def test_drop_during_retr(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("RETR", DropAfter(5000))
    client = await session(server)
    with pytest.raises(POP3ConnectionError, match="inside a multi-line reply"):
        await client.retr(3)
    assert client.state is State.CLOSED
    assert_intact(mailbox)


async def test_drop_on_command(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("STAT", Drop())
    client = await session(server)
    with pytest.raises(POP3ConnectionError, match="closed the connection"):
        await client.stat()
    assert client.state is State.CLOSED


async def test_stalled_command_times_out(server: FakePOP3Server) -> None:
    server.script("UIDL", Stall())
    client = await session(server)
    with pytest.raises(POP3TimeoutError) as caught:
        await client.uidl()
    assert caught.value.phase == "command"
    assert isinstance(caught.value, TimeoutError)
    assert client.state is State.CLOSED


async def test_stall_inside_a_long_reply_times_out(server: FakePOP3Server) -> None:
    server.script("RETR", Reply(b"+OK\r\nSubject: half\r\n\r\npartial"))
    client = await session(server)
    with pytest.raises(POP3TimeoutError) as caught:
        await client.retr(1)
    assert caught.value.phase == "idle"
    assert client.state is State.CLOSED


async def test_stalled_greeting_times_out() -> None:
    async with FakePOP3Server() as srv:
        srv.script("GREETING", Stall())
        with pytest.raises(POP3TimeoutError) as caught:
            await connect(srv)
        assert caught.value.phase == "greeting"


async def test_tls_handshake_that_never_comes_times_out() -> None:
    handled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()
        await writer.wait_closed()
        handled.set()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(POP3TimeoutError) as caught:
            await POP3Client.connect(
                "127.0.0.1",
                port,
                tls=TLSMode.IMPLICIT,
                timeouts=Timeouts(connect=0.5, tls=0.5, command=1, idle=1),
            )
        assert caught.value.phase == "tls"
        async with asyncio.timeout(5):
            await handled.wait()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_connection_refused() -> None:
    async with FakePOP3Server() as srv:
        port = srv.port
    with pytest.raises(POP3ConnectionError, match="cannot connect"):
        await POP3Client.connect("127.0.0.1", port, tls=TLSMode.PLAIN, timeouts=FAST)


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"\x16\x03\x01\x02\x00\r\n",
        b"+OKAY\r\n",
        b"+ dGVzdA==\r\n",
    ],
)
async def test_garbage_reply(server: FakePOP3Server, garbage: bytes) -> None:
    server.script("STAT", Reply(garbage))
    client = await session(server)
    with pytest.raises(POP3ProtocolError):
        await client.stat()
    assert client.state is State.CLOSED


async def test_half_line_then_close(server: FakePOP3Server) -> None:
    server.script("STAT", Reply(b"+OK 3 12", close=True))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="inside a reply line"):
        await client.stat()
    assert client.state is State.CLOSED


async def test_bad_numbers_in_replies(server: FakePOP3Server) -> None:
    server.script("STAT", Reply(b"+OK many bytes\r\n"))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="two numbers"):
        await client.stat()
    server.script("LIST", Reply(b"+OK\r\n1 big\r\n.\r\n"))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="not a number"):
        await client.list()
    server.script("UIDL", Reply(b"+OK\r\nuid-without-number\r\n.\r\n"))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="number value"):
        await client.uidl()


async def test_overlong_status_line(server: FakePOP3Server) -> None:
    server.script("STAT", Reply(b"+OK " + b"9" * 20_000 + b"\r\n"))
    client = await session(server)
    with pytest.raises(POP3LineTooLongError):
        await client.stat()
    assert client.state is State.CLOSED


async def test_overlong_status_line_without_end(server: FakePOP3Server) -> None:
    server.script("NOOP", Reply(b"+OK " + b"z" * 20_000))
    client = await session(server)
    with pytest.raises(POP3LineTooLongError, match="without ending"):
        await client.noop()
    assert client.state is State.CLOSED


async def test_overlong_message_lines_stream_fine(mailbox: FakeMailbox) -> None:
    huge = b"Subject: huge\r\n\r\n" + b"y" * 3_000_000 + b"\r\n"
    mailbox.add("uid-huge", huge)
    async with FakePOP3Server(mailbox, users={"alice": "pw"}) as srv:
        client = await session(srv)
        assert await client.retr(4) == huge
        await client.quit()


# -- odd but legal servers ----------------------------------------------------------------
async def test_one_byte_chunks(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, chunk_size=1) as srv:
        client = await session(srv)
        assert await client.uidl() == {1: "uid-1", 2: "uid-2", 3: "uid-3"}
        assert await client.top_many([1, 2], 0) == [
            b"Subject: one\r\n\r\n",
            b"Subject: two\r\n\r\n",
        ]
        assert await client.retr(1) == MESSAGES[0][1]
        await client.quit()


async def test_bare_lf_server(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, bare_lf=True) as srv:
        client = await session(srv)
        assert (await client.stat())[0] == 3
        assert await client.uidl() == {1: "uid-1", 2: "uid-2", 3: "uid-3"}
        assert await client.retr(1) == MESSAGES[0][1].replace(b"\r\n", b"\n")
        await client.dele(2)
        assert (await client.quit()).updated
    assert mailbox.uids() == ["uid-1", "uid-3"]


async def test_list_sizes_that_differ_from_retr(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, list_size_delta=-7) as srv:
        client = await session(srv)
        sizes = await client.list()
        body = await client.retr(2)
        assert body == MESSAGES[1][1]
        assert sizes[2] == len(body) - 7
        await client.quit()


async def test_courier_loses_what_is_pipelined_after_pass(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(
        mailbox, users={"alice": "pw"}, drop_pipelined_after_pass=True
    ) as srv:
        client = await session(srv)  # login is step by step: nothing is lost
        assert (await client.stat())[0] == 3
        assert len(await client.top_many([1, 2, 3], 0)) == 3
        await client.quit()


async def test_server_that_lies_about_pipelining(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, pipelining_lies=True) as srv:
        client = await session(srv)
        with pytest.raises(POP3TimeoutError):
            await client.top_many([1, 2, 3], 0)
        assert client.state is State.CLOSED
        # The per-upstream switch: lockstep works.
        client = await session(srv, pipelining=False)
        got = await client.top_many([1, 2, 3], 0)
        assert [isinstance(h, bytes) for h in got] == [True, True, True]
        await client.quit()
    assert_intact(mailbox)


async def test_server_without_uidl(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, uidl=False) as srv:
        client = await session(srv)
        caps = await client.capa()
        assert "UIDL" not in caps
        with pytest.raises(POP3ResponseError):
            await client.uidl()
        assert client.state is State.TRANSACTION
        await client.quit()


async def test_server_without_capa(mailbox: FakeMailbox) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}) as srv:
        srv.script("CAPA", Err(None, "unknown command"), times=None)
        client = await session(srv)
        caps = await client.capa()
        assert not caps.supported
        assert not caps.pipelining
        # Without CAPA there is no PIPELINING: batches go in lockstep and still work.
        assert len(await client.top_many([1, 2], 0)) == 2
        assert not client.pipelining_active
        await client.quit()


async def test_duplicate_uids_are_reported_as_they_are() -> None:
    box = FakeMailbox([("same", b"A: 1\r\n\r\n"), ("same", b"A: 1\r\n\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        client = await session(srv)
        assert await client.uidl() == {1: "same", 2: "same"}
        await client.quit()


async def test_capabilities_parsing() -> None:
    async with FakePOP3Server(
        users={"alice": "pw"},
        capa_before=["USER", "SASL plain xoauth2", "EXPIRENEVER", "LOGIN-DELAY 300", ""],
        login_delay=900,
        expire="NEVER",
    ) as srv:
        client = await connect(srv)
        caps = await client.capa()
        assert caps.sasl == ("PLAIN", "XOAUTH2")
        assert caps.login_delay == 300
        assert "EXPIRENEVER" in caps
        assert "expirenever" in caps
        assert 42 not in caps
        assert caps.implementation is None
        await client.login("alice", "pw")
        after = await client.capa()
        assert after.login_delay == 900
        assert after.items["EXPIRE"] == ("NEVER",)
        assert after.implementation == "fakepop3"
        await client.quit()


# -- response codes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("IN-USE", POP3InUseError),
        ("LOGIN-DELAY", POP3LoginDelayError),
        ("SYS/TEMP", POP3SysTempError),
        ("SYS/PERM", POP3SysPermError),
        ("AUTH", POP3AuthError),
        ("UTF8", POP3UTF8Error),
        (None, POP3AuthError),
    ],
)
async def test_login_refusals(
    server: FakePOP3Server, code: str | None, error: type[POP3ResponseError]
) -> None:
    server.script("PASS", Err(code, "go away"))
    client = await connect(server)
    with pytest.raises(error) as caught:
        await client.login("alice", "pw")
    assert caught.value.code == code
    assert caught.value.server_text == "go away"
    assert caught.value.command == "PASS"
    assert client.state is State.AUTHORIZATION
    await client.login("alice", "pw")  # the session is still usable
    await client.quit()


async def test_unknown_and_hierarchical_codes_are_kept(server: FakePOP3Server) -> None:
    server.script("RETR", Err("X-VENDOR/QUOTA", "over quota"))
    server.script("TOP", Err("SYS/TEMP/DISK", "disk"))
    client = await session(server)
    with pytest.raises(POP3ResponseError) as caught:
        await client.retr(1)
    assert type(caught.value) is POP3ResponseError
    assert caught.value.code == "X-VENDOR/QUOTA"
    assert caught.value.code_parts == ("X-VENDOR", "QUOTA")
    with pytest.raises(POP3SysTempError):
        await client.top(1, 0)
    assert client.state is State.TRANSACTION
    await client.quit()


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"-ERR [IN-USE] too many connections", POP3InUseError),
        (b"-ERR [SYS/TEMP] maintenance", POP3SysTempError),
        (b"* OK IMAP4rev1 ready", POP3ProtocolError),
        (b"+ continue", POP3ProtocolError),
    ],
)
async def test_bad_greetings(greeting: bytes, error: type[Exception]) -> None:
    async with FakePOP3Server(greeting=greeting) as srv:
        with pytest.raises(error):
            await connect(srv)


async def test_no_greeting() -> None:
    async with FakePOP3Server(greeting=None) as srv:
        with pytest.raises(POP3ConnectionError):
            await connect(srv)


# -- deletes and QUIT ----------------------------------------------------------------------
async def test_dele_then_drop_keeps_everything(
    server: FakePOP3Server, mailbox: FakeMailbox
) -> None:
    client = await session(server)
    assert await client.dele_many([1, 2, 3]) == [None, None, None]
    client.abort()
    await server.wait_idle()
    assert_intact(mailbox)


async def test_dele_then_quit(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    client = await session(server)
    await client.dele(2)
    result = await client.quit()
    assert result.updated
    assert result.deleted_marks == 1
    assert mailbox.uids() == ["uid-1", "uid-3"]


async def test_quit_reply_lost_after_update(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("QUIT", DropAfter(0))  # the server deleted, then the reply was lost
    client = await session(server)
    await client.dele(1)
    with pytest.raises(POP3OutcomeUnknownError, match="may or may not"):
        await client.quit()
    assert client.state is State.CLOSED
    assert mailbox.uids() == ["uid-2", "uid-3"]


async def test_quit_reply_lost_before_update(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("QUIT", Drop())  # the server never got to UPDATE
    client = await session(server)
    await client.dele(1)
    with pytest.raises(POP3OutcomeUnknownError):
        await client.quit()
    await server.wait_idle()
    assert_intact(mailbox)


async def test_quit_stalls_with_marks(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("QUIT", Stall())
    client = await session(server)
    await client.dele(3)
    with pytest.raises(POP3OutcomeUnknownError, match="timed out"):
        await client.quit()
    assert client.state is State.CLOSED


async def test_quit_lost_without_marks_is_a_plain_error(server: FakePOP3Server) -> None:
    server.script("QUIT", Drop())
    client = await session(server)
    with pytest.raises(POP3ConnectionError) as caught:
        await client.quit()
    assert not isinstance(caught.value, POP3OutcomeUnknownError)


async def test_quit_refused_in_update(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("QUIT", Err(None, "some deleted messages not removed"))
    client = await session(server)
    await client.dele(1)
    with pytest.raises(POP3UpdateError):
        await client.quit()
    assert client.state is State.CLOSED


async def test_quit_in_authorization_changes_nothing(server: FakePOP3Server) -> None:
    client = await connect(server)
    result = await client.quit()
    assert not result.updated


async def test_sys_temp_on_dele_in_a_batch(server: FakePOP3Server, mailbox: FakeMailbox) -> None:
    server.script("DELE", Err("SYS/TEMP", "try later"), skip=1)
    client = await session(server)
    errors = await client.dele_many([1, 2, 3])
    assert errors[0] is None
    assert isinstance(errors[1], POP3SysTempError)
    assert errors[2] is None
    assert client.deleted_marks == 2
    await client.quit()
    assert mailbox.uids() == ["uid-2"]


# -- cancellation --------------------------------------------------------------------------
async def test_cancel_mid_pipeline_closes_the_session(
    server: FakePOP3Server, mailbox: FakeMailbox
) -> None:
    server.script("TOP", Delay(5), skip=1)
    client = await session(server, timeouts=Timeouts(command=10, idle=10))
    task = asyncio.create_task(client.top_many([1, 2, 3], 0))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.state is State.CLOSED
    with pytest.raises(Exception, match="closed"):
        await client.stat()
    assert_intact(mailbox)


async def test_busy_session_refuses_a_second_command(server: FakePOP3Server) -> None:
    server.script("STAT", Delay(0.3))
    client = await session(server)
    first = asyncio.create_task(client.stat())
    await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="in progress"):
        await client.noop()
    assert (await first)[0] == 3
    await client.quit()


# -- TLS -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


def client_tls(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TLSConfig:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return TLSConfig(cafile=str(path), server_hostname="localhost")


async def test_stls_injection_aborts(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory, mailbox: FakeMailbox
) -> None:
    async with FakePOP3Server(
        mailbox,
        users={"alice": "pw"},
        tls_context=server_tls(ca),
        inject_after_stls=b"+OK injected\r\n",
    ) as srv:
        with pytest.raises(POP3InjectionError, match="plaintext"):
            await POP3Client.connect(
                srv.host,
                srv.port,
                tls=TLSMode.STARTTLS,
                tls_config=client_tls(ca, tmp_path_factory),
                timeouts=FAST,
            )
        await srv.wait_idle()
        sent = [line for conn in srv.received for line in conn]
        assert not any(line.upper().startswith((b"USER", b"PASS", b"AUTH")) for line in sent)


async def test_stls_refused_never_falls_back(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with FakePOP3Server(users={"alice": "pw"}) as srv:  # no TLS: STLS is refused
        with pytest.raises(POP3TLSError, match="refused STLS"):
            await POP3Client.connect(
                srv.host,
                srv.port,
                tls=TLSMode.STARTTLS,
                tls_config=client_tls(ca, tmp_path_factory),
                timeouts=FAST,
            )
        await srv.wait_idle()
        sent = [line.upper() for conn in srv.received for line in conn]
        assert sent == [b"STLS\r\n"]


async def test_stls_then_login(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory, mailbox: FakeMailbox
) -> None:
    async with FakePOP3Server(mailbox, users={"alice": "pw"}, tls_context=server_tls(ca)) as srv:
        client = await POP3Client.connect(
            srv.host,
            srv.port,
            tls=TLSMode.STARTTLS,
            tls_config=client_tls(ca, tmp_path_factory),
            timeouts=FAST,
        )
        assert client.is_tls
        assert "STLS" not in await client.capa()
        await client.login("alice", "pw")
        assert (await client.stat())[0] == 3
        await client.quit()


async def test_implicit_tls_with_wrong_ca(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = trustme.CA()
    async with FakePOP3Server(tls_context=server_tls(other), implicit_tls=True) as srv:
        with pytest.raises(POP3TLSError, match="certificate verification failed"):
            await POP3Client.connect(
                srv.host,
                srv.port,
                tls=TLSMode.IMPLICIT,
                tls_config=client_tls(ca, tmp_path_factory),
                timeouts=FAST,
            )


# -- SASL ----------------------------------------------------------------------------------
async def test_xoauth2_with_a_long_token_uses_the_continuation() -> None:
    token = "ya29." + "t" * 3000
    async with FakePOP3Server(users={}, tokens={"alice@example.com": token}) as srv:
        client = await connect(srv)
        await client.auth_xoauth2("alice@example.com", token)
        assert client.state is State.TRANSACTION
        await client.quit()
        await srv.wait_idle()
        lines = srv.received[0]
        assert lines[0] == b"AUTH XOAUTH2\r\n"
        assert max(len(line) for line in lines if line.startswith(b"AUTH")) <= 255
        assert any(len(line) > 4000 for line in lines)


async def test_xoauth2_short_token_uses_the_initial_response() -> None:
    async with FakePOP3Server(users={}, tokens={"bob": "short"}) as srv:
        client = await connect(srv)
        await client.auth_xoauth2("bob", "short")
        await client.quit()
        await srv.wait_idle()
        first = srv.received[0][0]
        assert first.startswith(b"AUTH XOAUTH2 ")
        assert base64.b64decode(first.split()[2]) == b"user=bob\x01auth=Bearer short\x01\x01"


@pytest.mark.parametrize("method", ["auth_xoauth2", "auth_oauthbearer"])
async def test_oauth_failure_is_an_auth_error(method: str) -> None:
    async with FakePOP3Server(users={}, tokens={"carol": "right"}) as srv:
        client = await connect(srv)
        with pytest.raises(POP3AuthError):
            await getattr(client, method)("carol", "wrong")
        assert client.state is State.AUTHORIZATION
        await getattr(client, method)("carol", "right")
        assert client.state is State.TRANSACTION
        await client.quit()


async def test_oauthbearer_long_token() -> None:
    token = "eyJ" + "a" * 2500
    async with FakePOP3Server(users={}, tokens={"dave": token}) as srv:
        client = await connect(srv)
        await client.auth_oauthbearer("dave", token)
        await client.quit()


async def test_auth_plain_long_password_uses_the_continuation() -> None:
    password = "p" * 240
    async with FakePOP3Server(users={"erin": password}) as srv:
        client = await connect(srv)
        await client.auth_plain("erin", password)
        await client.quit()
        await srv.wait_idle()
        assert srv.received[0][0] == b"AUTH PLAIN\r\n"


async def test_unknown_sasl_mechanism(server: FakePOP3Server) -> None:
    client = await connect(server)
    with pytest.raises(POP3AuthError):
        await client.auth("NOT-A-MECH", b"")
    assert client.state is State.AUTHORIZATION
    await client.quit()


async def test_unanswered_challenge_is_cancelled(server: FakePOP3Server) -> None:
    client = await connect(server)
    with pytest.raises(POP3AuthError):
        await client.auth("LOGIN", None)  # no responder: the exchange is cancelled with "*"
    await client.quit()
    await server.wait_idle()
    assert b"*\r\n" in server.received[0]


async def test_apop_when_allowed(server: FakePOP3Server) -> None:
    client = await connect(server, allow_apop=True)
    assert client.apop_timestamp is not None
    await client.apop("alice", "pw")
    assert client.state is State.TRANSACTION
    await client.quit()
    client = await connect(server, allow_apop=True)
    with pytest.raises(POP3AuthError):
        await client.apop("alice", "wrong")
    await client.quit()


async def test_apop_without_timestamp() -> None:
    async with FakePOP3Server(apop=False) as srv:
        client = await connect(srv, allow_apop=True)
        with pytest.raises(POP3CapabilityError, match="timestamp"):
            await client.apop("user", "password")
        await client.quit()


async def test_utf8(server: FakePOP3Server) -> None:
    client = await connect(server)
    await client.utf8()
    assert client.utf8_enabled
    await client.login("alice", "pw")
    await client.quit()


# -- nothing smuggled, nothing leaked ------------------------------------------------------
@pytest.mark.parametrize("bad", ["x\r\nDELE 1", "x\nQUIT", "x\rRSET", "x\x00y"])
async def test_no_line_break_or_nul_reaches_the_server(server: FakePOP3Server, bad: str) -> None:
    client = await connect(server)
    for call in (
        client.login(bad, "pw"),
        client.login("alice", bad),
        client.auth_plain("alice", bad),
        client.auth_login(bad, "pw"),
        client.auth_xoauth2("alice", bad),
        client.auth_oauthbearer(bad, "tok"),
        client.apop(bad, "pw"),
        client.auth(bad, None),
    ):
        with pytest.raises(Exception, match=r"CR, LF or NUL|APOP"):
            await call
    await client.quit()
    await server.wait_idle()
    assert server.received[0] == [b"QUIT\r\n"]


@pytest.mark.parametrize("number", [0, -1, 2**31, True, "1"])
async def test_bad_message_numbers(server: FakePOP3Server, number: object) -> None:
    client = await session(server)
    with pytest.raises(ValueError, match="message number"):
        await client.retr(number)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lines"):
        await client.top(1, -1)
    await client.quit()


async def test_wire_log_redacts_secrets(
    server: FakePOP3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.pop3.wire")
    client = await connect(server)
    await client.auth_login("alice", "pw")
    await client.quit()
    client = await connect(server)
    await client.login("alice", "pw")
    await client.top_many([1, 2], 0)
    await client.quit()
    text = caplog.text
    assert "C: USER alice" in text
    assert "C: PASS <redacted>" in text
    assert "C: TOP 1 0" in text
    assert "pw" not in text.replace("pwd", "")
    assert base64.b64encode(b"pw").decode() not in text


async def test_observer_sees_every_command(server: FakePOP3Server) -> None:
    seen: list[tuple[str, str]] = []
    server.script("RETR", Err("SYS/TEMP", "later"))
    client = await session(server, on_command=lambda verb, outcome, s: seen.append((verb, outcome)))
    await client.stat()
    with pytest.raises(POP3SysTempError):
        await client.retr(1)
    await client.top_many([1, 2], 0)
    await client.quit()
    assert ("USER", "ok") in seen
    assert ("PASS", "ok") in seen
    assert ("STAT", "ok") in seen
    assert ("RETR", "err") in seen
    assert seen.count(("TOP", "ok")) == 2
    assert seen[-1] == ("QUIT", "ok")
    server.script("NOOP", Drop())
    client = await session(server, on_command=lambda verb, outcome, s: seen.append((verb, outcome)))
    with pytest.raises(POP3ConnectionError):
        await client.noop()
    assert seen[-1] == ("NOOP", "failed")


def test_repr_shows_no_secret() -> None:
    assert "pw" not in repr(TLSConfig())


async def test_uidl_and_list_in_one_round(server: FakePOP3Server) -> None:
    client = await session(server)
    uids, sizes = await client.uidl_and_list()
    assert uids == {1: "uid-1", 2: "uid-2", 3: "uid-3"}
    assert sizes == {n: len(raw) for n, (_uid, raw) in enumerate(MESSAGES, 1)}
    await client.quit()
    await server.wait_idle()
    lines = server.received[0]
    assert b"UIDL\r\n" in lines
    assert b"LIST\r\n" in lines


async def test_uidl_and_list_refused(server: FakePOP3Server) -> None:
    server.script("LIST", Err("SYS/TEMP", "later"))
    client = await session(server)
    with pytest.raises(POP3SysTempError):
        await client.uidl_and_list()
    assert client.state is State.TRANSACTION
    await client.quit()
