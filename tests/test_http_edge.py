"""The HTTP edge (gateway/edge.py) on a real listening socket on 127.0.0.1: header, body and
keep-alive timeouts, the connection cap, paced accept errors, and 413 for large bodies.

Timeouts here are a fraction of a second so the suite stays fast; every wait is bounded
(``asyncio.wait_for``), and the bounds are loose (the machines are shared): what is checked
is that a connection is closed, not the exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import time

import pytest
from aiohttp import web

from gateway.app import create_app, http_limits
from gateway.config import ConfigError, load_settings
from gateway.edge import (
    ConnectionGate,
    EdgeLimits,
    EdgeSite,
    Listener,
    RateLimitedLog,
    connection_cap,
    fd_reserve,
    handler_kwargs,
)
from gateway.keys import METRICS
from gateway.logs import AccessLogger
from gateway.metrics import Metrics
from tests.support.api import ClientFactory, basic, checked, served, settings_for
from tests.support.dovecot import free_port

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: "


def edge(
    **limits: float,
) -> contextlib.AbstractAsyncContextManager[tuple[EdgeSite, web.Application]]:
    """The gateway's app behind an EdgeSite on a free port (no POP3 server: the tests use
    /healthz and requests refused before any POP3 work)."""
    return served(settings_for(free_port()), **limits)


async def connect(site: EdgeSite) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", site.port), 5)


async def close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """One response (status, body), read by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    body = (
        await asyncio.wait_for(reader.readexactly(int(match.group(1))), timeout) if match else b""
    )
    return status, body


async def closed_after(reader: asyncio.StreamReader, timeout: float = 5.0) -> float:
    """Seconds until the server closed the connection (anything it sent is skipped)."""
    started = time.monotonic()

    async def until_eof() -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass

    await asyncio.wait_for(until_eof(), timeout)
    return time.monotonic() - started


