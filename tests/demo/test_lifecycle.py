"""The demo server's lifecycle and limits: deletions, restarts, long lines, idle sessions,
the connection cap, and stop() with clients connected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import poplib
import socket
import struct
import threading
import time

import pytest

from gateway.demo import DemoPOP3Server, demo_messages
from tests.support.wait import wait_until

from .helpers import TIMEOUT, poplib_login, raw, with_poplib

MESSAGES = demo_messages()
UIDS = [uid for uid, _ in MESSAGES]


async def uids_seen(server: DemoPOP3Server) -> list[str]:
    """The unique-ids a new session sees."""

    def session(pop: poplib.POP3) -> list[str]:
        poplib_login(pop)
        listing = pop.uidl()[1]
        pop.quit()
        return [line.split(b" ", 1)[1].decode() for line in listing]

    return await with_poplib(server, session)


# --------------------------------------------------------------------------- start / stop


async def test_start_returns_the_ephemeral_port_and_stop_is_idempotent() -> None:
    server = DemoPOP3Server()
    assert (server.running, server.port) == (False, 0)
    port = await server.start()
    try:
        assert port == server.port > 0
        assert (server.host, server.running) == ("127.0.0.1", True)
        with pytest.raises(RuntimeError, match="already running"):
            await server.start()
        async with raw(server) as c:
            await c.greeting()
    finally:
        await server.stop()
    assert (server.running, server.port) == (False, port)
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_given_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with DemoPOP3Server(port=port) as server:
        assert server.port == port
        assert await uids_seen(server) == UIDS


async def test_repr_shows_no_password() -> None:
    async with DemoPOP3Server(password="s3cret-pw") as server:
        text = repr(server)
    assert "s3cret-pw" not in text
    assert "demo" in text
    assert str(server.port) in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"messages": [("has space", b"x\r\n")]}, "unique-id"),
        ({"messages": [("", b"x\r\n")]}, "unique-id"),
        ({"messages": [("x" * 71, b"x\r\n")]}, "unique-id"),
        ({"messages": [("é", b"x\r\n")]}, "unique-id"),
        ({"messages": [("a", b"x\r\n"), ("a", b"y\r\n")]}, "distinct"),
        ({"user": ""}, "user"),
        ({"password": "a\r\nb"}, "password"),
        ({"password": "a\0b"}, "password"),
        ({"port": 70000}, "port"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_line_length": 254}, "max_line_length"),
    ],
)
def test_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoPOP3Server(**options)  # type: ignore[arg-type]


async def test_empty_maildrop() -> None:
    async with DemoPOP3Server(messages=[]) as server, raw(server) as c:
        await c.login()
        assert await c.command(b"STAT") == b"+OK 0 0\r\n"
        assert await c.command(b"LIST") == b"+OK 0 messages (0 octets)\r\n"
        assert await c.line() == b".\r\n"
        assert await c.command(b"RETR 1") == b"-ERR no such message, only 0 in maildrop\r\n"


# --------------------------------------------------------------------------- deletions


async def test_dropped_connection_deletes_nothing(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        for n in range(1, len(MESSAGES) + 1):
            assert (await c.command(b"DELE %d" % n)).startswith(b"+OK")
    await wait_until(lambda: server.connections == 0)
    assert server.messages() == MESSAGES

    def no_quit(pop: poplib.POP3) -> None:
        poplib_login(pop)
        pop.dele(1)

    await with_poplib(server, no_quit)
    await wait_until(lambda: server.connections == 0)
    assert await uids_seen(server) == UIDS


async def test_reset_connection_deletes_nothing(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        assert (await c.command(b"DELE 1")).startswith(b"+OK")
        sock = c.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    await wait_until(lambda: server.connections == 0)
    assert server.messages() == MESSAGES


async def test_quit_removes_only_what_was_deleted(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        await c.command(b"DELE 1")
        await c.command(b"DELE 4")
        assert await c.command(b"QUIT") == b"+OK pop3gw-demo signing off (5 messages left)\r\n"
        assert await c.rest() == b""
    assert await uids_seen(server) == [UIDS[1], UIDS[2], *UIDS[4:]]


async def test_each_session_works_on_its_login_snapshot(server: DemoPOP3Server) -> None:
    async with raw(server) as first, raw(server) as second:
        await first.login()
        await second.login()
        assert await second.command(b"DELE 5") == b"+OK message 5 deleted\r\n"
        assert (await second.command(b"QUIT")).startswith(b"+OK")
        # the first session still sees message 5 under its number, and may delete it too
        assert await first.command(b"UIDL 5") == b"+OK 5 demo/2024+05?x\r\n"
        assert (await first.command(b"RETR 5")).startswith(b"+OK")
        await first.multi()
        assert await first.command(b"DELE 5") == b"+OK message 5 deleted\r\n"
        assert await first.command(b"DELE 6") == b"+OK message 6 deleted\r\n"
        assert await first.command(b"QUIT") == b"+OK pop3gw-demo signing off (5 messages left)\r\n"
    assert await uids_seen(server) == [*UIDS[:4], UIDS[6]]


async def test_restart_brings_deleted_messages_back() -> None:
    server = DemoPOP3Server()
    await server.start()
    try:

        def delete_all(pop: poplib.POP3) -> None:
            poplib_login(pop)
            for n in range(1, len(MESSAGES) + 1):
                pop.dele(n)
            pop.quit()

        await with_poplib(server, delete_all)
        assert await uids_seen(server) == []
        await server.stop()
        await server.start()
        assert await uids_seen(server) == UIDS
    finally:
        await server.stop()


async def test_reset_after_quit() -> None:
    async with DemoPOP3Server(reset_after_quit=True) as server:

        def delete_two(pop: poplib.POP3) -> bytes:
            poplib_login(pop)
            pop.dele(1)
            pop.dele(2)
            return pop.quit()

        left = len(MESSAGES) - 2
        assert await with_poplib(server, delete_two) == (
            b"+OK pop3gw-demo signing off (%d messages left)" % left
        )
        assert server.messages() == MESSAGES
        assert await uids_seen(server) == UIDS


async def test_reset_restores_the_maildrop(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        await c.command(b"DELE 2")
        await c.command(b"QUIT")
    assert len(server.messages()) == len(MESSAGES) - 1
    server.reset()
    assert server.messages() == MESSAGES


# --------------------------------------------------------------------------- long lines


async def test_lines_up_to_the_limit_are_accepted(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        long_user = b"u" * 300  # beyond RFC 2449's 255 octets, within the 1024 allowed
        assert await c.command(b"USER " + long_user) == b"+OK send PASS\r\n"
        at_limit = b"USER " + b"u" * (1024 - 7)  # 1024 octets with CRLF
        assert await c.command(at_limit) == b"+OK send PASS\r\n"
        assert await c.command(b"USER demo") == b"+OK send PASS\r\n"
        assert (await c.command(b"PASS demo")).startswith(b"+OK")


@pytest.mark.parametrize(
    "data",
    [
        b"USER " + b"u" * (1024 - 6) + b"\r\n",  # 1025 octets
        b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n",
        b"x" * 5000,  # no line ending at all
        b"x" * 1024,
    ],
    ids=["limit+1", "5000", "no-eol", "1024-no-eol"],
)
async def test_a_longer_line_gets_an_error_and_a_close(server: DemoPOP3Server, data: bytes) -> None:
    async with raw(server) as c:
        await c.greeting()
        await c.send(data)
        assert await c.rest() == b"-ERR line too long\r\n"
    await wait_until(lambda: server.connections == 0)


async def test_line_too_long_in_transaction_deletes_nothing(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.login()
        await c.send(b"DELE 1\r\n" + b"RETR " + b"1" * 2000 + b"\r\n")
        assert await c.rest() == b"+OK message 1 deleted\r\n-ERR line too long\r\n"
    assert server.messages() == MESSAGES


async def test_line_too_long_in_a_sasl_continuation(server: DemoPOP3Server) -> None:
    async with raw(server) as c:
        await c.greeting()
        assert await c.command(b"AUTH PLAIN") == b"+ \r\n"
        await c.send(base64.b64encode(b"x" * 3000) + b"\r\n")
        assert await c.rest() == b"-ERR line too long\r\n"


async def test_poplib_sees_line_too_long(server: DemoPOP3Server) -> None:
    def session(pop: poplib.POP3) -> None:
        with pytest.raises(poplib.error_proto, match="line too long"):
            pop.user("u" * 2000)

    await with_poplib(server, session)


async def test_configurable_line_limit() -> None:
    async with DemoPOP3Server(max_line_length=255) as server, raw(server) as c:
        await c.greeting()
        assert await c.command(b"USER " + b"u" * 248) == b"+OK send PASS\r\n"  # 255 octets
        await c.send(b"USER " + b"u" * 249 + b"\r\n")
        assert await c.rest() == b"-ERR line too long\r\n"


# --------------------------------------------------------------------------- idle sessions


async def test_idle_session_is_closed_without_a_reply_or_deletions() -> None:
    async with DemoPOP3Server(idle_timeout=0.3) as server, raw(server) as c:
        await c.login()
        assert (await c.command(b"DELE 1")).startswith(b"+OK")
        started = time.monotonic()
        assert await c.rest() == b""
        assert 0.2 < time.monotonic() - started < 3
        await wait_until(lambda: server.connections == 0)
        assert server.messages() == MESSAGES


async def test_activity_keeps_a_session_open() -> None:
    async with DemoPOP3Server(idle_timeout=0.5) as server, raw(server) as c:
        await c.login()
        for _ in range(8):  # 0.8 s in all, never 0.5 s of silence
            await asyncio.sleep(0.1)
            assert await c.command(b"NOOP") == b"+OK\r\n"


async def test_idle_timeout_while_the_client_does_not_read() -> None:
    """A client that stops reading its replies cannot hold the session forever."""
    async with DemoPOP3Server(idle_timeout=0.5) as server, raw(server) as c:
        await c.login()
        c.writer.transport.set_write_buffer_limits(high=1 << 24)
        await c.send(b"RETR 4\r\n" * 5000)  # about 12 MB of replies, never read
        await wait_until(lambda: server.connections == 0)


# --------------------------------------------------------------------------- connection cap


async def test_connections_beyond_the_cap_are_refused() -> None:
    async with DemoPOP3Server(max_connections=2) as server:
        async with raw(server) as one, raw(server) as two:
            await one.greeting()
            await two.greeting()
            assert server.connections == 2
            async with raw(server) as three:
                await three.send(b"USER demo\r\n")
                assert await three.rest() == (
                    b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
                )
            assert await one.command(b"USER demo") == b"+OK send PASS\r\n"
        await wait_until(lambda: server.connections == 0)
        async with raw(server) as again:
            await again.login()


async def test_poplib_over_the_cap() -> None:
    async with DemoPOP3Server(max_connections=1) as server, raw(server) as first:
        await first.greeting()

        class ClosingPOP3(poplib.POP3):
            """poplib leaves its socket open when the greeting is an error."""

            def __init__(self, host: str, port: int, timeout: float) -> None:
                try:
                    super().__init__(host, port, timeout=timeout)
                except BaseException:
                    self.close()
                    raise

        def connect() -> None:
            with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
                ClosingPOP3(server.host, server.port, timeout=TIMEOUT)

        await asyncio.to_thread(connect)


# --------------------------------------------------------------------------- stop with clients


async def test_stop_closes_connected_clients_without_their_deletions() -> None:
    server = DemoPOP3Server()
    await server.start()
    logged_in = threading.Event()
    stopped = threading.Event()

    def poplib_client() -> type[BaseException] | None:
        pop = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
        try:
            poplib_login(pop)
            pop.dele(1)
            logged_in.set()
            assert stopped.wait(TIMEOUT)
            try:
                pop.stat()
            except (poplib.error_proto, OSError) as exc:
                return type(exc)
            return None
        finally:
            pop.close()

    try:
        worker = asyncio.ensure_future(asyncio.to_thread(poplib_client))
        async with raw(server) as idle, raw(server) as busy, raw(server) as stuck:
            await idle.greeting()
            await busy.login()
            assert (await busy.command(b"DELE 2")).startswith(b"+OK")
            await stuck.login()
            stuck.writer.transport.set_write_buffer_limits(high=1 << 24)
            await stuck.send(b"RETR 4\r\n" * 5000)  # replies pile up unread
            await asyncio.to_thread(logged_in.wait, TIMEOUT)
            await wait_until(lambda: server.connections == 4)

            started = time.monotonic()
            await server.stop()
            assert time.monotonic() - started < 3
            stopped.set()

            assert server.connections == 0
            assert await idle.rest() == b""
            assert await busy.rest() == b""
            # its queued replies were dropped: EOF or a reset long before the last one
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.wait_for(stuck.reader.read(1 << 20), TIMEOUT):
                    received += len(chunk)
            assert received < 4000 * len(MESSAGES[3][1])
        failure = await asyncio.wait_for(worker, TIMEOUT)
        assert failure is not None
        assert server.messages() == MESSAGES
    finally:
        stopped.set()
        await server.stop()


async def test_stop_is_bounded_by_its_timeout() -> None:
    server = DemoPOP3Server()
    await server.start()
    async with raw(server) as stuck:
        await stuck.login()
        stuck.writer.transport.set_write_buffer_limits(high=1 << 24)
        await stuck.send(b"RETR 4\r\n" * 5000)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.stop(timeout=0.2)
        assert time.monotonic() - started < 0.8
