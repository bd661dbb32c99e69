"""Sessions, freshness and the header cache through the API: one login serves a burst,
``fresh`` sees new mail, cached headers never outlive the caller's own listing, and the
caps hold under concurrency."""

from __future__ import annotations

import asyncio
import base64

from gateway.app import create_app
from gateway.keys import SERVICE
from gateway.service import encode_id
from tests.support.api import ClientFactory, basic, checked, settings_for
from tests.support.cache import DictHeaderCache
from tests.support.clock import FakeClock
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server, Stall
from tests.support.wait import wait_until

ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}


def logins(server: FakePOP3Server) -> int:
    return sum(1 for c in server.connections if c.user)


async def test_a_burst_costs_one_login(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    for _ in range(5):
        await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    assert logins(fake_server) == 1
    # Warm listings came from the snapshot and the cache: TOP went out once per message.
    tops = [line for conn in fake_server.received for line in conn if line.startswith(b"TOP")]
    assert len(tops) == 2


async def test_fresh_sees_new_mail(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    first = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    same = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert same["total"] == first["total"] == 2
    fresh = await checked(await api.get("/v1/mailboxes/me/messages?fresh=true", headers=ALICE), 200)
    assert fresh["total"] == 3
    assert fresh["messages"][0]["subject"] == "three"
    assert logins(fake_server) == 2


async def test_the_snapshot_expires(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"snapshot_max_age": 5}), clock=clock)
    )
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    clock.advance(4.9)
    page = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert page["total"] == 2  # the same snapshot, within snapshot_max_age
    clock.advance(0.2)
    page = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert page["total"] == 3


