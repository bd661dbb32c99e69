"""Webhooks without Redis (the in-process queue): signed per Standard Webhooks (checked by
the ``standardwebhooks`` package in a real receiver), retried on 5xx / 429 / network errors
for days on an injected clock, final on other 4xx, in order per mailbox, dead-lettered and
replayed through the admin API, and never sent where the address policy forbids."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from gateway.app import create_app
from gateway.events import MESSAGE_NEW, Deliverer, event_id
from tests.events.receiver import Answer, Receiver, WallClock, new_secret
from tests.events.support import (
    ADMIN_KEY,
    Hooked,
    Start,
    add,
    hook,
    message,
    webhook_settings,
)
from tests.support.api import READ_KEY, ClientFactory, bearer, checked, sha
from tests.support.dovecot import DovecotUser
from tests.support.fakepop3 import FakePOP3Server

DAY = 24 * 3600.0

#: starts a gateway on the fake server whose webhook crm (box's events) goes to the receiver,
#: with its watcher's baseline taken (``delivery`` adds to the webhook_delivery settings)
Crm = Callable[..., Awaitable[Hooked]]


@pytest.fixture
def crm(start: Start, server: FakePOP3Server, receiver: Receiver) -> Crm:
    async def started(**delivery: Any) -> Hooked:
        hooks = [hook(receiver.url, receiver.secret)]
        hooked = await start(webhook_settings(server.port, "alice", "pw", hooks, delivery=delivery))
        await hooked.watcher.poll("box")  # the baseline
        return hooked

    return started


async def drive(deliverer: Deliverer, wall: WallClock, *, until: float) -> list[str]:
    """Step the pair (crm, box) as the delivery loop would, moving the clock to each retry
    instead of sleeping, until nothing is left or the clock passes ``until``; the
    outcomes."""
    outcomes = []
    for _ in range(10_000):
        result = await deliverer.step("crm", "box")
        outcomes.append(result.outcome)
        if result.outcome == "idle":
            return outcomes
        if result.outcome in ("retry", "waiting"):
            assert result.next_at is not None
            if result.next_at > until:
                return outcomes
            wall.now = max(wall.now, result.next_at)
    raise AssertionError("the pair never became idle")


@pytest.mark.dovecot
async def test_new_mail_reaches_the_receiver_signed_with_every_active_secret(
    start: Start, dovecot_user: DovecotUser, wall: WallClock
) -> None:
    old, new = new_secret(), new_secret()
    # the receiver has switched to the new secret; the gateway signs with both (rotation)
    receiver = Receiver(new, wall)
    await receiver.start()
    old_receiver = Receiver(old, wall)  # one that has not switched yet
    await old_receiver.start()
    try:
        hooks = [hook(receiver.url, old, new), hook(old_receiver.url, old, new, name="legacy")]
        user = dovecot_user
        client, watcher, deliverer = await start(
            webhook_settings(user.dovecot.port, user.name, user.password, hooks)
        )
        await watcher.poll("box")  # the baseline
        dovecot_user.deliver(message("hello there", "Bob <bob@example.com>"))
        [event] = (await watcher.poll("box")).events
        assert (await deliverer.step("crm", "box")).outcome == "delivered"
        assert (await deliverer.step("legacy", "box")).outcome == "delivered"
    finally:
        await receiver.stop()
        await old_receiver.stop()
    for got in (receiver, old_receiver):
        assert got.forged == []
        [received] = got.got
        assert received.webhook_id == event.id == event_id("box", MESSAGE_NEW, event.data["uid"])
        body = received.body
        assert body["type"] == "message.new"
        assert body["id"] == event.id
        assert body["mailbox"] == "box"
        assert body["cursor"] == str(event.cursor)
        assert body["data"]["subject"] == "hello there"
        assert body["data"]["from"] == {"name": "Bob", "address": "bob@example.com"}
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'pop3gw_webhook_deliveries_total{outcome="delivered"} 2.0' in metrics
    # no secret in the metrics, nor in the repr of what holds them
    for secret in (old, new):
        raw = secret.removeprefix("whsec_")
        assert raw not in "\n".join(metrics)
        assert raw not in repr(deliverer.endpoints)


async def test_a_receiver_down_for_three_days_gets_everything_in_order(
    crm: Crm, server: FakePOP3Server, receiver: Receiver, wall: WallClock
) -> None:
    port = receiver.port
    _, watcher, deliverer = await crm()
    await receiver.stop()  # down: connections refused
    ids = []
    for uid in ("uid-1", "uid-2", "uid-3"):
        add(server, uid)
        ids += [e.id for e in (await watcher.poll("box")).events]
    start = wall()
    outcomes = await drive(deliverer, wall, until=start + 3 * DAY - 3600)
    # retried all along, never given up, never past the first event (order)
    assert set(outcomes) == {"retry"}
    assert len(outcomes) > 60  # backoff grows to an hour: about 70 attempts in 3 days
    assert wall() > start + 2.9 * DAY
    await receiver.start(port)
    # the next attempt comes at most an hour later: then everything, in order
    outcomes = await drive(deliverer, wall, until=wall() + 3600 + 60)
    assert [o for o in outcomes if o != "waiting"] == ["delivered"] * 3 + ["idle"]
    assert receiver.delivered() == ids
    assert receiver.forged == []


async def test_500_and_429_are_retried_honouring_retry_after_and_410_is_final(
    crm: Crm, server: FakePOP3Server, receiver: Receiver, wall: WallClock
) -> None:
    client, watcher, deliverer = await crm()
    add(server, "uid-1")
    add(server, "uid-2")
    first, second = (await watcher.poll("box")).events
    receiver.script.extend(
        [
            Answer(500),
            Answer(429, {"Retry-After": "600"}),
            Answer(204),  # first delivered
            Answer(410),  # second: gone, final
        ]
    )
    now = wall()
    r1 = await deliverer.step("crm", "box")
    assert (r1.outcome, r1.event_id) == ("retry", first.id)
    assert r1.next_at is not None
    assert now + 2.5 <= r1.next_at <= now + 5
    assert (await deliverer.step("crm", "box")).outcome == "waiting"  # not due yet
    wall.now = r1.next_at
    r2 = await deliverer.step("crm", "box")
    assert r2.outcome == "retry"
    assert r2.next_at is not None
    assert r2.next_at >= wall() + 600
    wall.now = r2.next_at
    assert (await deliverer.step("crm", "box")).outcome == "delivered"
    r4 = await deliverer.step("crm", "box")
    assert (r4.outcome, r4.event_id) == ("dead", second.id)
    assert (await deliverer.step("crm", "box")).outcome == "idle"
    assert [r.webhook_id for r in receiver.got] == [first.id] * 3 + [second.id]
    assert receiver.forged == []

    # the dead letter, through the admin API
    failed = await checked(
        await client.get("/v1/webhooks/crm/failed", headers=bearer(ADMIN_KEY)), 200
    )
    assert failed["total"] == 1
    [dead] = failed["failed"]
    assert dead["event"]["id"] == second.id
    assert (dead["reason"], dead["last_status"], dead["attempts"]) == ("final", 410, 1)
    # replayed once the receiver takes it again: delivered, and out of the dead letters
    retried = await checked(
        await client.post(f"/v1/webhooks/crm/failed/{second.id}/retry", headers=bearer(ADMIN_KEY)),
        200,
    )
    assert (retried["delivered"], retried["attempts"]) == (True, 2)
    assert receiver.delivered() == [first.id, second.id]
    empty = await checked(
        await client.get("/v1/webhooks/crm/failed", headers=bearer(ADMIN_KEY)), 200
    )
    assert (empty["total"], empty["failed"]) == (0, [])
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'pop3gw_webhook_dead_letters{endpoint="crm"} 0.0' in metrics
    assert 'pop3gw_webhook_deliveries_total{outcome="retry"} 2.0' in metrics
    # the first was delivered 600 s and more after it was recorded (the test's clock)
    assert 'pop3gw_webhook_delivery_lag_seconds_bucket{le="300.0"} 0.0' in metrics
    assert "pop3gw_webhook_delivery_lag_seconds_count 1.0" in metrics
    gone = await checked(
        await client.post(f"/v1/webhooks/crm/failed/{second.id}/retry", headers=bearer(ADMIN_KEY)),
        404,
    )
    assert gone["type"] == "/problems/not-found"


async def test_retries_end_after_retry_for_in_the_dead_letters_and_a_retry_that_fails_keeps_it(
    crm: Crm, server: FakePOP3Server, receiver: Receiver, wall: WallClock
) -> None:
    client, watcher, deliverer = await crm()
    add(server, "uid-1")
    [event] = (await watcher.poll("box")).events
    receiver.script.extend(Answer(503) for _ in range(200))
    start = wall()
    outcomes = await drive(deliverer, wall, until=start + 10 * DAY)
    assert outcomes[-2:] == ["dead", "idle"]
    assert set(outcomes[:-2]) == {"retry", "waiting"} or set(outcomes[:-2]) == {"retry"}
    # retried for 72 hours, not less
    assert receiver.got[-1].timestamp - receiver.got[0].timestamp >= 72 * 3600 - 3600
    failed = await checked(
        await client.get(
            "/v1/webhooks/crm/failed", params={"limit": "5"}, headers=bearer(ADMIN_KEY)
        ),
        200,
    )
    [dead] = failed["failed"]
    assert (dead["event"]["id"], dead["reason"], dead["last_status"]) == (
        event.id,
        "exhausted",
        503,
    )
    tried = await checked(
        await client.post(f"/v1/webhooks/crm/failed/{event.id}/retry", headers=bearer(ADMIN_KEY)),
        200,
    )
    assert tried["delivered"] is False
    assert tried["attempt"]["status"] == 503
    again = await checked(
        await client.get("/v1/webhooks/crm/failed", headers=bearer(ADMIN_KEY)), 200
    )
    assert again["total"] == 1
    assert again["failed"][0]["attempts"] == dead["attempts"] + 1
    assert receiver.forged == []


async def test_a_retry_after_date_is_counted_on_the_deliverers_clock(
    crm: Crm, server: FakePOP3Server, receiver: Receiver, wall: WallClock
) -> None:
    _, watcher, deliverer = await crm()
    add(server, "uid-1")
    [event] = (await watcher.poll("box")).events
    wall.advance(3 * DAY)  # the receiver was down; it now names a date 10 minutes ahead
    when = format_datetime(datetime.fromtimestamp(wall() + 600, UTC), usegmt=True)
    receiver.script.extend([Answer(503, {"Retry-After": when}), Answer(204)])
    first = await deliverer.step("crm", "box")
    assert first.outcome == "retry"
    assert first.next_at is not None
    # that date, not an hour (the longest pause): the machine's own clock is days behind
    assert wall() + 599 <= first.next_at <= wall() + 601
    wall.now = first.next_at
    assert (await deliverer.step("crm", "box")).outcome == "delivered"
    assert receiver.delivered() == [event.id]


async def test_a_dead_letter_retry_that_raises_keeps_the_dead_letter(
    crm: Crm, server: FakePOP3Server, receiver: Receiver
) -> None:
    _, watcher, deliverer = await crm()
    add(server, "uid-1")
    [event] = (await watcher.poll("box")).events
    receiver.script.append(Answer(410))
    assert (await deliverer.step("crm", "box")).outcome == "dead"
    [before], _ = await deliverer.store.dead_letters("crm", 10)

    async def broken(*args: object) -> object:
        raise RuntimeError("the attempt broke")

    deliverer.sender.send = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await deliverer.retry_dead("crm", event.id)
    [after], total = await deliverer.store.dead_letters("crm", 10)
    assert total == 1
    assert after == before  # kept as it was: no attempt was made
    assert await deliverer.count_dead("crm") == 1


async def test_a_dead_letter_stays_listed_during_its_retry_and_a_second_retry_waits_for_it(
    crm: Crm, server: FakePOP3Server, receiver: Receiver
) -> None:
    # the attempt outlasts anything the test does while it is in flight
    _, watcher, deliverer = await crm(timeout=30)
    add(server, "uid-1")
    [event] = (await watcher.poll("box")).events
    receiver.script.append(Answer(410))
    assert (await deliverer.step("crm", "box")).outcome == "dead"
    [before], _ = await deliverer.store.dead_letters("crm", 10)

    stuck = Answer(204, hold=asyncio.Event())
    receiver.script.append(stuck)
    receiver.arrived.clear()
    loop = asyncio.get_running_loop()
    first = loop.create_task(deliverer.retry_dead("crm", event.id))
    second = None
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        # the attempt is in flight: the dead letter is still listed, as it was (a crash now
        # would leave it there)
        assert await deliverer.store.dead_letters("crm", 10) == ([before], 1)
        # a second retry of it (a double click) waits for the first instead of sending again
        second = loop.create_task(deliverer.retry_dead("crm", event.id))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert len(receiver.got) == 2
    finally:
        assert stuck.hold is not None
        stuck.hold.set()
    delivered = await first
    assert delivered is not None
    assert (delivered[0].verdict, delivered[1]) == ("delivered", 2)
    assert await second is None  # delivered by the first: no dead letter of it any more
    assert receiver.delivered() == [event.id]  # sent once by the two retries
    assert await deliverer.store.dead_letters("crm", 10) == ([], 0)
    assert await deliverer.count_dead("crm") == 0


async def test_a_slow_receiver_is_a_retry_not_a_stall(
    crm: Crm, server: FakePOP3Server, receiver: Receiver, wall: WallClock
) -> None:
    _, watcher, deliverer = await crm(timeout=0.3)
    add(server, "uid-1")
    [event] = (await watcher.poll("box")).events
    stuck = Answer(204, hold=asyncio.Event())
    receiver.script.append(stuck)
    result = await deliverer.step("crm", "box")
    assert (result.outcome, result.event_id) == ("retry", event.id)
    assert stuck.hold is not None
    stuck.hold.set()
    wall.now = result.next_at or wall.now
    assert (await deliverer.step("crm", "box")).outcome == "delivered"
    assert [r.webhook_id for r in receiver.got] == [event.id, event.id]


async def test_webhooks_to_loopback_are_refused_unless_allowed(
    start: Start, server: FakePOP3Server, receiver: Receiver
) -> None:
    hooks = [
        hook(receiver.url, receiver.secret),
        hook(f"http://localhost:{receiver.port}/hook", receiver.secret, name="named"),
    ]
    # the default policy: no allow_networks
    settings = webhook_settings(server.port, "alice", "pw", hooks, delivery={"allow_networks": []})
    client, watcher, deliverer = await start(settings)
    await watcher.poll("box")
    add(server, "uid-1")
    await watcher.poll("box")
    # an address literal, and a name that resolves to loopback (checked at connect time)
    assert (await deliverer.step("crm", "box")).outcome == "dead"
    assert (await deliverer.step("named", "box")).outcome == "dead"
    assert receiver.got == []
    for name in ("crm", "named"):
        failed = await checked(
            await client.get(f"/v1/webhooks/{name}/failed", headers=bearer(ADMIN_KEY)), 200
        )
        assert failed["failed"][0]["detail"] == "the webhook's address is not allowed"
        assert failed["failed"][0]["last_status"] is None
    text = (await (await client.get("/metrics")).text()).splitlines()
    assert 'pop3gw_webhook_deliveries_total{outcome="dead-final"} 2.0' in text
    assert 'pop3gw_webhook_dead_letters{endpoint="crm"} 1.0' in text
    assert 'pop3gw_webhook_dead_letters{endpoint="named"} 1.0' in text


async def test_the_admin_api_wants_an_admin_key(start: Start, server: FakePOP3Server) -> None:
    hooks = [hook("https://hooks.example.com/x", new_secret())]
    client, _, _ = await start(webhook_settings(server.port, "alice", "pw", hooks))
    path = "/v1/webhooks/crm/failed"
    assert (await checked(await client.get(path), 401))["type"] == "/problems/unauthorized"
    denied = await checked(await client.get(path, headers=bearer(READ_KEY)), 403)
    assert denied["type"] == "/problems/forbidden"
    unknown = await checked(
        await client.get("/v1/webhooks/nope/failed", headers=bearer(ADMIN_KEY)), 404
    )
    assert unknown["type"] == "/problems/not-found"
    bad = await checked(
        await client.get(path, params={"limit": "0"}, headers=bearer(ADMIN_KEY)), 400
    )
    assert bad["type"] == "/problems/invalid-request"
    missing = await checked(
        await client.post(
            "/v1/webhooks/crm/failed/evt_" + "a" * 32 + "/retry", headers=bearer(ADMIN_KEY)
        ),
        404,
    )
    assert missing["type"] == "/problems/not-found"


async def test_an_admin_key_of_one_mailbox_reads_no_dead_letters_of_another(
    start: Start, server: FakePOP3Server
) -> None:
    # a key with the admin scope granted mailbox "other" only; the webhook takes "box"
    tenant_key = "tenant-admin-key-0123456789"
    tenant = {"name": "tenant", "sha256": sha(tenant_key), "mailboxes": ["other"]}
    settings = webhook_settings(
        server.port,
        "alice",
        "pw",
        [hook("http://127.0.0.1:9/hook", new_secret())],
        api_keys=[{**tenant, "scopes": ["read", "admin"]}],
        delivery={"allow_networks": []},  # refused: dead-lettered at once
    )
    client, watcher, deliverer = await start(settings)
    await watcher.poll("box")
    add(server, "uid-secret-subject")
    [event] = (await watcher.poll("box")).events
    assert (await deliverer.step("crm", "box")).outcome == "dead"
    path = "/v1/webhooks/crm/failed"
    seen = await checked(await client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert seen["failed"][0]["event"]["data"]["subject"] == "uid-secret-subject"
    listed = await client.get(path, headers=bearer(tenant_key))
    assert (await checked(listed, 404))["type"] == "/problems/not-found"
    retried = await client.post(f"{path}/{event.id}/retry", headers=bearer(tenant_key))
    assert (await checked(retried, 404))["type"] == "/problems/not-found"
    # the dead letter is still there, untouched by the refused retry
    again = await checked(await client.get(path, headers=bearer(ADMIN_KEY)), 200)
    assert again["total"] == 1
    assert again["failed"][0]["attempts"] == seen["failed"][0]["attempts"]


async def test_a_running_gateway_delivers_by_itself(
    aiohttp_client: ClientFactory, server: FakePOP3Server, receiver: Receiver
) -> None:
    """The watcher and the delivery loop as ``pop3gw serve`` runs them: what a poll records
    reaches the receiver without anyone stepping anything."""
    settings = webhook_settings(
        server.port,
        "alice",
        "pw",
        [hook(receiver.url, receiver.secret)],
        box={"watch_report_existing": True, "watch_interval": 1},
    )
    client = await aiohttp_client(create_app(settings))  # its loops running
    await asyncio.wait_for(receiver.arrived.wait(), 30)
    [got] = receiver.got
    assert got.body["type"] == MESSAGE_NEW
    assert got.body["data"]["uid"] == "uid-0"
    assert got.webhook_id == event_id("box", MESSAGE_NEW, "uid-0")
    assert receiver.forged == []
    await client.close()  # the loops stop, the client session closes
