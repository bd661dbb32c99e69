"""RedisHeaderCache against the real Redis, and against servers that refuse, stall or lie."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from gateway.cache import RedisHeaderCache
from gateway.cache.redis import DEFAULT_PREFIX, encode_uid
from gateway.redis import SharedRedis, redact_url
from tests.support.clock import FakeClock

from .servers import RedisProxy, ScriptedServer, StallServer, handshake_or
from .test_contract import NS, ODD_UIDS, entry

pytestmark = pytest.mark.redis

B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: One seal key for the caches of a test, as replicas sharing Redis share the cache secret.
SEAL_KEY = b"the tests' cache seal key, 32 b."


class Events(Counter[str]):
    """``on_event`` for the tests: counts each kind."""

    def __call__(self, kind: str) -> None:
        self[kind] += 1


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def make_cache(
    prefix: str, clock: FakeClock, events: Events
) -> AsyncIterator[Callable[..., RedisHeaderCache]]:
    """Build caches with this test's prefix, fake clock and event counter; all closed after."""
    made: list[RedisHeaderCache] = []

    def make(url: str, **kwargs: Any) -> RedisHeaderCache:
        options: dict[str, Any] = {
            "prefix": prefix,
            "seal_key": SEAL_KEY,  # one secret, as replicas sharing Redis have
            "clock": clock,
            "on_event": events,
            "jitter": lambda: 1.0,  # the full backoff, so the tests can step over it
        }
        options.update(kwargs)
        cache = RedisHeaderCache.from_url(url, **options)
        made.append(cache)
        return cache

    try:
        yield make
    finally:
        for cache in made:
            await cache.close()


