"""Failed polls: a rejected login is reported at once, a flaky server after a few polls,
once per episode, and the recovery after; a server without UIDL; new mail seen after the
failures is not lost."""

from __future__ import annotations

from gateway.app import create_app
from gateway.events import MAILBOX_ERROR, MAILBOX_RECOVERED, MESSAGE_NEW, Watcher, event_id
from gateway.keys import WATCHER
from tests.events.support import watched_settings
from tests.support.api import ClientFactory
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server

TIMEOUTS = {"connect": 2, "tls": 2, "command": 1, "idle": 1}


async def fake_watcher(aiohttp_client: ClientFactory, server: FakePOP3Server) -> Watcher:
    settings = watched_settings(
        server.port,
        "alice",
        "pw",
        timeouts=TIMEOUTS,
        pool={"retry_budget": 0.1, "max_failed_logins": 100},
    )
    client = await aiohttp_client(create_app(settings, watch=False))
    return client.app[WATCHER]


async def test_a_rejected_login_is_an_error_at_once_then_its_recovery(
    aiohttp_client: ClientFactory,
) -> None:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "old"}) as server:
        watcher = await fake_watcher(aiohttp_client, server)
        first = await watcher.poll("box")
        assert first.outcome == "failed"
        [error] = first.events
        assert error.kind == MAILBOX_ERROR
        assert error.id == event_id("box", MAILBOX_ERROR, "1")
        assert error.data["reason"] == "auth"
        assert error.data["detail"] == "the mail server rejected the configured login"
        assert error.data["failures"] == 1
        assert "old" not in str(error.data)
        assert "pw" not in str(error.data)
        # still failing: the same episode, no second error
        again = await watcher.poll("box")
        assert (again.outcome, again.events) == ("failed", ())

        server.users["alice"] = "pw"  # the operator fixed the password on the server
        box.add("uid-2", b"Subject: two\r\n\r\ny\r\n")
        healed = await watcher.poll("box")
        assert healed.outcome == "ok"
        # the first successful poll is the baseline; it reports the recovery only
        assert [e.kind for e in healed.events] == [MAILBOX_RECOVERED]
        assert healed.events[0].data["failures"] == 2
        assert healed.events[0].id == event_id("box", MAILBOX_RECOVERED, "1")


async def test_a_flaky_server_is_reported_after_error_after_failures(
    aiohttp_client: ClientFactory,
) -> None:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        watcher = await fake_watcher(aiohttp_client, server)
        assert (await watcher.poll("box")).outcome == "ok"  # baseline
        server.script("UIDL", Err("SYS/TEMP", "try later"), times=3)
        box.add("uid-2", b"Subject: two\r\n\r\ny\r\n")
        results = [await watcher.poll("box") for _ in range(3)]
        assert [r.outcome for r in results] == ["failed"] * 3
        assert [len(r.events) for r in results] == [0, 0, 1]
        error = results[2].events[0]
        assert (error.kind, error.data["reason"], error.data["failures"]) == (
            MAILBOX_ERROR,
            "sys-temp",
            3,
        )
        assert "try later" not in error.data["detail"]  # the server's words stay out
        healed = await watcher.poll("box")
        # recovery first, then the mail that came meanwhile: nothing lost
        assert [e.kind for e in healed.events] == [MAILBOX_RECOVERED, MESSAGE_NEW]
        assert healed.events[1].data["uid"] == "uid-2"
        # a later episode is another error, with an id of its own
        server.script("UIDL", Err("SYS/TEMP"), times=3)
        later = [await watcher.poll("box") for _ in range(3)]
        assert later[2].events[0].id == event_id("box", MAILBOX_ERROR, "2")


async def test_a_server_without_uidl_is_an_error_at_once(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("uid-1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}, uidl=False) as server:
        watcher = await fake_watcher(aiohttp_client, server)
        result = await watcher.poll("box")
        [error] = result.events
        assert error.data["reason"] == "capability-missing"
