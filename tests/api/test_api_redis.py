"""The API with the Redis header cache: warm listings hit it, its keys reveal no user, and a
dead Redis only costs speed."""

from __future__ import annotations

import base64
import uuid

import pytest
import redis

from gateway.app import create_app
from tests.cache.servers import StallServer
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser, free_port

pytestmark = [pytest.mark.dovecot, pytest.mark.redis]


def basic(user: DovecotUser) -> dict[str, str]:
    return {
        "Authorization": "Basic "
        + base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    }


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_warm_listing_comes_from_redis(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    """What one replica parsed, another reads from Redis; the replica that parsed it serves
    it again as it holds it (no round trip to Redis for that)."""
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    secret = uuid.uuid4().hex
    settings = settings_for(dovecot.port, redis_url="redis://127.0.0.1:6379/0", cache_secret=secret)
    api = await aiohttp_client(create_app(settings))
    first = await checked(
        await api.get("/v1/mailboxes/me/messages", headers=basic(dovecot_user)), 200
    )
    again = await checked(
        await api.get("/v1/mailboxes/me/messages?fresh=true", headers=basic(dovecot_user)), 200
    )
    assert again["messages"] == first["messages"]
    scrape = await (await api.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_header_cache_events_total{kind="hit"}') == 0
    await api.close()  # its session and the maildrop's replica lock go with it
    replica = await aiohttp_client(create_app(settings))
    second = await checked(
        await replica.get("/v1/mailboxes/me/messages?fresh=true", headers=basic(dovecot_user)),
        200,
    )
    assert first["messages"] == second["messages"]
    scrape = await (await replica.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_header_cache_events_total{kind="hit"}') >= 3
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        keys = [k.decode() for k in client.scan_iter(match="pop3gw:v2:hdr:*", count=1000)]
        assert keys
        for key in keys:
            assert dovecot_user.name not in key
            assert dovecot_user.password not in key
        ours = [k for k in keys if client.ttl(k) > 0]
        assert ours
    finally:
        client.close()


async def test_dead_redis_only_costs_speed(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(simple_message(1))
    settings = settings_for(
        dovecot.port, redis_url=f"redis://127.0.0.1:{free_port()}/0", cache_secret="s"
    )
    api = await aiohttp_client(create_app(settings))
    for _ in range(2):
        page = await checked(
            await api.get("/v1/mailboxes/me/messages", headers=basic(dovecot_user)), 200
        )
        assert page["total"] == 1
    ready = await checked(await api.get("/readyz"), 200)
    assert ready["checks"]["header_cache"]["ok"] is False
    assert ready["checks"]["replica_lock"]["ok"] is False
    scrape = await (await api.get("/metrics")).text()
    assert metric(scrape, 'pop3gw_redis_events_total{kind="error"}') >= 1
    assert metric(scrape, 'pop3gw_header_cache_events_total{kind="miss"}') >= 1


async def test_a_redis_that_never_answers_is_asked_once_per_backoff(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    """A Redis that accepts connections and answers nothing costs one timeout, then the
    shared client backs off for everyone (cache and replica gate): new POP3 sessions do not
    each wait for it (they did, twice per login, before the gate shared the backoff)."""
    dovecot_user.deliver(simple_message(1))
    async with StallServer() as black_hole:
        settings = settings_for(
            dovecot.port,
            redis_url=black_hole.url(),
            cache_secret="s",
            pool={"min_fresh_interval": 0},  # four logins in a row, on purpose
        )
        api = await aiohttp_client(create_app(settings))
        for _ in range(4):  # four new sessions, four logins
            page = await checked(
                await api.get("/v1/mailboxes/me/messages?fresh=true", headers=basic(dovecot_user)),
                200,
            )
            assert page["total"] == 1
        # One round trip timed out; at most one probe after the first backoff (>= 0.5 s).
        # Without the shared backoff: two per login (LOGIN-DELAY check, lock), 8 or more.
        assert 1 <= black_hole.accepted <= 2
        scrape = await (await api.get("/metrics")).text()
        assert metric(scrape, 'pop3gw_replica_gate_events_total{kind="skipped"}') >= 6


async def test_whoever_writes_to_redis_cannot_rewrite_a_listing(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver(simple_message(1))
    settings = settings_for(
        dovecot.port,
        redis_url="redis://127.0.0.1:6379/0",
        cache_secret=uuid.uuid4().hex,
        pool={"min_fresh_interval": 0},  # two logins in a row, on purpose
    )
    api = await aiohttp_client(create_app(settings))
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        before = set(client.scan_iter(match="pop3gw:v2:hdr:*", count=1000))
        url = "/v1/mailboxes/me/messages?fresh=true"
        first = await checked(await api.get(url, headers=basic(dovecot_user)), 200)
        ours = set(client.scan_iter(match="pop3gw:v2:hdr:*", count=1000)) - before
        assert len(ours) == 1
        (key,) = ours
        sealed = client.get(key)
        assert sealed is not None
        forged = (
            sealed[:32] + b'{"v":1,"s":"Urgent: verify your account","f":["IT","it@evil.example"]}'
        )
        client.set(key, forged)
        # Another replica (this one holds what it parsed and would not ask Redis).
        await api.close()  # its session and the maildrop's replica lock go with it
        replica = await aiohttp_client(create_app(settings))
        again = await checked(await replica.get(url, headers=basic(dovecot_user)), 200)
        assert again["messages"] == first["messages"]  # read from the server again
        assert client.get(key) == sealed  # and the genuine value written back
        scrape = await (await replica.get("/metrics")).text()
        assert metric(scrape, 'pop3gw_header_cache_events_total{kind="invalid"}') == 1
    finally:
        client.close()
