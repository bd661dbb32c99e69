"""API keys: scopes (read, delete) and mailbox grants are enforced, a mailbox the key is not
granted looks like an unknown one, and nothing refused ever reaches the POP3 server."""

from __future__ import annotations

import pytest
from aiohttp import ClientResponse

from gateway.app import create_app
from gateway.service import encode_id
from tests.security.helpers import (
    DELETE_KEY,
    DELETE_ONLY_KEY,
    OTHER_KEY,
    READ_KEY,
    WILDCARD_KEY,
    dele_lines,
    gateway_settings,
)
from tests.support.api import Client, ClientFactory, basic, bearer, sha
from tests.support.fakepop3 import FakePOP3Server

ID1 = encode_id("uid-1")
UIDS = ["uid-1", "uid-2", "uid-3"]


@pytest.fixture
async def api(aiohttp_client: ClientFactory, fake_server: FakePOP3Server) -> Client:
    return await aiohttp_client(create_app(gateway_settings(fake_server.port)))


async def status_and_type(resp: ClientResponse) -> tuple[int, str | None]:
    body = await resp.json(content_type=None)
    kind = body.get("type") if isinstance(body, dict) else None
    return resp.status, kind


def read_requests(mailbox: str) -> list[tuple[str, str, dict[str, object] | None]]:
    base = f"/v1/mailboxes/{mailbox}"
    return [
        ("GET", base, None),
        ("GET", base + "/messages", None),
        ("GET", f"{base}/messages/{ID1}", None),
        ("GET", f"{base}/messages/{ID1}/raw", None),
        ("POST", base + "/check", None),
    ]


def delete_requests(mailbox: str) -> list[tuple[str, str, dict[str, object] | None]]:
    base = f"/v1/mailboxes/{mailbox}/messages"
    return [("DELETE", f"{base}/{ID1}", None), ("POST", base + "/delete", {"ids": [ID1]})]


async def answers(
    api: Client, key: str | None, requests: list[tuple[str, str, dict[str, object] | None]]
) -> set[tuple[int, str | None]]:
    headers = bearer(key) if key is not None else {}
    out: set[tuple[int, str | None]] = set()
    for method, path, body in requests:
        resp = await api.request(method, path, headers=headers, json=body)
        if resp.status in (200, 204):
            await resp.read()
            out.add((resp.status, None))
        else:
            out.add(await status_and_type(resp))
    return out


async def test_no_key_or_a_wrong_key(api: Client, fake_server: FakePOP3Server) -> None:
    requests = read_requests("box") + delete_requests("box")
    assert await answers(api, None, requests) == {(401, "/problems/unauthorized")}
    for wrong in ("nope", READ_KEY.upper(), READ_KEY[:-1], READ_KEY + "x", sha(READ_KEY)):
        assert await answers(api, wrong, requests) == {(401, "/problems/unauthorized")}, wrong
    resp = await api.get("/v1/mailboxes/box", headers={"Authorization": f"Basic {READ_KEY}"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake_server.connections == []


async def test_key_in_the_query_string_is_not_a_key(
    api: Client, fake_server: FakePOP3Server
) -> None:
    for name in ("api_key", "key", "access_token", "token"):
        resp = await api.get(f"/v1/mailboxes/box?{name}={READ_KEY}")
        assert resp.status == 401
    assert fake_server.connections == []


async def test_read_scope_cannot_delete(api: Client, fake_server: FakePOP3Server) -> None:
    assert await answers(api, READ_KEY, read_requests("box")) == {(200, None)}
    assert await answers(api, READ_KEY, delete_requests("box")) == {(403, "/problems/forbidden")}
    assert dele_lines(fake_server) == []
    assert fake_server.mailbox.uids() == UIDS


async def test_delete_scope_deletes(api: Client, fake_server: FakePOP3Server) -> None:
    resp = await api.delete(f"/v1/mailboxes/box/messages/{ID1}", headers=bearer(DELETE_KEY))
    assert resp.status == 204
    assert fake_server.mailbox.uids() == ["uid-2", "uid-3"]


async def test_delete_only_scope_cannot_read(api: Client, fake_server: FakePOP3Server) -> None:
    assert await answers(api, DELETE_ONLY_KEY, read_requests("box")) == {
        (403, "/problems/forbidden")
    }
    assert fake_server.connections == []  # refused before any session
    resp = await api.delete(f"/v1/mailboxes/box/messages/{ID1}", headers=bearer(DELETE_ONLY_KEY))
    assert resp.status == 204


@pytest.mark.parametrize(
    ("key", "mailbox"),
    [(READ_KEY, "other"), (DELETE_KEY, "other"), (OTHER_KEY, "box"), (READ_KEY, "nosuchbox")],
)
async def test_ungranted_mailbox_looks_unknown(
    api: Client, fake_server: FakePOP3Server, key: str, mailbox: str
) -> None:
    requests = read_requests(mailbox) + delete_requests(mailbox)
    assert await answers(api, key, requests) == {(404, "/problems/not-found")}
    # The same answer for a mailbox that exists and one that does not: ids cannot be probed.
    unknown = await api.get("/v1/mailboxes/nosuchbox", headers=bearer(key))
    granted_elsewhere = await api.get(f"/v1/mailboxes/{mailbox}", headers=bearer(key))
    first, second = await unknown.json(), await granted_elsewhere.json()
    assert (first["type"], first["detail"]) == (second["type"], second["detail"])
    assert fake_server.connections == []


async def test_wildcard_key_reads_every_mailbox_but_cannot_delete(
    api: Client, fake_server: FakePOP3Server
) -> None:
    for mailbox in ("box", "other"):
        assert await answers(api, WILDCARD_KEY, read_requests(mailbox)) == {(200, None)}
        assert await answers(api, WILDCARD_KEY, delete_requests(mailbox)) == {
            (403, "/problems/forbidden")
        }
    assert dele_lines(fake_server) == []


async def test_credentials_of_one_kind_do_not_open_the_other(
    api: Client, fake_server: FakePOP3Server
) -> None:
    # HTTP Basic with the configured mailbox's own POP3 login is not an API key...
    resp = await api.get("/v1/mailboxes/box", headers=basic("alice", "pw"))
    assert (await status_and_type(resp)) == (401, "/problems/unauthorized")
    # ...and an API key is not passthrough credentials.
    resp = await api.get("/v1/mailboxes/me", headers=bearer(DELETE_KEY))
    assert (await status_and_type(resp)) == (401, "/problems/unauthorized")
    assert fake_server.connections == []


async def test_passthrough_can_be_switched_off(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(gateway_settings(fake_server.port, passthrough=False)))
    resp = await api.get("/v1/mailboxes/me", headers=basic("alice", "pw"))
    assert (await status_and_type(resp)) == (403, "/problems/forbidden")
    assert (await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY))).status == 200
