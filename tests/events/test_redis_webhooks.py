"""Webhooks with Redis: consumer groups shared by replicas. A replica killed in the middle
of a delivery leaves it pending; another claims it (XAUTOCLAIM) and delivers it, under the
same event id. A Redis restart loses neither a delivery nor a dead letter."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.events import (
    Consumer,
    Deliverer,
    EventLogUnavailableError,
    RedisConsumeStore,
    RedisDeliveryStore,
)
from gateway.events.redis_delivery import dead_key, group
from gateway.events.redis_log import key
from tests.events.receiver import Answer, Receiver, WallClock
from tests.events.support import (
    ADMIN_KEY,
    Hooked,
    PrivateRedis,
    Start,
    add,
    hook,
    webhook_settings,
)
from tests.support.api import bearer, checked
from tests.support.fakepop3 import Drop, FakePOP3Server

pytestmark = pytest.mark.redis
SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def names() -> AsyncIterator[tuple[str, str]]:
    """A mailbox id and an endpoint name of the test's own; their keys go afterwards."""
    tag = uuid.uuid4().hex[:10]
    mailbox, endpoint = f"wh-{tag}", f"hook-{tag}"
    yield mailbox, endpoint
    admin = Redis.from_url(SHARED)
    try:
        found = [k async for k in admin.scan_iter(match=f"pop3gw:v1:ev:{{{mailbox}}}:*")]
        await admin.delete(dead_key(endpoint), *found)
    finally:
        await admin.aclose()


#: starts a replica (see the ``replica`` fixture)
Replica = Callable[..., Awaitable[Hooked]]


@pytest.fixture
def replica(
    start: Start, server: FakePOP3Server, receiver: Receiver, names: tuple[str, str]
) -> Replica:
    """Starts a replica: a gateway on Redis (``redis_url``: the shared one unless given)
    whose webhook ``names[1]`` takes the events of mailbox ``names[0]`` (on the fake server)
    to the receiver; ``timeout`` is its attempts' (short: a lease of 3 lapses within a
    second and a half), ``extra`` more settings. Every replica has the same configuration,
    as replicas of one deployment do."""

    async def started(redis_url: str = SHARED, *, timeout: float = 0.5, **extra: Any) -> Hooked:
        mailbox, endpoint = names
        hooks = [hook(receiver.url, receiver.secret, name=endpoint, mailboxes=[mailbox])]
        settings = webhook_settings(
            server.port,
            "alice",
            "pw",
            hooks,
            mailbox_id=mailbox,
            redis_url=redis_url,
            cache_secret="webhook-test-secret",
            timeouts={"connect": 2, "tls": 2, "command": 1, "idle": 1},
            delivery={"timeout": timeout},
            **extra,
        )
        return await start(settings)

    return started


async def until_not_elsewhere(deliverer: Deliverer, endpoint: str, mailbox: str) -> Any:
    """Step until this replica holds the pair (the other's lease lapsed)."""
    for _ in range(400):
        result = await deliverer.step(endpoint, mailbox)
        if result.outcome != "elsewhere":
            return result
        await asyncio.sleep(0.01)
    raise AssertionError("the lease never lapsed")


