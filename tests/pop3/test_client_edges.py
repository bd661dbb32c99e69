"""Corners of the client and the framing layer: validation, flow control, odd replies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.pop3 import (
    POP3ArgumentError,
    POP3Client,
    POP3ConnectionError,
    POP3ProtocolError,
    POP3StateError,
    POP3TimeoutError,
    POP3TLSError,
    State,
    Timeouts,
    TLSMode,
)
from gateway.pop3.protocol import CHUNK_SIZE, READ_HIGH_WATER, _ReaderProtocol
from tests.support.fakepop3 import Drop, FakeMailbox, FakePOP3Server, Reply

FAST = Timeouts(connect=2, tls=2, command=0.5, idle=0.5)
BIG = b"Subject: big\r\n\r\n" + b"z" * 3_000_000 + b"\r\n"


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("a", b"Subject: a\r\n\r\nA\r\n"), ("big", BIG)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        yield srv


async def session(srv: FakePOP3Server, **kwargs: object) -> POP3Client:
    kwargs.setdefault("timeouts", FAST)
    client = await POP3Client.connect(srv.host, srv.port, tls=TLSMode.PLAIN, **kwargs)  # type: ignore[arg-type]
    await client.login("alice", "pw")
    return client


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle"):
        Timeouts(idle=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"pipeline_window": 0}, "pipeline_window"), ({"max_line": 100}, "max_line")],
)
async def test_connect_validates_its_options(
    server: FakePOP3Server, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN, **kwargs)  # type: ignore[arg-type]


async def test_context_manager_quits(server: FakePOP3Server) -> None:
    async with await session(server) as client:
        await client.dele(1)
        assert "marked=1" in repr(client)
        assert "pw" not in repr(client)
    assert client.state is State.CLOSED
    assert server.mailbox.uids() == ["big"]


async def test_authorization_corner_cases(server: FakePOP3Server) -> None:
    client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN, timeouts=FAST)
    with pytest.raises(POP3ArgumentError, match="empty"):
        await client.user("")
    await client.user("alice")
    with pytest.raises(POP3StateError, match="after USER"):
        await client.stls()
    for bad in ("", "TWO WORDS", "ÜML"):
        with pytest.raises(POP3ArgumentError, match="mechanism"):
            await client.auth(bad, None)
    await client.quit()
    with pytest.raises(POP3StateError, match="closed"):
        await client.quit()


async def test_sasl_exchange_that_never_ends(server: FakePOP3Server) -> None:
    server.script("AUTH", Reply(b"+ \r\n" * 20))
    client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN, timeouts=FAST)
    with pytest.raises(POP3ProtocolError, match="16 rounds"):
        await client.auth("X-LOOP", None, lambda _c: b"again")
    assert client.state is State.CLOSED


async def test_sasl_challenge_that_is_not_base64(server: FakePOP3Server) -> None:
    server.script("AUTH", Reply(b"+ not*base64!\r\n"))
    client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN, timeouts=FAST)
    with pytest.raises(POP3ProtocolError, match="not base64"):
        await client.auth("X-ODD", None, lambda _c: b"")
    assert client.state is State.CLOSED


async def test_sasl_response_too_long(server: FakePOP3Server) -> None:
    client = await POP3Client.connect(server.host, server.port, tls=TLSMode.PLAIN, timeouts=FAST)
    with pytest.raises(POP3ArgumentError, match="too long"):
        await client.auth("LOGIN", None, lambda _c: b"u" * 60_000)
    assert client.state is State.CLOSED


async def test_odd_listing_replies(server: FakePOP3Server) -> None:
    server.script("UIDL", Reply(b"+OK not-a-pair\r\n"), arg="1")
    server.script("UIDL", Reply(b"+OK\r\n\r\n1 a\r\n\r\n.\r\n"))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="number unique-id"):
        await client.uidl_one(1)
    client = await session(server)
    assert await client.uidl() == {1: "a"}  # blank lines are skipped
    assert await client.top_many([]) == []
    assert (await client.ensure_transaction_capabilities()).pipelining
    assert client.capabilities is await client.ensure_transaction_capabilities()
    await client.quit()


async def test_quit_that_gets_garbage(server: FakePOP3Server) -> None:
    server.script("QUIT", Reply(b"what?\r\n"))
    client = await session(server)
    await client.dele(1)
    with pytest.raises(POP3ProtocolError):
        await client.quit()
    assert client.state is State.CLOSED


async def test_retr_stream_of_a_small_message(server: FakePOP3Server) -> None:
    client = await session(server)
    async with client.retr_stream(1) as chunks:
        assert [c async for c in chunks] == [b"Subject: a\r\n\r\nA\r\n"]
    assert client.state is State.TRANSACTION
    await client.quit()


async def test_retr_stream_dropped_before_the_status(server: FakePOP3Server) -> None:
    server.script("RETR", Drop())
    seen: list[tuple[str, str]] = []
    client = await session(server, on_command=lambda v, o, _s: seen.append((v, o)))
    with pytest.raises(POP3ConnectionError):
        async with client.retr_stream(1):
            pytest.fail("no stream without a status")
    assert seen[-1] == ("RETR", "failed")
    assert client.state is State.CLOSED


async def test_reset_by_peer(server: FakePOP3Server) -> None:
    server.script("STAT", Drop(abort=True))
    client = await session(server)
    with pytest.raises(POP3ConnectionError):
        await client.stat()
    assert client.state is State.CLOSED


async def test_lone_dot_then_close(server: FakePOP3Server) -> None:
    server.script("RETR", Reply(b"+OK\r\nabc\r\n.", close=True))
    client = await session(server)
    with pytest.raises(POP3ProtocolError, match="inside a multi-line reply"):
        await client.retr(1)


async def test_failure_mid_pipeline_is_observed(server: FakePOP3Server) -> None:
    server.script("TOP", Drop(), skip=1)
    seen: list[tuple[str, str]] = []
    client = await session(server, on_command=lambda v, o, _s: seen.append((v, o)))
    with pytest.raises(POP3ConnectionError):
        await client.top_many([1, 2], 0)
    assert seen[-2:] == [("TOP", "ok"), ("TOP", "failed")]


async def test_pipeline_bounded_in_bytes() -> None:
    box = FakeMailbox([(f"u{i}", b"S: %d\r\n\r\n" % i) for i in range(1000)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        client = await session(srv, pipeline_window=1024)
        got = await client.top_many(range(1, 1001), 0)
        assert got == [b"S: %d\r\n\r\n" % i for i in range(1000)]
        await client.quit()


async def test_reading_pauses_when_the_consumer_is_slow(server: FakePOP3Server) -> None:
    client = await session(server)
    async with client.retr_stream(2) as chunks:
        await asyncio.sleep(0.3)  # the server keeps sending; we do not read
        protocol = client._stream._protocol  # flow control is internal
        assert len(protocol.buffer) <= READ_HIGH_WATER + 512 * 1024
        got = [c async for c in chunks]
    assert b"".join(got) == BIG
    # a full read buffer is handed over in CHUNK_SIZE pieces, not as one large piece
    assert max(len(c) for c in got) <= CHUNK_SIZE
    await client.quit()


async def test_implicit_tls_to_a_plaintext_server(server: FakePOP3Server) -> None:
    with pytest.raises(POP3TLSError, match="TLS handshake failed"):
        await POP3Client.connect(server.host, server.port, tls=TLSMode.IMPLICIT, timeouts=FAST)


async def test_connect_timeout() -> None:
    # A listener whose backlog is full and that never accepts: SYNs go unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        with pytest.raises((POP3TimeoutError, POP3ConnectionError)) as caught:
            await POP3Client.connect(
                "127.0.0.1", port, tls=TLSMode.PLAIN, timeouts=Timeouts(connect=0.3)
            )
        if isinstance(caught.value, POP3TimeoutError):
            assert caught.value.phase in ("connect", "greeting")
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_write_flow_control() -> None:
    protocol = _ReaderProtocol()
    await protocol.wait_writable()  # not paused: returns at once
    protocol.pause_writing()
    waiter = asyncio.create_task(protocol.wait_writable())
    await asyncio.sleep(0)
    assert not waiter.done()
    protocol.resume_writing()
    await asyncio.wait_for(waiter, 1)
    protocol.pause_writing()
    waiter = asyncio.create_task(protocol.wait_writable())
    await asyncio.sleep(0)
    protocol.connection_lost(None)  # a lost connection wakes the writer too
    await asyncio.wait_for(waiter, 1)


async def test_drain_times_out_when_the_server_reads_nothing(server: FakePOP3Server) -> None:
    client = await session(server)
    stream = client._stream  # the framing layer under test
    stream._protocol.pause_writing()
    with pytest.raises(POP3TimeoutError, match="did not read"):
        await stream.drain(0.1)
    stream._protocol.resume_writing()
    client.abort()
    with pytest.raises(POP3ConnectionError):
        stream.write(b"NOOP\r\n")


async def test_a_slow_consumer_does_not_stall_the_stream() -> None:
    # The server sends the end of the reply while the consumer holds the first chunk: the
    # rest is then already buffered, and no more bytes will ever come. The stream must parse
    # what it has instead of waiting for more (it used to wait until the idle timeout).
    first, rest = b"a" * 98 + b"\r\n", b"b" * 98 + b"\r\n"
    body = first * 700 + rest * 1000  # 70 KB, then 100 KB

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        while line := await reader.readline():
            if line.startswith(b"RETR"):
                writer.write(b"+OK\r\n" + first * 700)
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.write(rest * 1000 + b".\r\n")
            elif line.startswith(b"QUIT"):
                writer.write(b"+OK\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"+OK\r\n")
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        client = await POP3Client.connect(
            "127.0.0.1", port, tls=TLSMode.PLAIN, timeouts=Timeouts(command=2, idle=0.5)
        )
        await client.login("u", "p")
        received = bytearray()
        async with client.retr_stream(1) as chunks:
            async for chunk in chunks:
                if not received:
                    await asyncio.sleep(1.0)
                received += chunk
        assert bytes(received) == body
        await client.quit()
    finally:
        srv.close()
        await srv.wait_closed()
