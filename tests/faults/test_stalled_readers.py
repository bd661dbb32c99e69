"""Clients that stop reading a message cannot hold its POP3 session (issue 12, item 2).

A stalled reader is a raw socket with a small receive buffer that sends a GET, reads the
status line and a few KB, then reads no more (as an attacker or a broken client would).
Everything is measured with counts read from /metrics (sessions, spooled bytes, limits
that bit), in bounded loops; never with wall-clock assertions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from types import SimpleNamespace

import pytest

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import Client, ClientFactory, basic, checked, served, settings_for
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server

ALICE = basic("alice", "pw")
BOB = basic("bob", "pw")
#: larger than every socket buffer on the way (so a stalled reader really stalls)
BIG = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 12_000
MIB = 1024 * 1024
DOTS = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n"


def _with_attachment(size: int) -> bytes:
    message = EmailMessage()
    message["Subject"] = "with a part"
    message.set_content("see the attachment")
    message.add_attachment(b"\x01" * size, maintype="application", subtype="octet-stream")
    return bytes(message)


@pytest.fixture
async def server() -> AsyncIterator[FakePOP3Server]:
    alice = FakeMailbox([("big", BIG), ("part", _with_attachment(6 * MIB))])
    bob = FakeMailbox([("small", b"Subject: s\r\n\r\ns\r\n")])
    async with FakePOP3Server(
        mailboxes={"alice": alice, "bob": bob}, users={"alice": "pw", "bob": "pw"}
    ) as srv:
        yield srv


async def _scrape(api: Client) -> dict[str, float]:
    text = await (await api.get("/metrics")).text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z0-9_]+(?:\{[^}]*\})?) ([0-9.e+-]+)", line)
        if match:
            found[match[1]] = float(match[2])
    return found


async def _until(api: Client, name: str, value: float, *, tries: int = 200) -> dict[str, float]:
    """Scrape until ``name`` reads ``value`` (at most ``tries`` scrapes, 50 ms apart)."""
    for _ in range(tries):
        scrape = await _scrape(api)
        if scrape.get(name, 0.0) == value:
            return scrape
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never read {value}: {scrape.get(name)}")


class StalledReader:
    """A client that asks for ``path``, reads the status line and a few KB, and stops."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.status = b""

    async def start(self, api: Client, path: str, headers: dict[str, str]) -> StalledReader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (api.host, api.port or 0))
        # limit: the stream stops reading the socket once it holds 8 KB
        reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n{head}\r\n".encode())
        self.status = await asyncio.wait_for(reader.readline(), 30)
        await asyncio.wait_for(reader.readexactly(4096), 30)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def test_stalled_raw_readers_hold_no_session(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    settings = settings_for(
        server.port,
        pool={"max_per_mailbox": 3, "max_per_upstream": 3, "acquire_timeout": 2.0},
        stream={"send_timeout": 600, "spool_max_bytes": 64 * MIB},
    )
    api = await aiohttp_client(create_app(settings))
    path = f"/v1/mailboxes/me/messages/{encode_id('big')}/raw"
    readers = [await StalledReader().start(api, path, ALICE) for _ in range(3)]
    try:
        assert all(r.status.startswith(b"HTTP/1.1 200") for r in readers)
        # Every session alice used is back in the pool: the readers hold files instead.
        scrape = await _until(api, 'pop3gw_pool_sessions{state="leased"}', 0)
        assert scrape["pop3gw_spool_files"] == 3
        assert 0 < scrape["pop3gw_spool_bytes"] <= 3 * len(BIG)
        # Another account answers within the usual lease wait.
        await checked(await api.get("/v1/mailboxes/me", headers=BOB), 200)
        # ... and so does alice.
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    finally:
        for reader in readers:
            reader.close()
    # The clients went away: their spool files are gone.
    scrape = await _until(api, "pop3gw_spool_files", 0)
    assert scrape["pop3gw_spool_bytes"] == 0
    assert scrape["pop3gw_spool_reserved_bytes"] == 0
    assert server.mailbox_for("alice").uids() == ["big", "part"]


async def test_a_send_timeout_frees_the_spool(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    settings = settings_for(server.port, stream={"send_timeout": 0.3, "spool_max_bytes": 64 * MIB})
    api = await aiohttp_client(create_app(settings))
    path = f"/v1/mailboxes/me/messages/{encode_id('big')}/raw"
    reader = await StalledReader().start(api, path, ALICE)
    try:
        scrape = await _until(api, 'pop3gw_limits_total{reason="send-timeout"}', 1)
        scrape = await _until(api, "pop3gw_spool_files", 0)
        assert scrape["pop3gw_spool_bytes"] == 0
        assert scrape['pop3gw_pool_sessions{state="leased"}'] == 0
    finally:
        reader.close()


async def test_past_the_spool_budget_the_send_timeout_frees_the_session(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    settings = settings_for(server.port, stream={"send_timeout": 0.3, "spool_max_bytes": MIB})
    api = await aiohttp_client(create_app(settings))
    path = f"/v1/mailboxes/me/messages/{encode_id('big')}/raw"
    reader = await StalledReader().start(api, path, ALICE)
    try:
        scrape = await _scrape(api)
        assert scrape['pop3gw_limits_total{reason="spool-full"}'] == 1
        assert scrape["pop3gw_spool_files"] == 0
        # The session streams to the stalled client until the send timeout ends it.
        scrape = await _until(api, 'pop3gw_limits_total{reason="send-timeout"}', 1)
        scrape = await _until(api, 'pop3gw_pool_sessions{state="leased"}', 0)
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    finally:
        reader.close()
    # A client that reads gets every byte, straight from the session.
    raw = await api.get(path, headers=ALICE)
    assert await raw.read() == BIG


@pytest.mark.parametrize("spool_max_bytes", [0, MIB, 64 * MIB])
@pytest.mark.parametrize("listed", ["exact", "short"])
async def test_raw_is_the_servers_bytes(
    aiohttp_client: ClientFactory, spool_max_bytes: int, listed: str
) -> None:
    # Listed far smaller than it is (past the margin): the spooled part, then the session.
    delta = -(len(BIG) // 2) if listed == "short" else 0
    box = FakeMailbox([("big", BIG)] + ([("dots", DOTS)] if not delta else []))
    async with FakePOP3Server(box, users={"alice": "pw"}, list_size_delta=delta) as srv:
        settings = settings_for(srv.port, stream={"spool_max_bytes": spool_max_bytes})
        api = await aiohttp_client(create_app(settings))
        for uid, expected in (("big", BIG), ("dots", DOTS))[: len(box.messages)]:
            raw = await api.get(f"/v1/mailboxes/me/messages/{encode_id(uid)}/raw", headers=ALICE)
            assert raw.status == 200
            assert raw.headers["Content-Type"] == "message/rfc822"
            assert await raw.read() == expected
        scrape = await _scrape(api)
        assert scrape["pop3gw_spool_files"] == 0
        assert scrape['pop3gw_pool_sessions{state="leased"}'] == 0
        overflow = scrape.get('pop3gw_limits_total{reason="spool-overflow"}', 0)
        assert overflow == (1 if spool_max_bytes == 64 * MIB and delta else 0)


async def test_a_stalled_attachment_reader_holds_no_session(
    aiohttp_client: ClientFactory, server: FakePOP3Server
) -> None:
    settings = settings_for(server.port, stream={"send_timeout": 0.3})
    api = await aiohttp_client(create_app(settings))
    base = f"/v1/mailboxes/me/messages/{encode_id('part')}"
    parsed = await checked(await api.get(base, headers=ALICE), 200)
    (part,) = parsed["attachments"]
    reader = await StalledReader().start(api, f"{base}/attachments/{part['id']}", ALICE)
    try:
        assert reader.status.startswith(b"HTTP/1.1 200")
        scrape = await _scrape(api)
        assert scrape['pop3gw_pool_sessions{state="leased"}'] == 0
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
        # The part's bytes in memory are let go at the send timeout.
        await _until(api, 'pop3gw_limits_total{reason="send-timeout"}', 1)
    finally:
        reader.close()
    whole = await api.get(f"{base}/attachments/{part['id']}", headers=ALICE)
    assert await whole.read() == b"\x01" * 6 * MIB


async def test_head_sends_no_body(aiohttp_client: ClientFactory, server: FakePOP3Server) -> None:
    # Bytes written after the headers of a HEAD answer would be read as the next response.
    api = await aiohttp_client(create_app(settings_for(server.port)))
    base = f"/v1/mailboxes/me/messages/{encode_id('part')}"
    parsed = await checked(await api.get(base, headers=ALICE), 200)
    for path in (base + "/raw", f"{base}/attachments/{parsed['attachments'][0]['id']}"):
        head = await api.head(path, headers=ALICE)
        assert head.status == 200
        assert await head.read() == b""
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    scrape = await _until(api, "pop3gw_spool_files", 0)
    assert scrape['pop3gw_pool_sessions{state="leased"}'] == 0


async def test_a_failed_retr_gives_its_spool_reservation_back(
    aiohttp_client: ClientFactory,
) -> None:
    """A RETR refused ([SYS/TEMP]) before any byte: its reservation is given back, so
    failures cannot fill the spool budget for good (then every later /raw would hold its
    session again)."""
    box = FakeMailbox([("m1", b"Subject: x\r\n\r\n" + b"y" * 1000 + b"\r\n")])
    async with FakePOP3Server(mailboxes={"alice": box}, users={"alice": "pw"}) as srv:
        srv.script("RETR", Err("SYS/TEMP", "busy"), times=None)
        settings = settings_for(srv.port, stream={"spool_max_bytes": MIB})
        api = await aiohttp_client(create_app(settings))
        path = f"/v1/mailboxes/me/messages/{encode_id('m1')}/raw"
        for _ in range(20):
            resp = await api.get(path, headers=ALICE)
            await checked(resp, 503)
        scraped = await _scrape(api)
        assert scraped["pop3gw_spool_files"] == 0
        assert scraped["pop3gw_spool_reserved_bytes"] == 0


async def test_a_stalled_reader_is_one_warning_not_an_error_traceback(
    server: FakePOP3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Served as in production: aiohttp logged every transfer its client stopped reading as
    an error with a traceback, beside the API's own warning; a client could cause them at
    will."""
    caplog.set_level(logging.DEBUG)
    settings = settings_for(server.port, stream={"send_timeout": 0.3, "spool_max_bytes": 0})
    async with served(settings) as (site, _app):
        where = SimpleNamespace(host="127.0.0.1", port=site.port)
        path = f"/v1/mailboxes/me/messages/{encode_id('big')}/raw"
        reader = await StalledReader().start(where, path, ALICE)  # type: ignore[arg-type]
        try:
            for _ in range(200):
                if "stream aborted" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        finally:
            reader.close()
    assert "stream aborted: SendStalledError" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