async def test_cached_headers_only_for_the_live_listing(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    # The message goes away behind the gateway's back (another client deleted it).
    del fake_server.mailbox.messages[0]
    page = await checked(await api.get("/v1/mailboxes/me/messages?fresh=true", headers=ALICE), 200)
    assert [m["uid"] for m in page["messages"]] == ["uid-2"]
    gone = await api.get(f"/v1/mailboxes/me/messages/{encode_id('uid-1')}", headers=ALICE)
    await checked(gone, 404)


async def test_a_delete_through_the_gateway_shows_at_once(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    resp = await api.delete(f"/v1/mailboxes/me/messages/{encode_id('uid-1')}", headers=ALICE)
    assert resp.status == 204
    page = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert [m["uid"] for m in page["messages"]] == ["uid-2"]


async def test_a_delete_through_the_gateway_forgets_the_summary(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    app = create_app(settings_for(fake_server.port))
    api = await aiohttp_client(app)
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    recent = app[SERVICE].recent_summaries
    assert len(recent) == 2
    weight = recent.bytes
    resp = await api.delete(f"/v1/mailboxes/me/messages/{encode_id('uid-1')}", headers=ALICE)
    assert resp.status == 204
    assert len(recent) == 1
    assert 0 < recent.bytes < weight


async def test_a_delete_through_the_gateway_drops_it_from_the_header_cache_too(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """(With a header cache behind the held summaries, as with Redis.)"""
    cache = DictHeaderCache()
    app = create_app(settings_for(fake_server.port), cache=cache)
    api = await aiohttp_client(app)
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert sorted(uid for _ns, uid in cache.entries) == ["uid-1", "uid-2"]
    resp = await api.delete(f"/v1/mailboxes/me/messages/{encode_id('uid-1')}", headers=ALICE)
    assert resp.status == 204
    assert [uid for _ns, uid in cache.entries] == ["uid-2"]
    assert len(app[SERVICE].recent_summaries) == 1


async def test_one_session_per_mailbox_under_concurrency(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([(f"u{i}", b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(20)])
    async with FakePOP3Server(box, users={"alice": "pw"}, lock=True) as srv:
        api = await aiohttp_client(
            create_app(settings_for(srv.port, pool={"retry_budget": 0, "snapshot_max_age": 0}))
        )
        paths = [f"/v1/mailboxes/me/messages/{encode_id(f'u{i}')}" for i in range(20)]
        answers = await asyncio.gather(*(api.get(p, headers=ALICE) for p in paths))
        for resp in answers:
            await checked(resp, 200)
        # lock=True answers a second concurrent login with [IN-USE] and there is no retry
        # budget, so any overlap would have failed a request; with snapshot_max_age 0 every
        # request had a session of its own, one after the other.
        assert logins(srv) == 20


async def test_pool_exhausted_answers_503(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("u1", b"Subject: 1\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        api = await aiohttp_client(
            create_app(
                settings_for(
                    srv.port,
                    pool={"acquire_timeout": 0.3},
                    timeouts={"connect": 2, "tls": 2, "command": 3, "idle": 3},
                )
            )
        )
        srv.script("RETR", Stall())
        slow = asyncio.create_task(
            api.get(f"/v1/mailboxes/me/messages/{encode_id('u1')}", headers=ALICE)
        )
        await wait_until(lambda: sent(srv, b"RETR") == 1)  # the session is held by the stall
        resp = await api.get("/v1/mailboxes/me?fresh=true", headers=ALICE)
        body = await checked(resp, 503)
        assert body["type"] == "/problems/pool-exhausted"
        assert resp.headers["Retry-After"]
        await checked(await slow, 504)
        # The stalled session was dropped, and the mailbox works again.
        await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
        assert srv.mailbox.uids() == ["u1"]


async def test_pool_metrics(aiohttp_client: ClientFactory, fake_server: FakePOP3Server) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    scrape = await (await api.get("/metrics")).text()
    assert 'pop3gw_pool_sessions{state="idle"} 1.0' in scrape
    assert 'pop3gw_pool_events_total{kind="open"} 1.0' in scrape
    assert 'pop3gw_pop3_commands_total{command="TOP",outcome="ok"} 2.0' in scrape
    assert "alice" not in scrape


def sent(server: FakePOP3Server, verb: bytes) -> int:
    """How many times the gateway sent ``verb`` to the server, over every connection."""
    return sum(line.upper().startswith(verb) for lines in server.received for line in lines)


def _leases(scrape: str) -> float:
    line = next(
        x for x in scrape.splitlines() if x.startswith("pop3gw_pool_lease_wait_seconds_count")
    )
    return float(line.rsplit(" ", 1)[1])


async def test_a_burst_after_the_snapshot_expired_costs_one_lease(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """Callers that find the snapshot expired while another request of the same login is
    renewing it wait for that renewal instead of queueing for the session one by one."""
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"snapshot_max_age": 5}), clock=clock)
    )
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    before = _leases(await (await api.get("/metrics")).text())
    clock.advance(6)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    answers = await asyncio.gather(
        *(api.get("/v1/mailboxes/me/messages", headers=ALICE) for _ in range(16))
    )
    pages = [await checked(resp, 200) for resp in answers]
    assert {page["total"] for page in pages} == {3}
    assert _leases(await (await api.get("/metrics")).text()) == before + 1
    assert logins(fake_server) == 2


async def test_a_failed_renewal_is_not_the_waiters_failure(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """The request renewing the snapshot fails (the server stalls past the command timeout);
    the requests that waited for it lease a session of their own and get their answer."""
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(
            settings_for(
                fake_server.port,
                pool={"snapshot_max_age": 5, "retry_budget": 0},
                timeouts={"connect": 2, "tls": 2, "command": 0.5, "idle": 0.5},
            ),
            clock=clock,
        )
    )
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    clock.advance(6)
    fake_server.script("UIDL", Stall())  # the next session's UIDL only
    first = asyncio.create_task(api.get("/v1/mailboxes/me/messages", headers=ALICE))
    await wait_until(lambda: sent(fake_server, b"UIDL") == 2)  # the renewal is stalled
    others = await asyncio.gather(
        *(api.get("/v1/mailboxes/me/messages", headers=ALICE) for _ in range(3))
    )
    await checked(await first, 504)
    for resp in others:
        page = await checked(resp, 200)
        assert page["total"] == 2


async def test_a_new_login_never_takes_the_snapshot_of_an_older_one(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """Two logins are two maildrop states, even at the same instant: with a clock that
    does not move, a delete's fresh session still reads its own UIDL listing, and removes
    the message asked for, not the one that took its number."""
    clock = FakeClock()  # frozen: both logins happen "at the same time"
    api = await aiohttp_client(create_app(settings_for(fake_server.port), clock=clock))
    first = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    assert [m["uid"] for m in first["messages"]] == ["uid-2", "uid-1"]
    # Behind the gateway's back: uid-1 goes, uid-3 arrives (uid-2 is now message 1).
    del fake_server.mailbox.messages[0]
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    resp = await api.delete(f"/v1/mailboxes/me/messages/{encode_id('uid-2')}", headers=ALICE)
    assert resp.status == 204
    assert fake_server.mailbox.uids() == ["uid-3"]
    assert sent(fake_server, b"UIDL") == 2  # the delete's session read its own listing


async def test_fresh_in_a_loop_logs_in_once_per_interval(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """A client looping on ?fresh=true (or a burst of them) gets one new login per
    min_fresh_interval; the others are served the newest snapshot, and say how old."""
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"min_fresh_interval": 2}), clock=clock)
    )
    url = "/v1/mailboxes/me/messages?fresh=true"
    first = await checked(await api.get(url, headers=ALICE), 200)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    for _ in range(20):
        page = await checked(await api.get(url, headers=ALICE), 200)
        assert page == first  # the newest snapshot, no new login
    burst = await asyncio.gather(*(api.get(url, headers=ALICE) for _ in range(10)))
    for resp in burst:
        await checked(resp, 200)
    await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=ALICE), 200)
    assert logins(fake_server) == 1
    clock.advance(2.1)
    later = await checked(await api.get(url, headers=ALICE), 200)
    assert later["total"] == 3  # a new login, new mail
    assert logins(fake_server) == 2
    scrape = await (await api.get("/metrics")).text()
    assert 'pop3gw_limits_total{reason="fresh-rationed"} 31.0' in scrape


async def test_a_burst_of_fresh_requests_shares_one_login(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    clock = FakeClock()
    api = await aiohttp_client(create_app(settings_for(fake_server.port), clock=clock))
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    url = "/v1/mailboxes/me/messages?fresh=true"
    answers = await asyncio.gather(*(api.get(url, headers=ALICE) for _ in range(8)))
    pages = [await checked(resp, 200) for resp in answers]
    assert {page["total"] for page in pages} == {3}  # all see the one new login's snapshot
    assert logins(fake_server) == 2


async def test_a_stranger_s_failed_fresh_login_spends_no_ration(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """?fresh=true with a wrong password fails (401) and leaves the owner's ration alone:
    the owner's fresh request right after still logs in anew and sees new mail."""
    clock = FakeClock()
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, pool={"min_fresh_interval": 60}), clock=clock)
    )
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    fake_server.mailbox.add("uid-3", b"Subject: three\r\n\r\nnew\r\n")
    wrong = basic("alice", "guess")
    await checked(await api.get("/v1/mailboxes/me/messages?fresh=true", headers=wrong), 401)
    await checked(await api.get("/v1/mailboxes/me?fresh=true", headers=wrong), 401)
    page = await checked(await api.get("/v1/mailboxes/me/messages?fresh=true", headers=ALICE), 200)
    assert page["total"] == 3
