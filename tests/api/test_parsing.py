"""GET of a message through worker processes: parsed once, never stalling the event loop,
stopped when its client leaves, refused clearly when it cannot be parsed (the message
itself stays whole for /raw)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.app import create_app
from gateway.keys import SERVICE
from gateway.service import encode_id
from gateway.service.parsing import ParseWorkers
from tests.support.api import ClientFactory, basic, checked, served, settings_for
from tests.support.corpus import large_message
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server
from tests.support.slow_parser import command
from tests.support.wait import wait_until

FIRST = "/v1/mailboxes/me/messages/" + encode_id("uid-1")
ALICE = basic("alice", "pw")


def retrs(server: FakePOP3Server) -> int:
    return sum(line.startswith(b"RETR") for lines in server.received for line in lines)


async def test_a_message_opened_again_is_neither_fetched_nor_parsed_again(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    client = await aiohttp_client(create_app(settings_for(fake_server.port)))
    first = await checked(await client.get(FIRST, headers=ALICE), 200)
    again = await checked(await client.get(FIRST, headers=ALICE), 200)
    assert again == first
    assert first["subject"] == "one"
    assert retrs(fake_server) == 1
    workers = client.app[SERVICE].parser.workers
    assert workers is not None
    assert workers.jobs == 1
    metrics = await (await client.get("/metrics")).text()
    assert "pop3gw_parse_workers 1.0" in metrics  # started on first use, still there
    assert "pop3gw_parse_jobs_running 0.0" in metrics
    cached = next(line for line in metrics.splitlines() if line.startswith("pop3gw_parsed_cache"))
    assert float(cached.split()[1]) > 0


async def test_a_message_deleted_meanwhile_is_not_served_from_the_parsed_cache(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    client = await aiohttp_client(create_app(settings_for(fake_server.port)))
    await checked(await client.get(FIRST, headers=ALICE), 200)
    await checked(await client.delete(FIRST, headers=ALICE), 204)
    await checked(await client.get(FIRST, headers=ALICE), 404)


async def test_concurrent_gets_of_one_message_share_one_parse(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    app = create_app(settings_for(fake_server.port))
    client = await aiohttp_client(app)
    parser = app[SERVICE].parser
    parser.workers = ParseWorkers(2, timeout=30, queue_timeout=30, command=command("delay:0.3"))
    try:
        answers = await asyncio.gather(*(client.get(FIRST, headers=ALICE) for _ in range(4)))
        bodies = [await checked(answer, 200) for answer in answers]
        assert all(body == bodies[0] for body in bodies)
        assert parser.workers.jobs == 1
    finally:
        await parser.workers.close()


async def test_a_message_past_the_parse_time_limit_answers_422_and_raw_still_serves_it(
    aiohttp_client: ClientFactory,
) -> None:
    big = large_message(4 * 1024 * 1024)
    async with FakePOP3Server(FakeMailbox([("uid-1", big)]), users={"alice": "pw"}) as server:
        settings = settings_for(server.port, parse={"timeout": 0.001})
        client = await aiohttp_client(create_app(settings))
        body = await checked(await client.get(FIRST, headers=ALICE), 422)
        assert body["type"] == "/problems/message-too-complex"
        assert body["raw_url"] == FIRST + "/raw"
        assert "longer than 0.001 s" in body["detail"]
        raw = await client.get(body["raw_url"], headers=ALICE)
        assert raw.status == 200
        assert await raw.read() == big
        metrics = await (await client.get("/metrics")).text()
        assert 'pop3gw_limits_total{reason="parse-timeout"} 1.0' in metrics


async def test_a_client_that_leaves_stops_its_parse(fake_server: FakePOP3Server) -> None:
    # served as in production: aiohttp's test server would cancel the handler by itself
    async with served(settings_for(fake_server.port)) as (site, app):
        workers = ParseWorkers(1, timeout=60, queue_timeout=30, command=command("stall"))
        app[SERVICE].parser.workers = workers
        base = f"http://127.0.0.1:{site.port}"
        try:
            async with aiohttp.ClientSession(base) as session:
                with pytest.raises(TimeoutError):
                    await session.get(FIRST, headers=ALICE, timeout=aiohttp.ClientTimeout(0.5))
                assert workers.jobs == 1
                # the worker is killed once the gateway sees the connection closed: its CPU
                # is free for the others, and the next request gets a new worker at once
                await wait_until(lambda: workers.killed == 1)
                assert workers.pids == []
                metrics = await (await session.get("/metrics")).text()
                assert 'pop3gw_limits_total{reason="client-gone"} 1.0' in metrics
                assert "pop3gw_parse_jobs_running 0.0" in metrics
                assert "pop3gw_parse_workers 0.0" in metrics
                healthz = await session.get("/healthz")
                assert await healthz.json() == {"status": "ok"}
        finally:
            await workers.close()


async def test_every_parser_busy_answers_503_with_retry_after(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    app = create_app(settings_for(fake_server.port))
    client = await aiohttp_client(app)
    parser = app[SERVICE].parser
    workers = ParseWorkers(1, timeout=60, queue_timeout=0.2, command=command("stall"))
    parser.workers = workers
    second = "/v1/mailboxes/me/messages/" + encode_id("uid-2")
    try:
        stuck = asyncio.ensure_future(client.get(FIRST, headers=ALICE))
        await wait_until(lambda: workers.jobs == 1)
        resp = await client.get(second, headers=ALICE)
        body = await checked(resp, 503)
        assert body["type"] == "/problems/parser-busy"
        assert resp.headers["Retry-After"] == "2"
        stuck.cancel()  # its client leaves: the parse is stopped
        await wait_until(lambda: workers.killed == 1)
    finally:
        await workers.close()
