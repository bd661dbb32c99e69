"""Faults between the gateway and a real Dovecot, made by a proxy in between: every answer
is the documented problem, and no message is lost or deleted by mistake."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.corpus import large_message, simple_message
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.dovecot
Client = TestClient[web.Request, web.Application]
RAWS = [simple_message(i) for i in range(3)] + [large_message(300_000)]


@pytest.fixture
async def proxy(dovecot: Dovecot) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(dovecot.port) as p:
        yield p


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, proxy: FaultProxy, dovecot_user: DovecotUser
) -> Client:
    dovecot_user.deliver_many(RAWS)
    settings = settings_for(
        proxy.port,
        timeouts={"connect": 2, "tls": 2, "command": 1, "idle": 1},
        # A new session for every request, so that each proxy rule meets a fresh one.
        pool={"snapshot_max_age": 0, "retry_budget": 0},
    )
    return await aiohttp_client(create_app(settings))


def auth(user: DovecotUser) -> dict[str, str]:
    token = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def ids(api: Client, user: DovecotUser) -> list[str]:
    page = await checked(
        await api.get("/v1/mailboxes/me/messages?order=asc", headers=auth(user)), 200
    )
    return [m["id"] for m in page["messages"]]


def intact(user: DovecotUser) -> bool:
    return sorted(user.messages()) == sorted(RAWS)


async def test_drop_during_retr(api: Client, proxy: FaultProxy, dovecot_user: DovecotUser) -> None:
    target = (await ids(api, dovecot_user))[3]
    proxy.cut_reply_after(b"RETR", 50_000)
    resp = await api.get(f"/v1/mailboxes/me/messages/{target}", headers=auth(dovecot_user))
    body = await checked(resp, 502)
    assert body["type"] == "/problems/upstream-error"
    assert intact(dovecot_user)
    await checked(
        await api.get(f"/v1/mailboxes/me/messages/{target}", headers=auth(dovecot_user)), 200
    )


async def test_drop_on_dele(api: Client, proxy: FaultProxy, dovecot_user: DovecotUser) -> None:
    targets = (await ids(api, dovecot_user))[:2]
    proxy.cut_on(b"DELE")
    resp = await api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": targets}, headers=auth(dovecot_user)
    )
    await checked(resp, 502)
    assert intact(dovecot_user)


async def test_drop_between_dele_and_quit(
    api: Client, proxy: FaultProxy, dovecot_user: DovecotUser
) -> None:
    targets = (await ids(api, dovecot_user))[:2]
    proxy.cut_on(b"QUIT")  # the server never gets QUIT: it rolls the marks back
    resp = await api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": targets}, headers=auth(dovecot_user)
    )
    body = await checked(resp, 502)
    assert body["type"] == "/problems/delete-outcome-unknown"
    assert intact(dovecot_user)
    # Retrying is safe and now works.
    again = await api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": targets}, headers=auth(dovecot_user)
    )
    assert (await checked(again, 200))["deleted"] == targets
    assert sorted(dovecot_user.messages()) == sorted(RAWS[2:])


async def test_quit_reply_lost(api: Client, proxy: FaultProxy, dovecot_user: DovecotUser) -> None:
    target = (await ids(api, dovecot_user))[0]
    proxy.blackhole_after(b"QUIT")  # the server removes it; the answer never arrives
    resp = await api.delete(f"/v1/mailboxes/me/messages/{target}", headers=auth(dovecot_user))
    body = await checked(resp, 502)
    assert body["type"] == "/problems/delete-outcome-unknown"
    assert sorted(dovecot_user.messages()) == sorted(RAWS[1:])  # exactly that one went
    # The retry is safe: the message is no longer there.
    again = await api.delete(f"/v1/mailboxes/me/messages/{target}", headers=auth(dovecot_user))
    await checked(again, 404)
    assert sorted(dovecot_user.messages()) == sorted(RAWS[1:])


@pytest.mark.parametrize("command", [b"UIDL", b"TOP", b"RETR", b"DELE"])
async def test_stalls_time_out(
    api: Client, proxy: FaultProxy, dovecot_user: DovecotUser, command: bytes
) -> None:
    known = await ids(api, dovecot_user)
    proxy.stall_on(command)
    headers = auth(dovecot_user)
    if command == b"UIDL":
        resp = await api.get("/v1/mailboxes/me/messages", headers=headers)
    elif command == b"TOP":
        resp = await api.get("/v1/mailboxes/me/messages?limit=2", headers=headers)
    elif command == b"RETR":
        resp = await api.get(f"/v1/mailboxes/me/messages/{known[0]}", headers=headers)
    else:
        resp = await api.delete(f"/v1/mailboxes/me/messages/{known[0]}", headers=headers)
    if command == b"TOP":
        # Summaries were cached by the first listing: no TOP is sent, nothing stalls.
        await checked(resp, 200)
    else:
        body = await checked(resp, 504)
        assert body["type"] == "/problems/upstream-timeout"
    assert intact(dovecot_user)


async def test_wrong_password(api: Client, dovecot_user: DovecotUser) -> None:
    token = base64.b64encode(f"{dovecot_user.name}:nope".encode()).decode()
    resp = await api.get("/v1/mailboxes/me", headers={"Authorization": f"Basic {token}"})
    body = await checked(resp, 401)
    assert body["type"] == "/problems/unauthorized"
    assert intact(dovecot_user)
