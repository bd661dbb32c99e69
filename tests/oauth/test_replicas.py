"""Replicas sharing one Redis: one refresh at a time between them, the token one of them
obtained used by all, a rotated refresh token and a needs-reauth seen by all; what Redis
holds is sealed (AES-GCM, bound to its key) under a key from the cache secret."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.config import Settings
from gateway.oauth.shared import RedisTokens
from gateway.oauth.tokens import TokenRecord
from gateway.redis import SharedRedis
from tests.support.api import READ_KEY, Client, ClientFactory, bearer, checked
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.oauth import AuthServer

from .conftest import oauth_settings

pytestmark = [pytest.mark.dovecot, pytest.mark.redis]

REDIS = "redis://127.0.0.1:6379/0"


def _replica_settings(
    dovecot: Dovecot, server: AuthServer, user: DovecotUser, tmp: Path, refresh: str
) -> Settings:
    return oauth_settings(
        dovecot,
        server,
        user.name,
        tmp,
        refresh_token=refresh,
        redis_url=REDIS,
        cache_secret=secrets.token_urlsafe(16),  # this test's own keys in the shared Redis
        pool={"min_fresh_interval": 0},
    )


async def _get(client: Client, status: int = 200, query: str = "") -> Any:
    return await checked(
        await client.get("/v1/mailboxes/box" + query, headers=bearer(READ_KEY)), status
    )


async def test_two_replicas_refreshing_at_once_make_one_refresh(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
) -> None:
    auth_server.delay = 0.3  # both replicas ask while the refresh is under way
    settings = _replica_settings(
        oauth_dovecot, auth_server, oauth_user, tmp_path, auth_server.grant(oauth_user.name)
    )
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))

    await asyncio.gather(_get(one), _get(two))

    assert len(auth_server.token_requests) == 1
    [token] = auth_server.issued
    assert auth_server.introspected == [token, token]
    shared = [await (await client.get("/metrics")).text() for client in (one, two)]
    assert sum("pop3gw_oauth_tokens_shared_total 1.0" in text for text in shared) == 1


async def test_a_rotated_refresh_token_reaches_the_other_replica(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
) -> None:
    auth_server.rotate = True  # the configured refresh token dies at the first refresh
    configured = auth_server.grant(oauth_user.name)
    settings = _replica_settings(oauth_dovecot, auth_server, oauth_user, tmp_path, configured)
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    await _get(one)
    await _get(two)  # the token replica one obtained
    assert len(auth_server.token_requests) == 1

    auth_server.expire(auth_server.issued[0])  # revoked early at the provider
    problem = await _get(two, 502, "?fresh=true")
    assert problem["type"] == "/problems/upstream-auth-failed"
    await _get(two, 200, "?fresh=true")  # refreshed with the rotated token, not the dead one

    [first, second] = auth_server.token_requests
    assert first.refresh_token == configured
    assert second.refresh_token not in (None, configured)
    assert second.answered == 200


async def test_needs_reauth_found_by_one_replica_stops_the_others(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
) -> None:
    revoked = auth_server.grant(oauth_user.name)
    auth_server.revoke(revoked)
    settings = _replica_settings(oauth_dovecot, auth_server, oauth_user, tmp_path, revoked)
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))

    assert (await _get(one, 503))["type"] == "/problems/mailbox-needs-reauth"
    assert (await _get(two, 503))["type"] == "/problems/mailbox-needs-reauth"
    assert len(auth_server.token_requests) == 1


async def test_a_tampered_record_in_redis_is_counted_and_refreshed_over(
    aiohttp_client: ClientFactory,
    oauth_dovecot: Dovecot,
    oauth_user: DovecotUser,
    auth_server: AuthServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _replica_settings(
        oauth_dovecot, auth_server, oauth_user, tmp_path, auth_server.grant(oauth_user.name)
    )
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    await _get(one)  # its token, stored in Redis for the other replicas
    assert len(auth_server.token_requests) == 1
    # the record's Redis key, as the app names it (a key from the cache secret)
    assert settings.cache_secret is not None
    cache_key = hashlib.sha256(settings.cache_secret.get_secret_value().encode()).digest()
    shared = SharedRedis.connect(REDIS)
    key = RedisTokens(shared, key=cache_key).key("box")
    await shared.close()
    redis = Redis.from_url(REDIS)
    try:
        sealed = await redis.get(key)
        assert sealed is not None
        # one bit of the ciphertext flipped, in place: its seal no longer checks
        await redis.set(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), keepttl=True)

        assert _invalid(await _metrics(two)) == 0.0
        with caplog.at_level(logging.WARNING, logger="gateway.oauth"):
            await _get(two)  # the shared record refused: a refresh of its own
        assert _invalid(await _metrics(two)) >= 1.0
        assert _invalid(await _metrics(one)) == 0.0  # it never read the record
        assert len(auth_server.token_requests) == 2
        assert "failed its integrity check" in caplog.text
        # the refresh stored a record that checks again
        assert await redis.get(key) not in (None, sealed)
    finally:
        await redis.delete(key)
        await redis.aclose()
    text = await _metrics(two)
    for secret in (*auth_server.issued, auth_server.client_secret):
        assert secret not in text
    # a count with no label: no mailbox, user or key named
    assert "pop3gw_oauth_token_records_invalid_total{" not in text


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


def _invalid(metrics: str) -> float:
    [line] = [
        line
        for line in metrics.splitlines()
        if line.startswith("pop3gw_oauth_token_records_invalid_total ")
    ]
    return float(line.split()[1])


async def test_records_are_sealed_and_bound_to_their_key() -> None:
    redis = SharedRedis.connect(REDIS)
    try:
        key = secrets.token_bytes(32)
        tokens = RedisTokens(redis, key=key)
        name = "box-" + secrets.token_hex(4)
        record = TokenRecord("origin", "at-secret-token", 1.0, 2.0, "rt-secret-refresh")
        await tokens.save(name, record)

        assert await tokens.load(name) == record
        raw = await redis.client.get(tokens.key(name))
        assert b"at-secret-token" not in raw
        assert b"rt-secret-refresh" not in raw
        assert name not in tokens.key(name)
        # another secret cannot read it; moved to another key, it is refused
        assert await RedisTokens(redis, key=secrets.token_bytes(32)).load(name) is None
        other = "box-" + secrets.token_hex(4)
        await redis.client.set(tokens.key(other), raw)
        assert await tokens.load(other) is None
        assert tokens.invalid == 1
        await redis.client.delete(tokens.key(name), tokens.key(other))
    finally:
        await redis.close()


async def test_a_replica_without_redis_refreshes_on_its_own() -> None:
    redis = SharedRedis.connect("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        tokens = RedisTokens(redis, key=secrets.token_bytes(32))
        assert await tokens.lock("box", 5.0) == (True, None)
        assert await tokens.load("box") is None
        await tokens.save("box", TokenRecord("origin"))
        await tokens.unlock("box", None)
    finally:
        await redis.close()
