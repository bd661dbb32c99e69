"""Watching a mailbox on a real Dovecot: the baseline, new and removed mail, a mailbox
wiped and refilled, stable event ids, bounded polls. The watcher is driven poll by poll."""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import create_app
from gateway.events import (
    MAILBOX_RESET,
    MESSAGE_NEW,
    MESSAGE_REMOVED,
    Cursor,
    Watcher,
    event_id,
)
from gateway.keys import EVENTS, WATCHER
from gateway.service import encode_id
from tests.events.support import message, watched_settings, wipe
from tests.support.api import ClientFactory
from tests.support.dovecot import DovecotUser

pytestmark = pytest.mark.dovecot


async def watcher_for(aiohttp_client: ClientFactory, user: DovecotUser, **box: object) -> Watcher:
    settings = watched_settings(user.dovecot.port, user.name, user.password, box=box)
    client = await aiohttp_client(create_app(settings, watch=False))
    return client.app[WATCHER]


async def test_first_poll_is_a_baseline_then_new_mail_is_one_event_each(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([message("old one"), message("old two")])
    watcher = await watcher_for(aiohttp_client, dovecot_user)

    first = await watcher.poll("box")
    assert (first.outcome, first.events) == ("ok", ())

    dovecot_user.deliver(message("hello there", "Bob <bob@example.com>"))
    second = await watcher.poll("box")
    assert second.outcome == "ok"
    [event] = second.events
    assert event.kind == MESSAGE_NEW
    data = event.data
    assert data["subject"] == "hello there"
    assert data["from"] == {"name": "Bob", "address": "bob@example.com"}
    assert data["message_id"] == "<hello-there@example.com>"
    assert data["size"] > 0
    assert data["id"] == encode_id(data["uid"])
    assert event.id == event_id("box", MESSAGE_NEW, data["uid"])

    # nothing new: nothing reported, the same message never twice
    third = await watcher.poll("box")
    assert (third.outcome, third.events) == ("ok", ())


async def test_removed_mail_and_cursors_in_order(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([message("a"), message("b")])
    watcher = await watcher_for(aiohttp_client, dovecot_user)
    await watcher.poll("box")
    # Dovecot moved the files to cur/ when it listed them; remove the first as another
    # client's delete would
    dovecot_user.dovecot.maildir_files(dovecot_user.name)[0].unlink()
    dovecot_user.deliver(message("c"))
    result = await watcher.poll("box")
    kinds = [e.kind for e in result.events]
    assert kinds == [MESSAGE_NEW, MESSAGE_REMOVED]
    assert result.events[0].data["subject"] == "c"
    removed = result.events[1]
    assert removed.data == {"id": encode_id(removed.data["uid"]), "uid": removed.data["uid"]}
    cursors = [e.cursor for e in result.events]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == 2


async def test_report_existing_and_ids_are_the_same_from_another_gateway(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([message("x"), message("y")])
    one = await watcher_for(aiohttp_client, dovecot_user, watch_report_existing=True)
    two = await watcher_for(aiohttp_client, dovecot_user, watch_report_existing=True)
    first = await one.poll("box")
    again = await two.poll("box")
    assert [e.data["subject"] for e in first.events] == ["x", "y"]
    # another process (a restart, a replica) names the same events the same way
    assert [e.id for e in first.events] == [e.id for e in again.events]


async def test_a_mailbox_wiped_and_refilled_is_one_reset(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    dovecot_user.deliver_many([message(f"before {i}") for i in range(5)])
    watcher = await watcher_for(aiohttp_client, dovecot_user)
    await watcher.poll("box")
    wipe(dovecot_user)
    dovecot_user.deliver_many([message(f"after {i}") for i in range(7)])
    result = await watcher.poll("box")
    [event] = result.events
    assert event.kind == MAILBOX_RESET
    assert event.data == {"previous_messages": 5, "messages": 7}
    # the new set is the seen-set now: nothing more to report
    assert (await watcher.poll("box")).events == ()
    dovecot_user.deliver(message("later"))
    [later] = (await watcher.poll("box")).events
    assert later.data["subject"] == "later"


async def test_a_poll_reports_at_most_max_changes_and_the_next_one_the_rest(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    settings = watched_settings(
        dovecot_user.dovecot.port,
        dovecot_user.name,
        dovecot_user.password,
        events={"max_changes_per_poll": 2},
    )
    client = await aiohttp_client(create_app(settings, watch=False))
    watcher = client.app[WATCHER]
    await watcher.poll("box")
    dovecot_user.deliver_many([message(f"m{i}") for i in range(5)])
    subjects: list[str] = []
    flags = []
    for _ in range(3):
        result = await watcher.poll("box")
        subjects += [e.data["subject"] for e in result.events]
        flags.append(result.more)
    assert subjects == [f"m{i}" for i in range(5)]
    assert flags == [True, True, False]
    log = client.app[EVENTS].log
    found = await log.read("box", None, 100)
    assert [e.data["subject"] for e in found.events] == subjects
    assert found.last == found.events[-1].cursor
    assert (await log.read("box", found.last, 100)).events == []
    assert isinstance(found.last, Cursor)


async def test_the_gateway_polls_watched_mailboxes_on_its_own(
    aiohttp_client: ClientFactory, dovecot_user: DovecotUser
) -> None:
    settings = watched_settings(
        dovecot_user.dovecot.port,
        dovecot_user.name,
        dovecot_user.password,
        box={"watch_interval": 1},
    )
    client = await aiohttp_client(create_app(settings))
    log = client.app[EVENTS].log
    baseline_taken = False

    async def baseline() -> None:
        nonlocal baseline_taken
        baseline_taken = (await log.state("box")).baseline

    while not baseline_taken:
        await baseline()
        await asyncio.sleep(0.05)
    dovecot_user.deliver(message("by itself"))
    found: list[str] = []
    while not found:
        found = [e.data["subject"] for e in (await log.read("box", None, 10)).events]
        await asyncio.sleep(0.05)
    assert found == ["by itself"]
