"""More of the fault matrix: huge messages, duplicate ids, odd servers, TLS attacks, clients
that go away, and a Redis that misbehaves mid-run."""

from __future__ import annotations

import asyncio
import base64
import resource
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
FAST = {"connect": 2, "tls": 2, "command": 1, "idle": 1}
ALICE_AT = {"Authorization": "Basic " + base64.b64encode(b"alice@example.com:pw").decode()}


# -- a 500 MB message ----------------------------------------------------------------------
HUGE_LINE = b"x" * 998 + b"\r\n"
HUGE_LINES = 500 * 1024 * 1024 // len(HUGE_LINE)
HUGE_HEADER = b"Subject: huge\r\nMessage-ID: <huge@example.com>\r\n\r\n"
HUGE_SIZE = len(HUGE_HEADER) + HUGE_LINES * len(HUGE_LINE)


async def _huge_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough POP3 to serve one 500 MB message generated on the fly."""
    writer.write(b"+OK ready\r\n")
    try:
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb in (b"USER", b"PASS", b"NOOP"):
                writer.write(b"+OK\r\n")
            elif verb == b"CAPA":
                writer.write(b"+OK\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n")
            elif verb == b"STAT":
                writer.write(b"+OK 1 %d\r\n" % HUGE_SIZE)
            elif verb == b"UIDL":
                writer.write(b"+OK\r\n1 huge\r\n.\r\n")
            elif verb == b"LIST":
                writer.write(b"+OK\r\n1 %d\r\n.\r\n" % HUGE_SIZE)
            elif verb == b"TOP":
                writer.write(b"+OK\r\n" + HUGE_HEADER + b".\r\n")
            elif verb == b"RETR":
                writer.write(b"+OK\r\n" + HUGE_HEADER)
                block = HUGE_LINE * 1024
                for _ in range(HUGE_LINES // 1024):
                    writer.write(block)
                    await writer.drain()
                writer.write(HUGE_LINE * (HUGE_LINES % 1024) + b".\r\n")
            elif verb == b"QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


async def test_a_500_mb_message(aiohttp_client: ClientFactory) -> None:
    server = await asyncio.start_server(_huge_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        api = await aiohttp_client(create_app(settings_for(port)))
        path = f"/v1/mailboxes/me/messages/{encode_id('huge')}"
        body = await checked(await api.get(path, headers=ALICE), 422)
        assert body["raw_url"] == path + "/raw"
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        resp = await api.get(path + "/raw", headers=ALICE)
        assert resp.status == 200
        total = 0
        ends_well = b""
        async for chunk in resp.content.iter_chunked(1024 * 1024):
            total += len(chunk)
            ends_well = (ends_well + chunk)[-2:]
        assert total == HUGE_SIZE
        assert ends_well == b"\r\n"
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
        assert grown_kib < 64 * 1024, f"peak memory grew by {grown_kib} KiB while streaming"
    finally:
        server.close()
        await server.wait_closed()


# -- servers that are odd but answerable ---------------------------------------------------
async def test_duplicate_unique_ids(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("same", b"Subject: a\r\n\r\n1\r\n"), ("same", b"Subject: a\r\n\r\n1\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port)))
        page = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
        assert [m["uid"] for m in page["messages"]] == ["same", "same"]
        one = f"/v1/mailboxes/me/messages/{encode_id('same')}"
        await checked(await api.get(one, headers=ALICE), 200)
        # One identity, two copies: a delete by that id removes both, as it must.
        assert (await api.delete(one, headers=ALICE)).status == 204
        assert len(srv.mailbox) == 0


@pytest.mark.parametrize("option", ["bare_lf", "chunk_size"])
async def test_bare_lf_and_one_byte_servers(aiohttp_client: ClientFactory, option: str) -> None:
    box = FakeMailbox([("u1", b"Subject: odd\r\nFrom: A <a@example.com>\r\n\r\nbody\r\n")])
    kwargs: dict[str, object] = {"bare_lf": True} if option == "bare_lf" else {"chunk_size": 1}
    async with FakePOP3Server(box, users={"alice": "pw"}, **kwargs) as srv:  # type: ignore[arg-type]
        api = await aiohttp_client(create_app(settings_for(srv.port)))
        page = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
        assert page["messages"][0]["subject"] == "odd"
        message = await checked(
            await api.get(f"/v1/mailboxes/me/messages/{encode_id('u1')}", headers=ALICE), 200
        )
        assert message["text"].strip() == "body"


async def test_overlong_reply_line(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("u1", b"Subject: x\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        from tests.support.fakepop3 import Reply

        srv.script("STAT", Reply(b"+OK " + b"1" * 100_000 + b"\r\n"))
        api = await aiohttp_client(create_app(settings_for(srv.port, timeouts=FAST)))
        body = await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=ALICE), 502)
        assert body["type"] == "/problems/upstream-error"
        assert srv.mailbox.uids() == ["u1"]


async def test_a_server_that_lies_about_pipelining(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([(f"u{i}", b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(5)])
    async with FakePOP3Server(box, users={"alice": "pw"}, pipelining_lies=True) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port, timeouts=FAST)))
        body = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 504)
        assert body["type"] == "/problems/upstream-timeout"
        # The per-upstream switch: pipelining off for that server, and it works.
        settings = settings_for(
            srv.port,
            timeouts=FAST,
            upstreams=[
                {
                    "name": "liar",
                    "url": f"pop3://127.0.0.1:{srv.port}",
                    "pipelining": False,
                    "domains": ["example.com"],
                }
            ],
        )
        srv.users["alice@example.com"] = "pw"
        fixed = await aiohttp_client(create_app(settings))
        page = await checked(await fixed.get("/v1/mailboxes/me/messages", headers=ALICE_AT), 200)
        assert page["total"] == 5
        assert srv.mailbox.uids() == [f"u{i}" for i in range(5)]


# -- TLS -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@pytest.fixture
def cafile(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def tls_api(
    aiohttp_client: ClientFactory, port: int, cafile: str | None, scheme: str = "pop3s"
) -> object:
    upstream: dict[str, object] = {
        "name": "secure",
        "url": f"{scheme}://127.0.0.1:{port}",
        "tls_server_name": "localhost",
        "domains": ["example.com"],
    }
    if cafile:
        upstream["cafile"] = cafile
    return await aiohttp_client(create_app(settings_for(port, timeouts=FAST, upstreams=[upstream])))


async def test_untrusted_certificate(
    aiohttp_client: ClientFactory, ca: trustme.CA, cafile: str
) -> None:
    box = FakeMailbox([("u1", b"Subject: x\r\n\r\nx\r\n")])
    async with FakePOP3Server(
        box,
        users={"alice@example.com": "pw"},
        tls_context=tls_server_context(ca, "localhost"),
        implicit_tls=True,
    ) as srv:
        untrusting = await tls_api(aiohttp_client, srv.port, None)
        body = await checked(await untrusting.get("/v1/mailboxes/me", headers=ALICE_AT), 502)  # type: ignore[attr-defined]
        assert body["type"] == "/problems/upstream-error"
        trusting = await tls_api(aiohttp_client, srv.port, cafile)
        await checked(await trusting.get("/v1/mailboxes/me", headers=ALICE_AT), 200)  # type: ignore[attr-defined]
        # Nothing was sent in the clear to the untrusted server: no login happened there.
        assert sum(1 for c in srv.connections if c.user) == 1


async def test_wrong_host_certificate(
    aiohttp_client: ClientFactory, ca: trustme.CA, cafile: str
) -> None:
    async with FakePOP3Server(
        users={"alice@example.com": "pw"},
        tls_context=tls_server_context(ca, "mail.example.org"),
        implicit_tls=True,
    ) as srv:
        api = await tls_api(aiohttp_client, srv.port, cafile)
        body = await checked(await api.get("/v1/mailboxes/me", headers=ALICE_AT), 502)  # type: ignore[attr-defined]
        assert body["type"] == "/problems/upstream-error"
        assert not any(c.user for c in srv.connections)


async def test_stls_injection(aiohttp_client: ClientFactory, ca: trustme.CA, cafile: str) -> None:
    async with FakePOP3Server(
        users={"alice@example.com": "pw"},
        tls_context=tls_server_context(ca, "localhost"),
        inject_after_stls=b"+OK injected\r\n",
    ) as srv:
        api = await tls_api(aiohttp_client, srv.port, cafile, scheme="pop3+starttls")
        body = await checked(await api.get("/v1/mailboxes/me", headers=ALICE_AT), 502)  # type: ignore[attr-defined]
        assert body["type"] == "/problems/upstream-error"
        await srv.wait_idle()
        sent = [line.upper() for conn in srv.received for line in conn]
        assert not any(line.startswith((b"USER", b"PASS", b"AUTH")) for line in sent)


# -- clients that go away ------------------------------------------------------------------
async def test_client_disconnects_mid_download(aiohttp_client: ClientFactory) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 20_000
    box = FakeMailbox([("big", big), ("small", b"Subject: s\r\n\r\ns\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port)))
        resp = await api.get(f"/v1/mailboxes/me/messages/{encode_id('big')}/raw", headers=ALICE)
        assert resp.status == 200
        await resp.content.read(10_000)
        resp.close()  # the client goes away
        for _ in range(50):  # the gateway notices and drops that session
            await asyncio.sleep(0.05)
            if srv.connections and all(c.closed for c in srv.connections):
                break
        again = await api.get(f"/v1/mailboxes/me/messages/{encode_id('small')}", headers=ALICE)
        await checked(again, 200)
        assert srv.mailbox.uids() == ["big", "small"]


# -- Redis misbehaving mid-run ---------------------------------------------------------------
@pytest.fixture
async def stallable_redis() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A proxy to the real Redis that forwards only while the event is set."""
    flowing = asyncio.Event()
    flowing.set()
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r_reader, r_writer = await asyncio.open_connection("127.0.0.1", 6379)
        for t in (
            asyncio.ensure_future(pipe(reader, r_writer)),
            asyncio.ensure_future(pipe(r_reader, writer)),
        ):
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], flowing
    server.close()
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    await server.wait_closed()


@pytest.mark.redis
async def test_redis_slow_then_flushed_mid_run(
    aiohttp_client: ClientFactory,
    fake_server: FakePOP3Server,
    stallable_redis: tuple[int, asyncio.Event],
) -> None:
    port, flowing = stallable_redis
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(
            settings_for(
                fake_server.port,
                redis_url=f"redis://127.0.0.1:{port}/0",
                cache_secret="flush-test",
            ),
            clock=clock,
        )
    )
    url = "/v1/mailboxes/me/messages?fresh=true"
    first = await checked(await api.get(url, headers=ALICE), 200)
    flowing.clear()  # Redis stops answering: requests go on, uncached
    slow = await checked(await api.get(url, headers=ALICE), 200)
    flowing.set()
    import redis as sync_redis

    client = sync_redis.Redis(host="127.0.0.1", port=6379)
    try:
        for key in client.scan_iter(match="pop3gw:v2:hdr:*"):
            client.delete(key)  # flushed under our feet
    finally:
        client.close()
    clock.advance(60)  # past the first backoff of the Redis client
    after = await checked(await api.get(url, headers=ALICE), 200)
    assert first["messages"] == slow["messages"] == after["messages"]
    assert fake_server.mailbox.uids() == ["uid-1", "uid-2"]