async def test_a_replica_killed_mid_delivery_leaves_it_to_another(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    a, b = await replica(), await replica()
    watcher, da, db = a.watcher, a.deliverer, b.deliverer
    await watcher.poll(mailbox)
    add(server, "uid-1")
    add(server, "uid-2")
    first, second = (await watcher.poll(mailbox)).events

    stuck = Answer(204, hold=asyncio.Event())
    receiver.script.append(stuck)
    dying = asyncio.get_running_loop().create_task(da.step(endpoint, mailbox))
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    # replica a dies in the middle of the delivery: never answers, renews nor releases
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    store_a = da.store
    assert isinstance(store_a, RedisDeliveryStore)
    store_a.held.clear()
    redis = Redis.from_url(SHARED)
    try:
        pending = await redis.xpending(key(mailbox, "log"), group(endpoint))
        assert pending["pending"] == 1  # a's, left behind

        result = await until_not_elsewhere(db, endpoint, mailbox)
        assert (result.outcome, result.event_id) == ("delivered", first.id)
        assert (await db.step(endpoint, mailbox)).outcome == "delivered"
        assert (await db.step(endpoint, mailbox)).outcome == "idle"
        pending = await redis.xpending(key(mailbox, "log"), group(endpoint))
        assert pending["pending"] == 0
    finally:
        await redis.aclose()
        assert stuck.hold is not None
        stuck.hold.set()
    # the first event twice (the receiver may have seen it from the dead replica), under one
    # id; nothing lost, in order
    assert [r.webhook_id for r in receiver.got] == [first.id, first.id, second.id]
    assert receiver.delivered() == [first.id, first.id, second.id]
    assert receiver.forged == []


async def test_a_retry_schedule_is_shared_by_replicas(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    wall: WallClock,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    a, b = await replica(), await replica()
    watcher, da, db = a.watcher, a.deliverer, b.deliverer
    await watcher.poll(mailbox)
    add(server, "uid-1")
    [event] = (await watcher.poll(mailbox)).events
    receiver.script.append(Answer(503))
    first = await da.step(endpoint, mailbox)
    assert first.outcome == "retry"
    await da.store.release_all()  # a shuts down: b takes over at once
    waiting = await db.step(endpoint, mailbox)
    assert (waiting.outcome, waiting.next_at) == ("waiting", first.next_at)
    assert first.next_at is not None
    wall.now = first.next_at
    assert (await db.step(endpoint, mailbox)).outcome == "delivered"
    assert receiver.delivered() == [event.id]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def test_a_redis_restart_loses_no_delivery_and_no_dead_letter(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    names: tuple[str, str],
    private_redis: PrivateRedis,
) -> None:
    mailbox, endpoint = names
    client, watcher, deliverer = await replica(private_redis.url)
    path = f"/v1/webhooks/{endpoint}/failed"
    await watcher.poll(mailbox)
    add(server, "uid-1")
    add(server, "uid-2")
    first, second = (await watcher.poll(mailbox)).events
    receiver.script.append(Answer(404))  # final: the first goes to the dead letters
    assert (await deliverer.step(endpoint, mailbox)).outcome == "dead"

    private_redis.stop()
    assert (await deliverer.step(endpoint, mailbox)).outcome == "unavailable"
    problem = await checked(await client.get(path, headers=bearer(ADMIN_KEY)), 503)
    assert problem["type"] == "/problems/events-unavailable"
    private_redis.start()

    result = await deliverer.step(endpoint, mailbox)
    assert (result.outcome, result.event_id) == ("delivered", second.id)
    failed = await checked(await client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert [d["event"]["id"] for d in failed["failed"]] == [first.id]
    retried = await checked(
        await client.post(f"{path}/{first.id}/retry", headers=bearer(ADMIN_KEY)), 200
    )
    assert retried["delivered"] is True
    after = await checked(await client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert after["total"] == 0
    assert receiver.delivered() == [second.id, first.id]
    assert receiver.forged == []


async def test_a_replica_that_dies_retrying_a_dead_letter_leaves_it_listed(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    # a's attempt outlasts anything the test does while it is in flight
    a, b = await replica(timeout=30), await replica()
    watcher, da = a.watcher, a.deliverer
    await watcher.poll(mailbox)
    add(server, "uid-1")
    [event] = (await watcher.poll(mailbox)).events
    receiver.script.append(Answer(404))  # final: a dead letter
    assert (await da.step(endpoint, mailbox)).outcome == "dead"
    path = f"/v1/webhooks/{endpoint}/failed"
    buried = await checked(await b.client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert (buried["total"], buried["failed"][0]["attempts"]) == (1, 1)

    # replica a retries it; the receiver takes the request and a dies before the answer
    stuck = Answer(204, hold=asyncio.Event())
    receiver.script.append(stuck)
    receiver.arrived.clear()
    dying = asyncio.get_running_loop().create_task(da.retry_dead(endpoint, event.id))
    redis = Redis.from_url(SHARED)
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        # what a crash now leaves: the dead letter, as it was, for any replica to list
        during = await checked(await b.client.get(path, headers=bearer(ADMIN_KEY)), 200)
        assert during == buried
        assert await redis.xlen(dead_key(endpoint)) == 1
        dying.cancel()  # a dies: nothing after the attempt runs
        with contextlib.suppress(asyncio.CancelledError):
            await dying
        after = await checked(await b.client.get(path, headers=bearer(ADMIN_KEY)), 200)
        assert after == buried
        [(entry, _)] = await redis.xrange(dead_key(endpoint))

        # replica b retries it: refused, it is replaced by one counting the attempt (one
        # entry, a new one); then taken, it goes
        receiver.script.append(Answer(503))
        failed = await checked(
            await b.client.post(f"{path}/{event.id}/retry", headers=bearer(ADMIN_KEY)), 200
        )
        assert (failed["delivered"], failed["attempts"]) == (False, 2)
        [(replaced, _)] = await redis.xrange(dead_key(endpoint))
        assert replaced != entry
        again = await checked(await b.client.get(path, headers=bearer(ADMIN_KEY)), 200)
        assert again["total"] == 1
        assert (again["failed"][0]["attempts"], again["failed"][0]["last_status"]) == (2, 503)
        retried = await checked(
            await b.client.post(f"{path}/{event.id}/retry", headers=bearer(ADMIN_KEY)), 200
        )
        assert (retried["delivered"], retried["attempts"]) == (True, 3)
        assert await redis.xlen(dead_key(endpoint)) == 0
    finally:
        await redis.aclose()
        assert stuck.hold is not None
        stuck.hold.set()
    gone = await checked(await b.client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert (gone["total"], gone["failed"]) == (0, [])
    # the 404, a's attempt (which the receiver may have taken: a died first), the 503 and
    # b's delivery: all under one id
    assert [(r.webhook_id, r.status) for r in receiver.got] == [
        (event.id, 404),
        (event.id, 204),
        (event.id, 503),
        (event.id, 204),
    ]
    assert receiver.forged == []


async def test_consume_mode_deletes_only_after_quit_answered_ok(
    replica: Replica,
    server: FakePOP3Server,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    _, watcher, deliverer = await replica(box={"watch_consume": True, "grants": ["delete"]})
    consumer = deliverer.consumer
    assert isinstance(consumer, Consumer)
    assert isinstance(consumer.store, RedisConsumeStore)
    await watcher.poll(mailbox)
    add(server, "uid-1")
    [event] = (await watcher.poll(mailbox)).events
    assert (await deliverer.step(endpoint, mailbox)).outcome == "delivered"
    # the connection drops instead of QUIT's answer: not acknowledged, nothing removed
    quit_fault = server.script("QUIT", Drop(), times=None)
    assert await consumer.sweep(mailbox) == []
    assert quit_fault.fired
    assert "uid-1" in server.mailbox.uids()
    server.rules.remove(quit_fault)
    # still due: the next sweep deletes it
    assert await consumer.sweep(mailbox) == [event.data["uid"]]
    assert server.mailbox.uids() == ["uid-0"]
    assert await consumer.sweep(mailbox) == []


async def test_a_consumer_group_redis_lost_is_made_again_and_nothing_is_missed(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    a, b = await replica(), await replica()
    watcher, da, db = a.watcher, a.deliverer, b.deliverer
    await watcher.poll(mailbox)
    assert (await da.step(endpoint, mailbox)).outcome == "idle"  # a holds the pair
    redis = Redis.from_url(SHARED)
    try:
        # the holder reads: the group is gone (Redis lost it), made again from the start
        add(server, "uid-1")
        [first] = (await watcher.poll(mailbox)).events
        assert await redis.xgroup_destroy(key(mailbox, "log"), group(endpoint)) == 1
        assert (await da.step(endpoint, mailbox)).outcome == "delivered"
        # a new holder claims what is pending: the group is gone then too
        add(server, "uid-2")
        [second] = (await watcher.poll(mailbox)).events
        await da.store.release_all()
        assert await redis.xgroup_destroy(key(mailbox, "log"), group(endpoint)) == 1
        steps = [await db.step(endpoint, mailbox) for _ in range(3)]
        assert [(s.outcome, s.event_id) for s in steps] == [
            ("delivered", first.id),
            ("delivered", second.id),
            ("idle", None),
        ]
        groups = await redis.xinfo_groups(key(mailbox, "log"))
        assert [g["name"] for g in groups] == [group(endpoint).encode()]
    finally:
        await redis.aclose()
    # at least once, in order: what was in the Stream when the group went is sent again
    assert receiver.delivered() == [first.id, first.id, second.id]
    assert receiver.forged == []


async def test_new_events_are_announced_to_every_replicas_queues(
    replica: Replica,
    server: FakePOP3Server,
    names: tuple[str, str],
) -> None:
    mailbox, _ = names
    a, b = await replica(), await replica()
    watcher, store_b = a.watcher, b.deliverer.store
    assert isinstance(store_b, RedisDeliveryStore)
    await watcher.poll(mailbox)  # the baseline: no events
    await store_b.changed()  # where the announcements end
    assert mailbox not in await store_b.changed()
    add(server, "uid-1")
    assert len((await watcher.poll(mailbox)).events) == 1  # on replica a
    assert mailbox in await store_b.changed()
    assert mailbox not in await store_b.changed()  # once


async def test_a_delivery_of_a_new_event_reads_its_queue_once(
    replica: Replica,
    server: FakePOP3Server,
    names: tuple[str, str],
    tmp_path: Path,
) -> None:
    # round trips per delivery are what bounds the deliveries per second (make bench)
    mailbox, endpoint = names
    redis = PrivateRedis(tmp_path)
    redis.start()
    admin = Redis.from_url(redis.url)
    try:
        _, watcher, da = await replica(redis.url)
        await watcher.poll(mailbox)
        assert (await da.step(endpoint, mailbox)).outcome == "idle"  # nothing of ours pending
        for uid in ("uid-1", "uid-2", "uid-3"):
            add(server, uid)
        events = (await watcher.poll(mailbox)).events
        await admin.config_resetstat()
        steps = [await da.step(endpoint, mailbox) for _ in range(3)]
        assert [(s.outcome, s.event_id) for s in steps] == [("delivered", e.id) for e in events]
        stats = await admin.info("commandstats")
        assert stats["cmdstat_xreadgroup"]["calls"] == 3
        assert "cmdstat_hgetall" not in stats  # a new event has no retry state to read
    finally:
        await admin.aclose()
        redis.stop()


async def test_an_acknowledgement_that_failed_is_followed_by_the_same_event(
    replica: Replica,
    server: FakePOP3Server,
    receiver: Receiver,
    names: tuple[str, str],
) -> None:
    mailbox, endpoint = names
    _, watcher, da = await replica()
    store = da.store
    assert isinstance(store, RedisDeliveryStore)
    await watcher.poll(mailbox)
    assert (await da.step(endpoint, mailbox)).outcome == "idle"
    add(server, "uid-1")
    add(server, "uid-2")
    first, second = (await watcher.poll(mailbox)).events
    call = store._call

    async def ack_fails(what: str, *args: Any, **kwargs: Any) -> Any:
        if what == "webhook ack":
            raise EventLogUnavailableError("Redis went away")
        return await call(what, *args, **kwargs)

    store._call = ack_fails  # type: ignore[method-assign]
    assert (await da.step(endpoint, mailbox)).outcome == "unavailable"  # sent, not acked
    store._call = call  # type: ignore[method-assign]
    steps = [await da.step(endpoint, mailbox) for _ in range(3)]
    # the first again (still pending), then the second: in order, nothing skipped
    assert [(s.outcome, s.event_id) for s in steps] == [
        ("delivered", first.id),
        ("delivered", second.id),
        ("idle", None),
    ]
    assert receiver.delivered() == [first.id, first.id, second.id]