def metric(app: web.Application, name: str, **labels: str) -> float:
    text = app[METRICS].exposition()[0].decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_malformed_requests_are_counted_not_logged_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp logs each request its parser refuses as an error with a traceback: anyone
    could fill the logs. 40 of them give one line, no traceback, no request content."""
    secret = "c2VjcmV0OnBhc3N3b3Jk"
    bad = f"GET /healthz HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {secret}\x00\r\n\r\n"
    caplog.set_level(logging.DEBUG)
    async with edge() as (site, app):
        for _ in range(40):
            reader, writer = await connect(site)
            writer.write(bad.encode())
            status, _ = await response(reader)
            assert status == 400
            await close(writer)
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        await close(writer)
        text = app[METRICS].exposition()[0].decode()
    assert 'pop3gw_http_malformed_requests_total{kind="BadHttpMessage"} 40.0' in text
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) == 1, [r.getMessage() for r in noisy]
    assert noisy[0].exc_info is None
    assert "BadHttpMessage" in noisy[0].getMessage()
    assert secret not in caplog.text


async def test_half_sent_head_is_closed_while_others_are_answered() -> None:
    async with edge(header_timeout=0.5, keepalive_timeout=30) as (site, app):
        slow_reader, slow = await connect(site)
        slow.write(PARTIAL)
        await slow.drain()
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        waited = await closed_after(slow_reader)
        assert waited < 3
        assert metric(app, "pop3gw_http_timeouts_total", phase="header") == 1
        writer.write(HEALTHZ)  # the other connection is still good
        assert (await response(reader))[0] == 200
        await close(writer, slow)


async def test_a_trickling_client_is_closed() -> None:
    """One byte every 0.1 s: each byte is 'progress', and still the head must be complete
    within header_timeout of its first byte."""
    async with edge(header_timeout=0.6, keepalive_timeout=30) as (site, app):
        reader, writer = await connect(site)
        eof = asyncio.ensure_future(closed_after(reader, timeout=10))
        started = time.monotonic()
        sent = 0
        for byte in (PARTIAL + b"x" * 100)[:60]:  # 6 s if never closed
            if eof.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(0.1)
        await asyncio.wait_for(eof, 5)
        assert time.monotonic() - started < 3
        assert sent < 40
        assert metric(app, "pop3gw_http_timeouts_total", phase="header") == 1
        await close(writer)


async def test_idle_keep_alive_and_silent_connections_are_closed() -> None:
    async with edge(keepalive_timeout=0.5, header_timeout=5) as (site, app):
        silent_reader, silent = await connect(site)
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        assert await closed_after(reader) < 3
        assert await closed_after(silent_reader) < 3
        assert metric(app, "pop3gw_http_timeouts_total", phase="keepalive") == 2
        await close(writer, silent)


async def test_keep_alive_connections_serve_several_requests() -> None:
    async with edge(keepalive_timeout=1, header_timeout=1) as (site, app):
        reader, writer = await connect(site)
        for _ in range(3):
            writer.write(HEALTHZ)
            assert (await response(reader))[0] == 200
            await asyncio.sleep(0.3)  # idle, under the keep-alive time
        writer.write(HEALTHZ + HEALTHZ)  # pipelined
        assert (await response(reader))[0] == 200
        assert (await response(reader))[0] == 200
        assert metric(app, "pop3gw_http_timeouts_total", phase="header") == 0
        await close(writer)


async def test_a_body_that_stops_coming_is_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    async with edge(body_timeout=0.5, header_timeout=5, keepalive_timeout=30) as (site, app):
        reader, writer = await connect(site)
        auth = basic("alice", "pw")["Authorization"].encode()
        writer.write(
            b"POST /v1/mailboxes/me/messages/delete HTTP/1.1\r\nHost: test\r\n"
            b"Authorization: " + auth + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"ids": ["'
        )
        await writer.drain()
        assert await closed_after(reader) < 3
        assert metric(app, "pop3gw_http_timeouts_total", phase="body") == 1
        await close(writer)
        # the client is gone: its handler's failure is not a server error with a traceback
        assert not [r for r in caplog.records if r.exc_info]


async def test_a_complete_body_is_not_timed_out() -> None:
    async with edge(body_timeout=0.3, header_timeout=5, keepalive_timeout=30) as (site, app):
        reader, writer = await connect(site)
        writer.write(
            b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nabcd" + HEALTHZ
        )
        assert (await response(reader))[0] == 405
        assert (await response(reader))[0] == 200
        await asyncio.sleep(0.5)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        assert metric(app, "pop3gw_http_timeouts_total", phase="body") == 0
        await close(writer)


async def test_the_connection_cap_pauses_accepting_and_recovers() -> None:
    async with edge(max_connections=2, header_timeout=5, keepalive_timeout=30) as (site, app):
        held = [await connect(site) for _ in range(2)]
        for _reader, writer in held:
            writer.write(PARTIAL)  # mid-head: not idle, nothing to reclaim
            await writer.drain()
        await asyncio.sleep(0.2)  # the server has read them (it runs in this loop)
        reader, writer = await connect(site)  # the kernel completes it; we do not accept
        writer.write(HEALTHZ)
        with pytest.raises(asyncio.TimeoutError):
            await response(reader, timeout=0.5)
        assert metric(app, "pop3gw_http_connections") == 2
        assert metric(app, "pop3gw_http_connections_max") == 2
        assert metric(app, "pop3gw_http_accept_pauses_total", reason="max_connections") == 1
        await close(held[0][1])
        assert (await response(reader))[0] == 200
        await close(writer, held[1][1])


async def test_idle_connections_make_room_under_the_cap() -> None:
    async with edge(max_connections=2, header_timeout=5, keepalive_timeout=30) as (site, app):
        idle = [await connect(site) for _ in range(2)]
        for reader, writer in idle:
            writer.write(HEALTHZ)
            assert (await response(reader))[0] == 200
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        assert await closed_after(idle[0][0]) < 3  # the oldest idle one made room
        assert metric(app, "pop3gw_http_connections_reclaimed_total", reason="max_connections") == 1
        await close(writer, *(other for _reader, other in idle))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), 10, clock)
    with caplog.at_level(logging.WARNING, "test.limited"):
        for _ in range(1000):
            limited.warning("accept failed: %s", "EMFILE")
            clock.now += 0.001
        clock.now += 10
        limited.warning("accept failed: %s", "EMFILE")
        limited.warning("accept failed: %s", "EMFILE")
        limited.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "accept failed: EMFILE",
        "accept failed: EMFILE (999 similar lines left out in the last 11 s)",
        "1 more similar lines left out",
    ]


class _FailingSocket(socket.socket):
    """A listening socket whose accept() fails (EMFILE unless told otherwise) while
    ``failing`` is set; ECONNABORTED fails only once (one connection died in the queue)."""

    failing = True
    calls = 0
    fail_with = errno.EMFILE

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        if self.failing:
            if self.fail_with == errno.ECONNABORTED:
                self.failing = False
            raise OSError(self.fail_with, os.strerror(self.fail_with))
        return super().accept()


async def test_accept_errors_pause_the_listener_and_are_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    gate = ConnectionGate(EdgeLimits(accept_backoff=(0.05, 0.2)), metrics)
    sock = _FailingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    made: list[asyncio.Protocol] = []

    def factory(_slot: object) -> asyncio.Protocol:
        protocol = asyncio.Protocol()
        made.append(protocol)
        return protocol

    listener = Listener(sock, factory, gate, backlog=16)
    gate.listeners.append(listener)
    listener.update()
    clients = []
    try:
        with caplog.at_level(logging.WARNING, "gateway.http"):
            for _ in range(4):
                client = socket.create_connection(sock.getsockname(), timeout=5)
                clients.append(client)
            await asyncio.sleep(1.0)
            # paused with a backoff: a handful of tries in a second, not a busy loop
            assert 2 <= sock.calls <= 12
            lines = [r for r in caplog.records if "accepting HTTP" in r.getMessage()]
            assert len(lines) == 1
            assert not lines[0].exc_info
            sock.failing = False
            for _ in range(200):
                if len(made) == 4:
                    break
                await asyncio.sleep(0.01)
            assert len(made) == 4
            assert gate.open == 4
    finally:
        listener.close()
        for client in clients:
            client.close()
    text = metrics.exposition()[0].decode()
    assert 'pop3gw_http_accept_errors_total{errno="EMFILE"}' in text
    assert 'pop3gw_http_accept_pauses_total{reason="fd_exhausted"}' in text


def test_connection_cap_stays_below_the_fd_limit() -> None:
    reserve = fd_reserve(pop3_sessions=64, redis_connections=64)
    assert reserve == 256
    assert fd_reserve(pop3_sessions=64, redis_connections=64, parse_workers=2) == 264
    assert connection_cap(None, reserve, nofile=1024) == 768
    assert connection_cap(None, reserve, nofile=1_048_576) == 1024
    assert connection_cap(100, reserve, nofile=1024) == 100
    with pytest.raises(ConfigError, match=r"http.max_connections: 900 .* 768"):
        connection_cap(900, reserve, nofile=1024)
    with pytest.raises(ConfigError, match="ulimit -n"):
        connection_cap(None, reserve, nofile=200)


def test_http_settings_are_validated() -> None:
    settings = load_settings(
        http={"header_timeout": 2, "body_timeout": 3, "keepalive_timeout": 4},
        pool={"max_total": 8},
    )
    limits = http_limits(settings, nofile=400)
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (2, 3, 4)
    # 2 per POP3 session, 64 for Redis, 4 per parser (2 by default), 64 for the process
    assert limits.max_connections == 400 - (16 + 64 + 8 + 64)
    for bad in ({"header_timeout": 0}, {"max_connections": 0}, {"keepalive": 3}):
        with pytest.raises(ConfigError, match="http"):
            load_settings(http=bad)


async def test_oversized_body_is_413_problem(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(
        create_app(settings_for(free_port(), http={"max_body_bytes": 2048}))
    )
    resp = await client.post(
        "/v1/mailboxes/me/messages/delete",
        data=b'{"ids": ["' + b"a" * 4096 + b'"]}',
        headers={**basic("alice", "pw"), "Content-Type": "application/json"},
    )
    body = await checked(resp, 413)
    assert body["type"] == "/problems/request-too-large"
    assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_a_body_that_comes_in_time_is_not_timed_out() -> None:
    """The body arrives after the head (not in the same segment), within the body timeout:
    read by the handler (delete) or drained after an answer that did not need it (405)."""
    async with edge(body_timeout=1, header_timeout=5, keepalive_timeout=30) as (site, app):
        reader, writer = await connect(site)
        auth = basic("alice", "pw")["Authorization"].encode()
        body = b'{"ids": ["aWQ"]}'
        writer.write(
            b"POST /v1/mailboxes/me/messages/delete HTTP/1.1\r\nHost: test\r\n"
            b"Authorization: " + auth + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body)
        assert (await response(reader))[0] == 502  # no POP3 server there: but answered
        writer.write(b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\n")
        await writer.drain()
        assert (await response(reader))[0] == 405  # answered before the body came
        await asyncio.sleep(0.3)
        writer.write(b"abcd")
        await asyncio.sleep(1.2)  # past the body timeout: its timer was stopped
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        assert metric(app, "pop3gw_http_timeouts_total", phase="body") == 0
        await close(writer)


async def test_a_partial_head_behind_a_slow_request_is_timed_out_after_it() -> None:
    """Bytes of a next request that arrive while one is answered start the header timer
    when the answer is sent, not the idle one."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # a POP3 server that never greets

    pop3 = await asyncio.start_server(silent, "127.0.0.1", 0)
    pop3_port = pop3.sockets[0].getsockname()[1]
    app = create_app(settings_for(pop3_port, timeouts={"connect": 1, "command": 0.6}))
    limits = EdgeLimits(header_timeout=0.5, keepalive_timeout=30)
    kwargs = handler_kwargs(
        limits, access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
    )
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    site = EdgeSite(
        runner, "127.0.0.1", 0, limits=limits, metrics=app[METRICS], handler_kwargs=kwargs
    )
    assert site.port == 0
    await site.start()
    assert site.name == f"http://127.0.0.1:{site.port}"
    try:
        reader, writer = await connect(site)
        auth = basic("alice", "pw")["Authorization"].encode()
        writer.write(b"GET /v1/mailboxes/me HTTP/1.1\r\nHost: t\r\nAuthorization: " + auth)
        writer.write(b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(PARTIAL)  # while the request above waits for the silent server
        await writer.drain()
        assert (await response(reader))[0] == 504
        started = time.monotonic()
        assert await closed_after(reader) < 3
        assert time.monotonic() - started < 3
        assert metric(app, "pop3gw_http_timeouts_total", phase="header") == 1
        await close(writer)
    finally:
        await runner.cleanup()
        for held_writer in held:
            held_writer.close()
        pop3.close()
        await pop3.wait_closed()


async def test_a_connection_aborted_in_the_queue_is_skipped() -> None:
    metrics = Metrics()
    gate = ConnectionGate(EdgeLimits(), metrics)
    sock = _FailingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.fail_with = errno.ECONNABORTED
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    made: list[asyncio.Protocol] = []

    def factory(_slot: object) -> asyncio.Protocol:
        made.append(asyncio.Protocol())
        return made[-1]

    listener = Listener(sock, factory, gate, backlog=16)
    gate.listeners.append(listener)
    listener.update()
    client = socket.create_connection(sock.getsockname(), timeout=5)
    try:
        for _ in range(200):
            if made:
                break
            await asyncio.sleep(0.01)
        assert len(made) == 1  # the next accept in the same wake-up took it
        assert sock.calls >= 2
        assert "pop3gw_http_accept_pauses_total{" not in metrics.exposition()[0].decode()
    finally:
        listener.close()
        client.close()


async def test_every_connection_is_known_from_its_start() -> None:
    """What a response left unsent at exit is waited for (``gateway.__main__``): the site
    knows each connection's transport (weakly) from its start, answered or not."""
    async with edge(keepalive_timeout=5, header_timeout=5) as (site, _app):
        reader, writer = await connect(site)
        _silent_reader, silent = await connect(site)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        for _ in range(100):  # the silent one too, once accepted: nothing answered yet
            if len(site.gate.transports) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(site.gate.transports) == 2
        await close(writer, silent)
