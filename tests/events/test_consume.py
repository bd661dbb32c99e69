"""Consume mode on a real Dovecot: a new message is deleted from the server only after every
webhook subscribed to its message.new answered 2xx, through the API's delete rule (one
DELE..QUIT transaction, done once QUIT answered +OK); a message whose delivery failed for
good stays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import ConfigError, load_settings
from gateway.events import MESSAGE_NEW, MESSAGE_REMOVED, Consumer, Deliverer, Watcher
from tests.events.receiver import Answer, Receiver, WallClock, new_secret
from tests.events.support import Start, hook, message, webhook_settings
from tests.support.api import settings_for
from tests.support.dovecot import DovecotUser


@pytest.fixture
async def receivers(wall: WallClock) -> AsyncIterator[tuple[Receiver, Receiver]]:
    crm, audit = Receiver(new_secret(), wall), Receiver(new_secret(), wall)
    await crm.start()
    await audit.start()
    yield crm, audit
    await crm.stop()
    await audit.stop()


def hooks(crm: Receiver, audit: Receiver, **audit_more: Any) -> list[dict[str, Any]]:
    return [
        hook(crm.url, crm.secret, name="crm"),
        hook(audit.url, audit.secret, name="audit", **audit_more),
    ]


async def consuming(
    start: Start, user: DovecotUser, webhooks: list[Any]
) -> tuple[Watcher, Deliverer, Consumer]:
    settings = webhook_settings(
        user.dovecot.port,
        user.name,
        user.password,
        webhooks,
        box={"watch_consume": True, "grants": ["delete"]},
    )
    _, watcher, deliverer = await start(settings)
    assert isinstance(deliverer.consumer, Consumer)
    return watcher, deliverer, deliverer.consumer


@pytest.mark.dovecot
async def test_a_message_is_deleted_once_every_endpoint_acknowledged_it(
    start: Start,
    dovecot_user: DovecotUser,
    wall: WallClock,
    receivers: tuple[Receiver, Receiver],
) -> None:
    crm, audit = receivers
    watcher, deliverer, consumer = await consuming(start, dovecot_user, hooks(crm, audit))
    dovecot_user.deliver(message("already there"))
    await watcher.poll("box")  # the baseline: what was there is never consumed
    dovecot_user.deliver(message("hand me on"))
    [event] = (await watcher.poll("box")).events
    audit.script.append(Answer(503))

    assert (await deliverer.step("crm", "box")).outcome == "delivered"
    retry = await deliverer.step("audit", "box")
    assert retry.outcome == "retry"
    assert await consumer.sweep("box") == []  # audit has not acknowledged: nothing deleted
    assert len(dovecot_user.dovecot.maildir_files(dovecot_user.name)) == 2

    assert retry.next_at is not None
    wall.now = retry.next_at
    assert (await deliverer.step("audit", "box")).outcome == "delivered"
    assert await consumer.sweep("box") == [event.data["uid"]]
    remaining = dovecot_user.dovecot.maildir_files(dovecot_user.name)
    assert [b"Subject: already there" in p.read_bytes() for p in remaining] == [True]
    assert await consumer.sweep("box") == []  # done once
    # the watcher sees it go, as any removal
    [removed] = (await watcher.poll("box")).events
    assert (removed.kind, removed.data["uid"]) == (MESSAGE_REMOVED, event.data["uid"])
    assert crm.forged == audit.forged == []


@pytest.mark.dovecot
async def test_a_message_an_endpoint_never_took_stays_on_the_server(
    start: Start, dovecot_user: DovecotUser, receivers: tuple[Receiver, Receiver]
) -> None:
    crm, audit = receivers
    # audit takes only errors: crm alone decides for message.new
    watcher, deliverer, consumer = await consuming(
        start, dovecot_user, hooks(crm, audit, kinds=["mailbox.error"])
    )
    await watcher.poll("box")
    dovecot_user.deliver(message("refused"))
    dovecot_user.deliver(message("taken"))
    refused, taken = (await watcher.poll("box")).events
    assert refused.kind == taken.kind == MESSAGE_NEW
    crm.script.append(Answer(422))  # final: dead-lettered, never acknowledged
    assert (await deliverer.step("crm", "box")).outcome == "dead"
    assert (await deliverer.step("crm", "box")).outcome == "delivered"
    assert await consumer.sweep("box") == [taken.data["uid"]]
    [left] = dovecot_user.dovecot.maildir_files(dovecot_user.name)
    assert b"refused" in left.read_bytes()


def test_consume_mode_needs_the_delete_grant_and_a_webhook() -> None:
    values = settings_for(1110, user="u", password="p").model_dump()
    boxes = values["mailboxes"]
    for box in boxes:
        box["password"] = "p"
    boxes[0].update({"watch": True, "watch_consume": True})
    with pytest.raises(ConfigError) as info:
        load_settings(mailboxes=boxes)
    text = str(info.value)
    assert 'mailboxes.0.watch_consume: deletes mail; needs grants = ["delete"]' in text
    assert "mailboxes.0.watch_consume: no webhook takes this mailbox's message.new" in text
    boxes[0]["grants"] = ["delete"]
    webhook = hook("https://h.example.com/", new_secret(), name="h")
    load_settings(mailboxes=boxes, webhooks=[webhook])
    boxes[0]["watch"] = False
    with pytest.raises(ConfigError, match="watch_consume: needs watch = true"):
        load_settings(mailboxes=boxes, webhooks=[{**webhook, "mailboxes": ["*"]}])