@contextlib.asynccontextmanager
async def monitor(redis_url: str, prefix: str) -> AsyncIterator[list[str]]:
    """Yields a list that, once the block is left, holds every command (as MONITOR shows it:
    ``"MGET" "key" ...``) that mentioned ``prefix`` while the block ran."""
    seen: list[str] = []
    client = Redis.from_url(redis_url)
    try:
        async with client.monitor() as mon:
            assert mon.connection is not None
            yield seen
            marker = f"{prefix}end-of-monitor"
            await client.echo(marker)
            while True:
                raw = await mon.connection.read_response()
                line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                command = line.split("] ", 1)[-1]
                if marker in command:
                    break
                if prefix in command:
                    seen.append(command)
    finally:
        await client.aclose()


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One element per write of a (possibly pipelined) batch of commands to any server."""
    calls: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        calls.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return calls


# -- keys, values, round trips ----------------------------------------------------------------
async def test_keys_values_and_ttl_on_the_wire(
    redis_url: str, prefix: str, admin: Redis, make_cache: Callable[..., RedisHeaderCache]
) -> None:
    cache = make_cache(redis_url, ttl=1234)
    entries = {uid: entry(i) for i, uid in enumerate(ODD_UIDS)}
    await cache.set_many(NS, entries)
    # a set: SCAN may return a key twice while other tests write to the same Redis
    keys = sorted({k.decode() async for k in admin.scan_iter(match=f"{prefix}*")})
    assert len(keys) == len(ODD_UIDS)
    for uid, value in entries.items():
        key = f"{prefix}{NS}:{base64.urlsafe_b64encode(uid.encode('latin-1')).decode()}"
        key = key.rstrip("=")
        assert cache.key(NS, uid) == key
        assert key in keys
        assert B64URL.fullmatch(key.rsplit(":", 1)[1])
        raw = await admin.get(key)
        text = json.dumps(value, separators=(",", ":"))
        assert raw == cache.seal(key, text).encode()
        assert raw.endswith(text.encode())
        assert re.fullmatch(rb"[0-9a-f]{32}", raw[:32])
        assert 1200 <= await admin.ttl(key) <= 1234


async def test_default_prefix_and_repr(redis_url: str) -> None:
    cache = RedisHeaderCache.from_url(redis_url)
    try:
        assert cache.key("ns", "a") == f"{DEFAULT_PREFIX}ns:YQ"
        assert DEFAULT_PREFIX == "pop3gw:v2:hdr:"  # v2: sealed values
        assert "127.0.0.1:6379" in repr(cache)
    finally:
        await cache.close()


@given(st.text(alphabet=st.characters(max_codepoint=0xFF)))
def test_uid_encoding_is_key_safe_and_reversible(uid: str) -> None:
    encoded = encode_uid(uid)
    assert B64URL.fullmatch(encoded)
    padded = encoded + "=" * (-len(encoded) % 4)
    assert base64.urlsafe_b64decode(padded).decode("latin-1") == uid


@given(st.text(min_size=1).filter(lambda s: any(ord(c) > 0xFF for c in s)))
def test_uid_beyond_latin1_gets_its_own_spelling(uid: str) -> None:
    encoded = encode_uid(uid)
    assert encoded.startswith("~")
    assert B64URL.fullmatch(encoded[1:])


async def test_hit_and_miss_events(
    redis_url: str, make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    cache = make_cache(redis_url)
    await cache.set_many(NS, {"a": entry(1), "b": entry(2), "c": entry(3)})
    await cache.get_many(NS, ["a", "b", "c", "d", "e", "a"])
    assert events == {"hit": 3, "miss": 2}


# -- round trips ------------------------------------------------------------------------------
async def test_one_mget_per_get_many(
    redis_url: str, prefix: str, make_cache: Callable[..., RedisHeaderCache]
) -> None:
    cache = make_cache(redis_url)
    uids = [f"uid-{i}" for i in range(50)]
    await cache.set_many(NS, {u: entry(i) for i, u in enumerate(uids[:20])})
    async with monitor(redis_url, prefix) as seen:
        got = await cache.get_many(NS, uids)
    assert len(got) == 20
    assert len(seen) == 1
    assert seen[0].startswith('"MGET" ')
    assert seen[0].count(f"{prefix}{NS}:") == 50

    async with monitor(redis_url, prefix) as seen:
        await cache.get_many(NS, [])
        await cache.set_many(NS, {})
        await cache.delete_many(NS, [])
    assert seen == []

    async with monitor(redis_url, prefix) as seen:
        await cache.get_many(NS, [f"many-{i}" for i in range(2500)])
    assert [c.split(" ", 1)[0] for c in seen] == ['"MGET"'] * 3
    assert [c.count(f"{prefix}{NS}:") for c in seen] == [1000, 1000, 500]


async def test_one_round_trip_per_call(
    redis_url: str,
    prefix: str,
    make_cache: Callable[..., RedisHeaderCache],
    sends: list[int],
) -> None:
    cache = make_cache(redis_url, ttl=777)
    assert await cache.ping()  # connected: the handshake is not what is counted below
    uids = [f"uid-{i}" for i in range(50)]
    async with monitor(redis_url, prefix) as seen:
        sends.clear()
        await cache.set_many(NS, {u: entry(i) for i, u in enumerate(uids)})
        assert len(sends) == 1  # one pipeline
        await cache.get_many(NS, uids)
        assert len(sends) == 2
        await cache.delete_many(NS, uids)
        assert len(sends) == 3
    verbs = [c.split(" ", 1)[0] for c in seen]
    assert verbs == ['"SET"'] * 50 + ['"MGET"', '"DEL"']
    assert all(c.endswith('"EX" "777"') for c in seen[:50])
    assert seen[-1].count(f"{prefix}{NS}:") == 50


# -- garbage ----------------------------------------------------------------------------------
async def test_garbage_values_are_misses_and_deleted(
    redis_url: str,
    admin: Redis,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    cache = make_cache(redis_url)
    await cache.set_many(NS, {"good": entry(1)})
    garbage: dict[str, bytes] = {
        "text": b"not json",
        "list": b"[1,2]",
        "string": b'"a string"',
        "number": b"42",
        "null": b"null",
        "binary": b"\xff\xfe\x00",
        "cut": b'{"subject": "trunc',
        "deep": b"[" * 100_000 + b"]" * 100_000,
    }
    for uid, raw in garbage.items():
        await admin.set(cache.key(NS, uid), raw)
    await admin.hset(cache.key(NS, "hash"), "subject", "x")  # wrong type: MGET says nil

    got = await cache.get_many(NS, ["good", *garbage, "hash"])
    assert got == {"good": entry(1)}
    assert events["invalid"] == len(garbage)  # none of them carries our seal
    assert events["miss"] == len(garbage) + 1
    for uid in garbage:
        assert await admin.exists(cache.key(NS, uid)) == 0
    assert await admin.exists(cache.key(NS, "hash")) == 1  # not ours to judge: left alone
    # garbage is not an outage: the next call still asks Redis
    assert await cache.get_many(NS, ["good"]) == {"good": entry(1)}
    assert events["hit"] == 2


async def test_values_written_or_moved_by_someone_else_are_never_shown(
    redis_url: str,
    admin: Redis,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    """Anyone who can write to Redis cannot make a listing show their subject or sender:
    not with a value of their own, not with one sealed by another key, and not by moving
    another mailbox's genuine value under this mailbox's key."""
    cache = make_cache(redis_url)
    await cache.set_many("other-mailbox", {"u": entry(1)})
    genuine = await admin.get(cache.key("other-mailbox", "u"))
    text = json.dumps({"s": "Your invoice: pay at evil.example"}, separators=(",", ":"))
    stranger = make_cache(redis_url, seal_key=b"someone else's key, 32 bytes...")
    planted = {
        "moved": genuine,  # a real value, under another key
        "plain": text.encode(),  # no seal at all
        "foreign": stranger.seal(cache.key(NS, "foreign"), text).encode(),
        "zeros": b"0" * 32 + text.encode(),
    }
    for uid, raw in planted.items():
        await admin.set(cache.key(NS, uid), raw)
    assert await cache.get_many(NS, list(planted)) == {}
    assert events["invalid"] == len(planted)
    for uid in planted:
        assert await admin.exists(cache.key(NS, uid)) == 0  # deleted, not left to retry
    assert await cache.get_many("other-mailbox", ["u"]) == {"u": entry(1)}  # still good


async def test_a_sealed_value_that_is_not_json_is_an_error(
    redis_url: str,
    admin: Redis,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    cache = make_cache(redis_url)
    key = cache.key(NS, "x")
    await admin.set(key, cache.seal(key, "[1,2]"))
    assert await cache.get_many(NS, ["x"]) == {}
    assert events["error"] == 1
    assert "invalid" not in events


def test_the_seal_key_must_be_a_real_key() -> None:
    with pytest.raises(ValueError, match="seal_key"):
        RedisHeaderCache(SharedRedis("redis://127.0.0.1:6379/0"), seal_key=b"short")


async def test_entries_that_are_not_json_are_not_stored(
    redis_url: str, make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    cache = make_cache(redis_url)
    bad: dict[str, Any] = {"x": object()}
    not_a_dict: Any = ["a", "list"]
    entries = {"bad": bad, "nan": {"x": float("nan")}, "list": not_a_dict, "good": entry(1)}
    await cache.set_many(NS, entries)
    assert await cache.get_many(NS, entries) == {"good": entry(1)}
    assert events["error"] == 3


# -- Redis unreachable ------------------------------------------------------------------------
async def test_unreachable_redis_costs_nothing_during_backoff(
    refused_port: int,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
    clock: FakeClock,
    sends: list[int],
) -> None:
    url = f"redis://127.0.0.1:{refused_port}/0"
    cache = make_cache(url, backoff_initial=1.0, backoff_max=4.0)
    assert await cache.get_many(NS, ["a", "b"]) == {}
    assert events == {"error": 1, "miss": 2}
    assert "backing off" in repr(cache)

    started = time.monotonic()
    for _ in range(200):
        assert await cache.get_many(NS, ["a"]) == {}
        await cache.set_many(NS, {"a": entry(1)})
        await cache.delete_many(NS, ["a"])
    assert time.monotonic() - started < 2.0  # generous: no I/O happens at all
    assert events["error"] == 1
    assert sends == []  # never got as far as sending a command

    # backoff: 1 s, then 2 s, then 4 s (capped)
    for backoff in (1.0, 2.0, 4.0, 4.0):
        clock.advance(backoff - 0.001)
        await cache.get_many(NS, ["a"])
        errors = events["error"]
        clock.advance(0.001)
        await cache.get_many(NS, ["a"])
        assert events["error"] == errors + 1
    assert "reconnect" not in events


async def test_unix_socket_that_does_not_exist(
    tmp_path: Any, make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    cache = make_cache(f"unix://{tmp_path}/redis.sock?db=0")
    assert await cache.get_many(NS, ["a"]) == {}
    await cache.set_many(NS, {"a": entry(1)})
    assert events["error"] == 1
    assert not await cache.ping()


async def test_tls_to_a_server_that_never_answers(
    make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    async with StallServer() as server:
        cache = make_cache(f"rediss://127.0.0.1:{server.port}/0", timeout=0.2, connect_timeout=0.2)
        started = time.monotonic()
        assert await cache.get_many(NS, ["a"]) == {}
        assert time.monotonic() - started < 3.0
    assert events["error"] == 1


# -- Redis stalls -----------------------------------------------------------------------------
async def test_stalled_redis_times_out_then_is_left_alone(
    make_cache: Callable[..., RedisHeaderCache], events: Events, clock: FakeClock
) -> None:
    async with StallServer() as server:
        cache = make_cache(server.url(), timeout=0.2, connect_timeout=0.2)
        started = time.monotonic()
        assert await cache.get_many(NS, ["a", "b"]) == {}
        assert time.monotonic() - started < 3.0  # bounded by 0.4 s; generous for slow CI
        assert events == {"error": 1, "miss": 2}
        assert server.accepted == 1

        started = time.monotonic()
        for _ in range(50):
            assert await cache.get_many(NS, ["a"]) == {}
            await cache.set_many(NS, {"a": entry(1)})
        assert time.monotonic() - started < 2.0
        assert server.accepted == 1
        assert events["error"] == 1

        # after the backoff, concurrent requests send one probe, not a stampede
        clock.advance(1.0)
        results = await asyncio.gather(*(cache.get_many(NS, ["a"]) for _ in range(20)))
        assert results == [{}] * 20
        assert server.accepted == 2
        assert events["error"] == 2


async def test_writes_to_a_stalled_redis_are_dropped(
    make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    async with StallServer() as server:
        cache = make_cache(server.url(), timeout=0.2, connect_timeout=0.2)
        await cache.set_many(NS, {"a": entry(1)})
        assert events == {"error": 1}


async def test_a_timed_out_reply_is_never_read_as_the_next_one(
    redis_url: str,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
    clock: FakeClock,
) -> None:
    direct = make_cache(redis_url)
    await direct.set_many(NS, {"a": entry(1), "b": entry(2)})
    async with RedisProxy() as proxy:
        await proxy.serve()
        cache = make_cache(proxy.url(), timeout=0.2, connect_timeout=0.2, max_connections=1)
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}
        proxy.hold_replies()
        assert await cache.get_many(NS, ["b"]) == {}  # Redis answered; the reply is held
        assert events["error"] == 1
        proxy.release_replies()
        clock.advance(1.0)
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}
        assert await cache.get_many(NS, ["b"]) == {"b": entry(2)}
        assert events["reconnect"] == 1
        assert proxy.accepted == 2  # the connection that timed out was dropped, not reused


# -- recovery ---------------------------------------------------------------------------------
async def test_recovery_when_redis_comes_back(
    redis_url: str,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
    clock: FakeClock,
) -> None:
    direct = make_cache(redis_url)
    async with RedisProxy() as proxy:
        cache = make_cache(proxy.url())
        assert await cache.get_many(NS, ["a"]) == {}  # refused
        await cache.set_many(NS, {"a": entry(1)})  # dropped (backing off)
        assert events["error"] == 1

        await proxy.serve()
        await cache.set_many(NS, {"a": entry(1)})  # still backing off: dropped
        assert await direct.get_many(NS, ["a"]) == {}

        clock.advance(1.0)
        await cache.set_many(NS, {"a": entry(1)})
        assert events["reconnect"] == 1
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}
        assert await direct.get_many(NS, ["a"]) == {"a": entry(1)}
        assert events["error"] == 1
        assert events["reconnect"] == 1
        assert "up" in repr(cache)


async def test_ping(
    redis_url: str,
    refused_port: int,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    assert await make_cache(redis_url).ping() is True
    assert await make_cache(f"redis://127.0.0.1:{refused_port}").ping() is False
    assert events == {}  # a readiness probe is not traffic

    async with RedisProxy() as proxy:
        cache = make_cache(proxy.url())
        await cache.get_many(NS, ["a"])
        assert events["error"] == 1
        assert await cache.ping() is False
        await proxy.serve()
        assert await cache.ping() is True  # ends the backoff early
        assert events["reconnect"] == 1
        await cache.set_many(NS, {"a": entry(1)})
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}


# -- bounds and lifecycle ---------------------------------------------------------------------
async def test_pool_is_bounded(
    redis_url: str, make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    direct = make_cache(redis_url)
    await direct.set_many(NS, {"a": entry(1)})
    async with RedisProxy() as proxy:
        await proxy.serve()
        cache = make_cache(proxy.url(), max_connections=2, timeout=2.0)
        results = await asyncio.gather(*(cache.get_many(NS, ["a"]) for _ in range(30)))
        assert results == [{"a": entry(1)}] * 30
        assert proxy.accepted <= 2
    assert "error" not in events


async def test_close(redis_url: str, make_cache: Callable[..., RedisHeaderCache]) -> None:
    cache = make_cache(redis_url)
    await cache.set_many(NS, {"a": entry(1)})
    await cache.close()
    assert "closed" in repr(cache)
    assert await cache.get_many(NS, ["a"]) == {}
    assert await cache.ping() is False
    await cache.close()


async def test_a_failing_metric_does_not_fail_the_cache(
    redis_url: str, make_cache: Callable[..., RedisHeaderCache]
) -> None:
    def broken(kind: str) -> None:
        raise RuntimeError(kind)

    cache = make_cache(redis_url, on_event=broken)
    await cache.set_many(NS, {"a": entry(1)})
    assert await cache.get_many(NS, ["a", "b"]) == {"a": entry(1)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": 1.5}, "ttl"),
        ({"timeout": 0}, "timeouts"),
        ({"connect_timeout": -1}, "timeouts"),
        ({"max_connections": 0}, "max_connections"),
        ({"backoff_initial": 5, "backoff_max": 1}, "backoff"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisHeaderCache.from_url("redis://127.0.0.1:6379", **kwargs)


# -- secrets ----------------------------------------------------------------------------------
SECRET = "S3cr3t/pa ss"
SECRET_IN_URL = "S3cr3t%2Fpa%20ss"


def assert_no_secret(text: str) -> None:
    for spelling in (SECRET, SECRET_IN_URL, "S3cr3t"):
        assert spelling not in text


async def test_password_never_in_repr_or_logs(
    make_cache: Callable[..., RedisHeaderCache],
    refused_port: int,
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with StallServer() as server:
        urls = [
            server.url(f"user:{SECRET_IN_URL}@"),
            f"redis://:{SECRET_IN_URL}@127.0.0.1:{refused_port}/0",
            f"rediss://admin:{SECRET_IN_URL}@127.0.0.1:{refused_port}/0",
            f"unix:///nonexistent/redis.sock?db=0&password={SECRET_IN_URL}",
        ]
        for url in urls:
            cache = make_cache(url, timeout=0.2, connect_timeout=0.2)
            assert_no_secret(repr(cache))
            assert_no_secret(str(cache))
            await cache.get_many(NS, ["a"])
            await cache.set_many(NS, {"a": entry(1)})
            assert not await cache.ping()
            clock.advance(60)  # past the backoff and the log rate limit
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) >= len(urls)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert record.exc_info is None or record.levelno < logging.WARNING


def test_bad_url_error_hides_the_password() -> None:
    for url in (
        f"redis://:{SECRET_IN_URL}@127.0.0.1:notaport/0",
        f"http://user:{SECRET_IN_URL}@127.0.0.1:6379/0",
        f"redis://:{SECRET_IN_URL}@127.0.0.1:6379/0?socket_timeout=soon",
    ):
        with pytest.raises(ValueError, match="invalid redis URL") as caught:
            RedisHeaderCache.from_url(url)
        assert_no_secret(str(caught.value))
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None


def test_redact_url() -> None:
    assert redact_url("redis://u:p@h:1/2?password=x") == "redis://***@h:1/2?..."
    assert redact_url("redis://[::1]:6379") == "redis://[::1]:6379"
    assert redact_url("unix:///run/redis.sock?password=x") == "unix:///run/redis.sock?..."


async def test_warnings_are_rate_limited(
    redis_url: str,
    admin: Redis,
    make_cache: Callable[..., RedisHeaderCache],
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
) -> None:
    cache = make_cache(redis_url)
    caplog.set_level(logging.WARNING, logger="gateway.cache")
    for _ in range(5):
        await admin.set(cache.key(NS, "x"), b"garbage")
        await cache.get_many(NS, ["x"])
        clock.advance(1)
    assert len(caplog.records) == 1
    clock.advance(10)
    await admin.set(cache.key(NS, "x"), b"garbage")
    await cache.get_many(NS, ["x"])
    assert len(caplog.records) == 2
    assert "4 similar suppressed" in caplog.records[1].getMessage()


async def test_a_cancelled_call_leaves_the_next_one_clean(
    redis_url: str, make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    direct = make_cache(redis_url)
    await direct.set_many(NS, {"a": entry(1), "b": entry(2)})
    async with RedisProxy() as proxy:
        await proxy.serve()
        cache = make_cache(proxy.url(), timeout=5.0, max_connections=1)
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}
        proxy.hold_replies()
        pending = asyncio.create_task(cache.get_many(NS, ["b"]))
        await asyncio.sleep(0.1)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending  # the caller's cancellation is not swallowed
        proxy.release_replies()
        assert await cache.get_many(NS, ["a"]) == {"a": entry(1)}
        assert await cache.get_many(NS, ["b"]) == {"b": entry(2)}
    assert "error" not in events


# -- a server that answers, but not what Redis would ------------------------------------------
def mget_reply(command: list[bytes], element: bytes) -> bytes:
    return b"*%d\r\n" % (len(command) - 1) + element * (len(command) - 1)


@pytest.mark.parametrize(
    ("mget", "kind"),
    [
        (lambda c: b"-ERR something went wrong\r\n", "an error reply"),
        (lambda c: b"-LOADING Redis is loading the dataset in memory\r\n", "loading"),
    ],
)
async def test_replies_that_make_no_sense_are_an_outage(
    mget: Callable[[list[bytes]], bytes],
    kind: str,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    async with ScriptedServer(handshake_or(mget)) as server:
        cache = make_cache(server.url(), timeout=0.5)
        assert await cache.get_many(NS, ["a", "b"]) == {}, kind
        assert events == {"error": 1, "miss": 2}
        asked = len(server.commands)
        assert await cache.get_many(NS, ["a", "b"]) == {}
        assert len(server.commands) == asked  # backing off


@pytest.mark.parametrize(
    ("mget", "kind"),
    [
        (lambda c: b"*1\r\n$-1\r\n", "too few values"),
        (lambda c: b"+OK\r\n", "not an array"),
    ],
)
async def test_replies_of_the_wrong_shape_cost_the_cache_only(
    mget: Callable[[list[bytes]], bytes],
    kind: str,
    make_cache: Callable[..., RedisHeaderCache],
    events: Events,
) -> None:
    """Redis answered, with something that does not fit the question (a proxy in between,
    say): the cache does without it for this call, and the shared client does not back off
    (the replica gate, which shares it, is not held back for the cache's trouble)."""
    async with ScriptedServer(handshake_or(mget)) as server:
        cache = make_cache(server.url(), timeout=0.5)
        assert await cache.get_many(NS, ["a", "b"]) == {}, kind
        assert events == {"error": 1, "miss": 2}
        asked = len(server.commands)
        assert await cache.get_many(NS, ["a", "b"]) == {}
        assert len(server.commands) == asked + 1  # asked again: no backoff
        assert "backing off" not in repr(cache)


async def test_values_that_are_not_strings_are_garbage(
    make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    def answer(command: list[bytes]) -> bytes:
        if command[0] == b"MGET":
            return mget_reply(command, b":5\r\n")
        return b":%d\r\n" % (len(command) - 1)

    async with ScriptedServer(handshake_or(answer)) as server:
        cache = make_cache(server.url())
        assert await cache.get_many(NS, ["a", "b"]) == {}
        assert events == {"invalid": 2, "miss": 2}  # not a sealed string
        assert server.commands[-1] == [
            b"DEL",
            cache.key(NS, "a").encode(),
            cache.key(NS, "b").encode(),
        ]


async def test_refused_writes_are_dropped(
    make_cache: Callable[..., RedisHeaderCache], events: Events
) -> None:
    def answer(command: list[bytes]) -> bytes:
        return b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"

    async with ScriptedServer(handshake_or(answer)) as server:
        cache = make_cache(server.url())
        await cache.set_many(NS, {"a": entry(1), "b": entry(2)})
        assert events == {"error": 1}
        assert [c[0] for c in server.commands[-2:]] == [b"SET", b"SET"]


async def test_ping_wants_pong(make_cache: Callable[..., RedisHeaderCache]) -> None:
    async with ScriptedServer(handshake_or(lambda c: b"+NOT PONG\r\n")) as server:
        assert await make_cache(server.url()).ping() is False


async def test_concurrent_failures_back_off_once(
    make_cache: Callable[..., RedisHeaderCache], events: Events, clock: FakeClock
) -> None:
    async with StallServer() as server:
        cache = make_cache(server.url(), timeout=0.2, connect_timeout=0.2)
        results = await asyncio.gather(*(cache.get_many(NS, ["a"]) for _ in range(5)))
        assert results == [{}] * 5
        assert events["error"] == 5
        assert server.accepted == 5
        clock.advance(1.0)  # the first backoff, not one doubled per failed call
        await cache.get_many(NS, ["a"])
        assert server.accepted == 6
