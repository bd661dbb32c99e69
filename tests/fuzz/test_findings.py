"""What the fuzzers found in the gateway, kept as regression tests now that it is fixed.

Each test states the correct behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import load_settings
from gateway.logs import AccessLogger
from gateway.pop3 import Capabilities, POP3Client, POP3ProtocolError, Timeouts, TLSMode
from tests.support.dovecot import free_port
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server, Reply

# str.isdigit() is true for non-ASCII digits such as "²" (U+00B2), which int() refuses.
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nbody\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        yield srv


@pytest.mark.parametrize(
    ("verb", "reply"),
    [("STAT", "+OK ² 5\r\n"), ("STAT", "+OK 1 ³\r\n"), ("LIST", "+OK 1 ²\r\n")],
)
async def test_non_ascii_digits_in_a_status_line(
    server: FakePOP3Server, verb: str, reply: str
) -> None:
    server.script(verb, Reply(reply.encode()))
    client = await POP3Client.connect(
        "127.0.0.1", server.port, tls=TLSMode.PLAIN, timeouts=Timeouts(2, 2, 2, 2)
    )
    try:
        await client.login("alice", "pw")
        with pytest.raises(POP3ProtocolError):
            await (client.stat() if verb == "STAT" else client.list_one(1))
    finally:
        client.abort()


@pytest.mark.parametrize("challenge", ["\u00ff\u00ff 5", "not base64!"])
async def test_a_sasl_challenge_that_is_not_base64(server: FakePOP3Server, challenge: str) -> None:
    """Found by the long fuzz run: a continuation line with non-ASCII text escaped as a bare
    ValueError instead of the protocol error every other malformed reply is."""
    server.script("AUTH", Reply(b"+ " + challenge.encode() + b"\r\n"))
    client = await POP3Client.connect(
        "127.0.0.1", server.port, tls=TLSMode.PLAIN, timeouts=Timeouts(2, 2, 2, 2)
    )
    try:
        with pytest.raises(POP3ProtocolError, match="not base64"):
            await client.auth_login("alice", "pw")
    finally:
        client.abort()


def test_non_ascii_digits_in_login_delay() -> None:
    caps = Capabilities.parse(["LOGIN-DELAY ²"])
    assert caps.login_delay is None


async def test_non_ascii_digits_from_the_server_are_an_upstream_error(
    server: FakePOP3Server,
) -> None:
    server.script("STAT", Reply("+OK ² 5\r\n".encode()))
    settings = load_settings(default_upstream=f"pop3://127.0.0.1:{server.port}", presets=False)
    async with TestClient(TestServer(create_app(settings))) as api:
        resp = await api.get("/v1/mailboxes/me", headers=ALICE)
        body = await resp.json(content_type=None)
    assert (resp.status, body["type"]) == (502, "/problems/upstream-error")


async def test_limit_with_a_non_ascii_digit_is_invalid(server: FakePOP3Server) -> None:
    settings = load_settings(default_upstream=f"pop3://127.0.0.1:{server.port}", presets=False)
    async with TestClient(TestServer(create_app(settings))) as api:
        resp = await api.get("/v1/mailboxes/me/messages?limit=%C2%B2", headers=ALICE)
        body = await resp.json(content_type=None)
    assert (resp.status, body["type"]) == (400, "/problems/invalid-request")


async def test_access_log_of_a_malformed_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logged = asyncio.Event()

    class Notify(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name in ("gateway.access", "aiohttp.server"):
                logged.set()

    notify = Notify()
    logging.getLogger().addHandler(notify)
    app = create_app(load_settings(presets=False))
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
    )
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Test: a\x00b\r\n\r\n")
        async with asyncio.timeout(10):
            status = await reader.readline()
            await reader.read()
        writer.close()
        await writer.wait_closed()
        assert b" 400 " in status
        await asyncio.wait_for(logged.wait(), 5)
    finally:
        logging.getLogger().removeHandler(notify)
        await runner.cleanup()
    crashes = [
        r
        for r in caplog.records
        if r.exc_info is not None and isinstance(r.exc_info[1], AssertionError)
    ]
    assert crashes == []
    assert [
        r
        for r in caplog.records
        if r.name == "gateway.access" and getattr(r, "status", None) == 400
    ]
