"""CR, LF and NUL wherever a request carries text toward POP3: the user and password (HTTP
Basic), API keys, message ids, cursors, attachment ids. Each is refused with a 4xx and no
injected command reaches the server (checked on the fake server's received lines)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from pathlib import Path

import pytest
from aiohttp import ClientResponse

from gateway.app import create_app
from gateway.config import ConfigError, load_settings
from gateway.service import encode_id
from tests.security.helpers import DELETE_KEY, READ_KEY, dele_lines, gateway_settings, smuggled
from tests.support.api import Client, ClientFactory, basic, bearer, sha
from tests.support.fakepop3 import FakePOP3Server

PAYLOADS = [
    "\r\nDELE 1",
    "\nDELE 1",
    "\rDELE 1",
    "\x00DELE 1",
    "\r\nDELE 1\r\n",
    " \r\nQUIT\r\nDELE 1\r\nDELE 2",
    "\u2028DELE 1",  # not a POP3 line break, but must not reach the wire as one either
]
CONTROL = [p for p in PAYLOADS if any(c in p for c in "\r\n\x00")]
UIDS = ["uid-1", "uid-2", "uid-3"]


@pytest.fixture
async def api(aiohttp_client: ClientFactory, fake_server: FakePOP3Server) -> Client:
    return await aiohttp_client(create_app(gateway_settings(fake_server.port)))


def untouched(server: FakePOP3Server) -> None:
    assert dele_lines(server) == []
    assert smuggled(server) == []
    assert server.mailbox.uids() == UIDS


async def problem(resp: ClientResponse, *statuses: int) -> dict[str, object]:
    body = await resp.read()
    assert resp.status in statuses, (resp.status, body[:300])
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    data: dict[str, object] = json.loads(body)
    return data


# -- HTTP Basic ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", CONTROL)
@pytest.mark.parametrize("where", ["user", "password"])
async def test_basic_credentials(
    api: Client, fake_server: FakePOP3Server, payload: str, where: str
) -> None:
    user, password = ("alice" + payload, "pw") if where == "user" else ("alice", "pw" + payload)
    for path in ("/v1/mailboxes/me", "/v1/mailboxes/me/messages"):
        body = await problem(await api.get(path, headers=basic(user, password)), 400)
        assert body["type"] == "/problems/invalid-request"
    resp = await api.delete(
        f"/v1/mailboxes/me/messages/{encode_id('uid-1')}", headers=basic(user, password)
    )
    await problem(resp, 400)
    assert fake_server.connections == []  # refused before any connection
    untouched(fake_server)


async def test_basic_credentials_unicode_separator_is_sent_as_data(
    api: Client, fake_server: FakePOP3Server
) -> None:
    """U+2028 is not a line break in POP3: the login just fails, as one line."""
    resp = await api.get("/v1/mailboxes/me", headers=basic("alice", "pw\u2028DELE 1"))
    await problem(resp, 401)
    logins = [line for c in fake_server.received for line in c if line.startswith(b"AUTH")]
    payload = "\0alice\0pw\u2028DELE 1".encode()
    assert logins == [b"AUTH PLAIN " + base64.b64encode(payload) + b"\r\n"]
    assert dele_lines(fake_server) == []
    assert fake_server.mailbox.uids() == UIDS


async def test_basic_credentials_that_are_not_base64(
    api: Client, fake_server: FakePOP3Server
) -> None:
    raw = "Basic " + base64.b64encode(b"alice:pw\r\nDELE 1").decode() + "\x00"
    # aiohttp's client refuses NUL in a header: send the bytes ourselves.
    status, _ = await raw_request(api, "GET", "/v1/mailboxes/me", [("Authorization", raw)])
    assert 400 <= status < 500
    assert fake_server.connections == []


# -- API keys (headers): sent as raw bytes, as an attacker would ------------------------------


async def raw_request(
    api: Client, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, bytes]:
    """Send a request byte for byte (no client-side checks); return (status, head)."""
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {api.server.host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split(b" ", 2)[1]), head


@pytest.mark.parametrize("payload", CONTROL)
@pytest.mark.parametrize("key", [READ_KEY, DELETE_KEY])
async def test_api_key(api: Client, fake_server: FakePOP3Server, payload: str, key: str) -> None:
    for method, path in (
        ("GET", "/v1/mailboxes/box"),
        ("DELETE", f"/v1/mailboxes/box/messages/{encode_id('uid-1')}"),
    ):
        status, _ = await raw_request(
            api, method, path, [("Authorization", f"Bearer {key}{payload}")]
        )
        assert 400 <= status < 500, (method, status)
    assert fake_server.connections == []
    untouched(fake_server)


# -- message ids ------------------------------------------------------------------------------


def message_paths(message_id: str) -> list[tuple[str, str]]:
    quoted = urllib.parse.quote(message_id, safe="")
    base = f"/v1/mailboxes/me/messages/{quoted}"
    return [
        ("GET", base),
        ("GET", base + "/raw"),
        ("GET", base + "/attachments/2"),
        ("DELETE", base),
    ]


@pytest.mark.parametrize("payload", CONTROL)
async def test_message_id_with_control_characters(
    api: Client, fake_server: FakePOP3Server, payload: str
) -> None:
    for message_id in (encode_id("uid-1") + payload, payload + encode_id("uid-1")):
        for method, path in message_paths(message_id):
            resp = await api.request(method, path, headers=basic("alice", "pw"))
            body = await problem(resp, 400)
            assert body["type"] == "/problems/invalid-request", (method, path)
    assert fake_server.connections == []  # ids are checked before any session
    untouched(fake_server)


# Unique-ids are Latin-1 (bytes as the server sent them): NEL instead of U+2028.
@pytest.mark.parametrize("payload", [*CONTROL, "\x85DELE 1"])
async def test_message_id_whose_uid_carries_an_injection(
    api: Client, fake_server: FakePOP3Server, payload: str
) -> None:
    """A well-formed id of a unique-id holding CR/LF: no such message, and the unique-id is
    never written to the server (ids are resolved to message numbers in the session)."""
    message_id = encode_id("uid-1" + payload)
    for method, path in message_paths(message_id):
        body = await problem(await api.request(method, path, headers=basic("alice", "pw")), 404)
        assert body["type"] == "/problems/not-found"
    resp = await api.post(
        "/v1/mailboxes/me/messages/delete",
        json={"ids": [message_id]},
        headers=basic("alice", "pw"),
    )
    assert resp.status == 200
    assert await resp.json() == {"deleted": [], "not_found": [message_id]}
    untouched(fake_server)


@pytest.mark.parametrize("payload", CONTROL)
async def test_batch_delete_ids(api: Client, fake_server: FakePOP3Server, payload: str) -> None:
    for ids in (
        [encode_id("uid-1") + payload],
        [encode_id("uid-2"), payload],
        [encode_id("uid-3"), encode_id("uid-1") + payload],
    ):
        resp = await api.post(
            "/v1/mailboxes/box/messages/delete", json={"ids": ids}, headers=bearer(DELETE_KEY)
        )
        await problem(resp, 400)
    assert fake_server.connections == []
    untouched(fake_server)


# -- cursors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", CONTROL)
async def test_cursor_with_control_characters(
    api: Client, fake_server: FakePOP3Server, payload: str
) -> None:
    page = await (
        await api.get("/v1/mailboxes/me/messages?limit=1", headers=basic("alice", "pw"))
    ).json()
    issued = page["next_cursor"]
    assert issued
    for cursor in (payload, issued + payload, payload + issued):
        query = urllib.parse.urlencode({"cursor": cursor, "limit": 1})
        resp = await api.get(f"/v1/mailboxes/me/messages?{query}", headers=basic("alice", "pw"))
        body = await problem(resp, 400)
        assert body["type"] == "/problems/invalid-request"
    untouched(fake_server)


def forged_cursor(uid: str, number: int = 2, order: str = "desc") -> str:
    data = json.dumps({"v": 1, "o": order, "u": uid, "n": number}).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_forged_cursor_smuggles_nothing(
    api: Client, fake_server: FakePOP3Server, payload: str
) -> None:
    """A cursor is base64url JSON; one forged with an injected unique-id is at worst read as a
    position: the unique-id is never sent to the server."""
    for order in ("desc", "asc"):
        query = urllib.parse.urlencode(
            {"cursor": forged_cursor("uid-1" + payload, 2, order), "order": order}
        )
        resp = await api.get(f"/v1/mailboxes/me/messages?{query}", headers=basic("alice", "pw"))
        assert resp.status in (200, 400)
    untouched(fake_server)


# Cursors are not signed (a key shared by replicas without Redis would be needed): a forged
# one is read as a position at worst, but one carrying control characters is refused.
async def test_forged_cursor_is_refused(api: Client) -> None:
    query = urllib.parse.urlencode({"cursor": forged_cursor("uid-1\r\nDELE 1")})
    resp = await api.get(f"/v1/mailboxes/me/messages?{query}", headers=basic("alice", "pw"))
    assert resp.status == 400


# -- attachment ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload", CONTROL)
async def test_attachment_id(api: Client, fake_server: FakePOP3Server, payload: str) -> None:
    for attachment in ("2" + payload, payload + "2", "1." + payload):
        quoted = urllib.parse.quote(attachment, safe="")
        path = f"/v1/mailboxes/me/messages/{encode_id('uid-1')}/attachments/{quoted}"
        body = await problem(await api.get(path, headers=basic("alice", "pw")), 400)
        assert body["type"] == "/problems/invalid-request"
    assert fake_server.connections == []
    untouched(fake_server)


# -- configured credentials ----------------------------------------------------------------


@pytest.mark.parametrize("payload", CONTROL)
def test_configured_user_is_checked_at_load(payload: str) -> None:
    box = {"id": "box", "upstream": "pop3://127.0.0.1:110", "user": "alice" + payload}
    with pytest.raises(ConfigError, match=r"mailboxes\.0\.user"):
        load_settings(mailboxes=[{**box, "password": "pw"}])


async def test_configured_password_is_never_sent(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server, tmp_path: Path
) -> None:
    # Refused at load (below); a password file that changes afterwards is re-read, so the
    # check also happens when it is about to be sent.
    upstream = f"pop3://127.0.0.1:{fake_server.port}"
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    settings = gateway_settings(
        fake_server.port,
        mailboxes=[
            {"id": "box", "upstream": upstream, "user": "alice", "password_file": str(secret)}
        ],
        api_keys=[{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"]}],
    )
    api = await aiohttp_client(create_app(settings))
    secret.write_text("pw\r\nDELE 1\n")
    resp = await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY))
    body = await resp.json(content_type=None)
    assert (resp.status, body["type"]) == (502, "/problems/upstream-auth-failed")
    assert "DELE" not in body["detail"]
    assert all(line.startswith((b"CAPA", b"QUIT")) for c in fake_server.received for line in c)
    untouched(fake_server)


def test_configured_password_is_checked_at_load() -> None:
    box = {"id": "box", "upstream": "pop3://127.0.0.1:110", "user": "alice"}
    with pytest.raises(ConfigError):
        load_settings(mailboxes=[{**box, "password": "pw\r\nDELE 1"}])
