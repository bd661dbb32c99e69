"""Error mapping end to end: each failure a user can hit, its problem, and no mail lost."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import DELETE_KEY, ClientFactory, checked, settings_for
from tests.support.fakepop3 import Drop, DropAfter, Err, FakeMailbox, FakePOP3Server, Reply, Stall

Client = TestClient[web.Request, web.Application]
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
ID1 = encode_id("uid-1")
ID2 = encode_id("uid-2")


async def test_request_id_is_echoed(fake_api: Client) -> None:
    resp = await fake_api.get("/v1/mailboxes/me", headers={**ALICE, "X-Request-ID": "abc-123"})
    await checked(resp, 200)
    assert resp.headers["X-Request-ID"] == "abc-123"
    odd = await fake_api.get("/v1/mailboxes/me", headers={**ALICE, "X-Request-ID": "bad id <x>"})
    assert odd.headers["X-Request-ID"] != "bad id <x>"
    assert re.fullmatch(r"[0-9a-f]{24}", odd.headers["X-Request-ID"])


async def test_problem_carries_the_request_id(fake_api: Client) -> None:
    resp = await fake_api.get("/v1/mailboxes/me", headers={"X-Request-ID": "req-9"})
    body = await checked(resp, 401)
    assert body["request_id"] == "req-9"


@pytest.mark.parametrize(
    ("verb", "action", "status", "slug", "retry"),
    [
        # the login: one AUTH PLAIN, the fake server offering SASL PLAIN
        ("AUTH", Err("IN-USE", "locked"), 423, "mailbox-locked", True),
        ("AUTH", Err("LOGIN-DELAY", "wait"), 429, "login-delay", True),
        ("UIDL", Err("SYS/TEMP", "later"), 503, "upstream-unavailable", True),
        ("STAT", Err("SYS/PERM", "broken"), 502, "upstream-error", False),
        ("STAT", Stall(), 504, "upstream-timeout", False),
        ("STAT", Drop(), 502, "upstream-error", False),
        ("STAT", Reply(b"garbage\r\n"), 502, "upstream-error", False),
        ("GREETING", Reply(b"-ERR [IN-USE] busy\r\n", close=True), 423, "mailbox-locked", True),
    ],
)
async def test_upstream_failures(
    fake_api: Client,
    fake_server: FakePOP3Server,
    verb: str,
    action: object,
    status: int,
    slug: str,
    retry: bool,
) -> None:
    fake_server.script(verb, action, times=None)  # type: ignore[arg-type]
    path = "/v1/mailboxes/me/messages" if verb == "UIDL" else "/v1/mailboxes/me"
    resp = await fake_api.get(path, headers=ALICE)
    body = await checked(resp, status)
    assert body["type"] == f"/problems/{slug}"
    assert ("Retry-After" in resp.headers) is retry
    assert "locked" not in body["detail"] or slug == "mailbox-locked"
    assert fake_server.mailbox.uids() == ["uid-1", "uid-2"]


@pytest.mark.parametrize("code", ["IN-USE", "LOGIN-DELAY"])
async def test_a_passing_lock_is_retried(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server, code: str
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port, pool={"retry_budget": 5})))
    fake_server.script("AUTH", Err(code, "busy"), times=2)
    body = await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 200)
    assert body["messages"] == 2
    scrape = await (await api.get("/metrics")).text()
    assert 'pop3gw_pool_events_total{kind="retry"} 2.0' in scrape


async def test_server_texts_and_passwords_stay_out_of_problems(
    fake_api: Client, fake_server: FakePOP3Server
) -> None:
    fake_server.script("STAT", Err("SYS/PERM", "internal path /var/mail/alice broken"))
    body = await checked(await fake_api.get("/v1/mailboxes/me", headers=ALICE), 502)
    assert "/var/mail" not in body["detail"]


async def test_unreachable_upstream(aiohttp_client: ClientFactory) -> None:
    async with FakePOP3Server() as srv:
        port = srv.port
    api = await aiohttp_client(create_app(settings_for(port)))
    resp = await api.get("/v1/mailboxes/me", headers=ALICE)
    body = await checked(resp, 502)
    assert body["type"] == "/problems/upstream-error"


async def test_configured_credentials_rejected_is_502(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, user="alice", password="stale"))
    )
    resp = await api.get("/v1/mailboxes/box", headers={"Authorization": "Bearer " + DELETE_KEY})
    body = await checked(resp, 502)
    assert body["type"] == "/problems/upstream-auth-failed"
    assert "WWW-Authenticate" not in resp.headers


async def test_server_without_uidl(aiohttp_client: ClientFactory) -> None:
    async with FakePOP3Server(
        FakeMailbox([("u", b"S: x\r\n\r\n")]), users={"alice": "pw"}, uidl=False
    ) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port)))
        body = await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 502)
        assert body["type"] == "/problems/capability-missing"


async def test_unknown_and_invalid_ids(fake_api: Client) -> None:
    unknown = encode_id("no-such-uid")
    await checked(await fake_api.get(f"/v1/mailboxes/me/messages/{unknown}", headers=ALICE), 404)
    await checked(
        await fake_api.get(f"/v1/mailboxes/me/messages/{unknown}/raw", headers=ALICE), 404
    )
    for bad in ("a", "a=", "AB" * 60):  # not of the id pattern
        resp = await fake_api.get(f"/v1/mailboxes/me/messages/{bad}", headers=ALICE)
        await checked(resp, 400)
    # Of the pattern but not canonical base64url ("A" is "QQ"): no message has it.
    await checked(await fake_api.get("/v1/mailboxes/me/messages/QR", headers=ALICE), 404)


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":empty-user").decode(),
        "Basic " + base64.b64encode(b"alice\r\nDELE 1:pw").decode(),
        "Basic " + base64.b64encode(b"alice:pw\r\nDELE 1").decode(),
        "Basic " + base64.b64encode(b"alice:p\x00w").decode(),
        "Basic " + base64.b64encode("alice:\udcff".encode("utf-8", "surrogatepass")).decode(),
    ],
)
async def test_malformed_credentials_never_reach_the_server(
    fake_api: Client, fake_server: FakePOP3Server, header: str
) -> None:
    resp = await fake_api.get("/v1/mailboxes/me", headers={"Authorization": header})
    await checked(resp, 400)
    assert fake_server.connections == []


async def test_no_credentials(fake_api: Client, fake_server: FakePOP3Server) -> None:
    resp = await fake_api.get("/v1/mailboxes/me")
    await checked(resp, 401)
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pop3gw", charset="UTF-8"'
    assert fake_server.connections == []


async def test_passthrough_can_be_disabled(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port, passthrough=False)))
    await checked(await api.get("/v1/mailboxes/me", headers=ALICE), 403)


async def test_unknown_route_and_method(fake_api: Client) -> None:
    resp = await fake_api.get("/v2/nothing")
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    resp = await fake_api.put("/v1/mailboxes/me", headers=ALICE)
    assert resp.status == 405
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert "GET" in resp.headers["Allow"]


# -- ids with every character RFC 1939 allows ---------------------------------------------
SPECIAL_UIDS = ["a/b", "q?x=1", "100%", "#frag", "a+b", "~!*'();:@&=$,[]", "x" * 70, '"<>{}|\\^`']


@pytest.fixture
async def special_api(
    aiohttp_client: ClientFactory,
) -> AsyncIterator[tuple[Client, FakePOP3Server]]:
    box = FakeMailbox(
        [(uid, b"Subject: %d\r\n\r\nbody\r\n" % i) for i, uid in enumerate(SPECIAL_UIDS)]
    )
    async with FakePOP3Server(box, users={"alice": "pw"}) as srv:
        yield await aiohttp_client(create_app(settings_for(srv.port))), srv


async def test_ids_for_every_special_character(special_api: tuple[Client, FakePOP3Server]) -> None:
    api, srv = special_api
    listing = await checked(
        await api.get("/v1/mailboxes/me/messages?order=asc", headers=ALICE), 200
    )
    assert [m["uid"] for m in listing["messages"]] == SPECIAL_UIDS
    for i, item in enumerate(listing["messages"]):
        assert item["id"] == encode_id(SPECIAL_UIDS[i])
        message = await checked(
            await api.get(f"/v1/mailboxes/me/messages/{item['id']}", headers=ALICE), 200
        )
        assert message["uid"] == SPECIAL_UIDS[i]
        assert message["subject"] == str(i)
        raw = await api.get(f"/v1/mailboxes/me/messages/{item['id']}/raw", headers=ALICE)
        assert await raw.read() == b"Subject: %d\r\n\r\nbody\r\n" % i
    target = listing["messages"][0]["id"]
    resp = await api.delete(f"/v1/mailboxes/me/messages/{target}", headers=ALICE)
    assert resp.status == 204
    assert srv.mailbox.uids() == SPECIAL_UIDS[1:]


# -- delete invariants -------------------------------------------------------------------------
async def test_drop_after_quit_sent_is_outcome_unknown(
    fake_api: Client, fake_server: FakePOP3Server
) -> None:
    fake_server.script("QUIT", Drop())
    resp = await fake_api.delete(f"/v1/mailboxes/me/messages/{ID1}", headers=ALICE)
    body = await checked(resp, 502)
    assert body["type"] == "/problems/delete-outcome-unknown"
    await fake_server.wait_idle()
    assert fake_server.mailbox.uids() == ["uid-1", "uid-2"]
    # Retrying is safe: the same request now succeeds.
    resp = await fake_api.delete(f"/v1/mailboxes/me/messages/{ID1}", headers=ALICE)
    assert resp.status == 204
    assert fake_server.mailbox.uids() == ["uid-2"]


async def test_reply_to_quit_lost_after_update(
    fake_api: Client, fake_server: FakePOP3Server
) -> None:
    fake_server.script("QUIT", DropAfter(0))
    resp = await fake_api.delete(f"/v1/mailboxes/me/messages/{ID1}", headers=ALICE)
    await checked(resp, 502)
    # The server did delete; a retry finds nothing to delete and says so.
    again = await fake_api.delete(f"/v1/mailboxes/me/messages/{ID1}", headers=ALICE)
    await checked(again, 404)
    assert fake_server.mailbox.uids() == ["uid-2"]


async def test_drop_between_dele_and_quit(fake_api: Client, fake_server: FakePOP3Server) -> None:
    fake_server.script("DELE", Drop(), skip=1)
    resp = await fake_api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": [ID1, ID2]}, headers=ALICE
    )
    body = await checked(resp, 502)
    assert body["type"] == "/problems/upstream-error"
    await fake_server.wait_idle()
    assert fake_server.mailbox.uids() == ["uid-1", "uid-2"]


async def test_dele_refused_rolls_back(fake_api: Client, fake_server: FakePOP3Server) -> None:
    fake_server.script("DELE", Err("SYS/TEMP", "busy"), skip=1)
    resp = await fake_api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": [ID1, ID2]}, headers=ALICE
    )
    body = await checked(resp, 502)
    assert body["type"] == "/problems/delete-failed"
    await fake_server.wait_idle()
    assert fake_server.mailbox.uids() == ["uid-1", "uid-2"]
    assert not any(c.updated for c in fake_server.connections)


async def test_quit_refused(fake_api: Client, fake_server: FakePOP3Server) -> None:
    fake_server.script("QUIT", Err(None, "some deleted messages not removed"))
    resp = await fake_api.delete(f"/v1/mailboxes/me/messages/{ID2}", headers=ALICE)
    body = await checked(resp, 502)
    assert body["type"] == "/problems/delete-failed"


async def test_drop_during_raw_download_breaks_the_transfer(
    aiohttp_client: ClientFactory,
) -> None:
    # Without a spool, the message streams from the session: a drop after the first byte
    # can only break the transfer.
    big = b"Subject: big\r\n\r\n" + b"x" * 2_000_000 + b"\r\n"
    async with FakePOP3Server(FakeMailbox([("big", big)]), users={"alice": "pw"}) as srv:
        settings = settings_for(srv.port, stream={"spool_max_bytes": 0})
        api = await aiohttp_client(create_app(settings))
        srv.script("RETR", DropAfter(500_000))
        resp = await api.get(f"/v1/mailboxes/me/messages/{encode_id('big')}/raw", headers=ALICE)
        assert resp.status == 200
        with pytest.raises(Exception):  # noqa: B017, PT011 - any transfer error will do
            await resp.read()
        # The next request works.
        again = await api.get(f"/v1/mailboxes/me/messages/{encode_id('big')}/raw", headers=ALICE)
        assert await again.read() == big
        assert srv.mailbox.uids() == ["big"]


async def test_drop_during_a_spooled_raw_download_is_a_problem(
    aiohttp_client: ClientFactory,
) -> None:
    # Spooled, the whole message is read before the first byte goes out: a drop is answered.
    big = b"Subject: big\r\n\r\n" + b"x" * 2_000_000 + b"\r\n"
    async with FakePOP3Server(FakeMailbox([("big", big)]), users={"alice": "pw"}) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port)))
        srv.script("RETR", DropAfter(500_000))
        path = f"/v1/mailboxes/me/messages/{encode_id('big')}/raw"
        body = await checked(await api.get(path, headers=ALICE), 502)
        assert body["type"] == "/problems/upstream-error"
        again = await api.get(path, headers=ALICE)
        assert await again.read() == big
        assert srv.mailbox.uids() == ["big"]


async def test_message_too_large_points_to_raw(aiohttp_client: ClientFactory) -> None:
    big = b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n"
    async with FakePOP3Server(FakeMailbox([("big", big)]), users={"alice": "pw"}) as srv:
        api = await aiohttp_client(create_app(settings_for(srv.port, max_parse_bytes=1024)))
        path = f"/v1/mailboxes/me/messages/{encode_id('big')}"
        body = await checked(await api.get(path, headers=ALICE), 422)
        assert body["raw_url"] == path + "/raw"
        raw = await api.get(body["raw_url"], headers=ALICE)
        assert await raw.read() == big
