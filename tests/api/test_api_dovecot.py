"""The HTTP API end to end against a real Dovecot: every endpoint, both ways in."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import (
    DELETE_KEY,
    OTHER_KEY,
    READ_KEY,
    ClientFactory,
    checked,
    settings_for,
    validator,
)
from tests.support.corpus import expected_retr, generate_corpus, simple_message
from tests.support.dovecot import Dovecot, DovecotUser

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.dovecot


def basic(user: DovecotUser) -> dict[str, str]:
    token = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


MULTIPART = (
    b"From: =?UTF-8?B?5byg5LiJ?= <zhang@example.com>\r\n"
    b"To: Bob <bob@example.com>, carol@example.com\r\n"
    b"Subject: =?UTF-8?B?5rWL6K+V?= report\r\n"
    b"Date: Wed, 01 May 2024 10:22:33 +0800\r\n"
    b"Message-ID: <report-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b'Content-Type: multipart/alternative; boundary="b2"\r\n'
    b"\r\n"
    b"--b2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello in text\r\n"
    b"--b2\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Hello in <b>html</b></p>\r\n"
    b"--b2--\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(bytes(range(256))).replace(b"\n", b"\r\n") + b"--b1--\r\n"
)


async def test_stats(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    resp = await dovecot_api.get("/v1/mailboxes/me", headers=basic(dovecot_user))
    body = await checked(resp, 200)
    assert body["mailbox"] == "me"
    assert body["messages"] == 3
    assert body["octets"] == sum(len(simple_message(i)) for i in range(3))
    assert "UIDL" in body["capabilities"]
    assert resp.headers["X-Request-ID"]


async def test_listing_pages_and_orders(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(5)])
    headers = basic(dovecot_user)
    first = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?limit=2", headers=headers), 200
    )
    assert first["total"] == 5
    assert len(first["messages"]) == 2
    seen = [m["uid"] for m in first["messages"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await checked(
            await dovecot_api.get(
                "/v1/mailboxes/me/messages",
                params={"limit": "2", "cursor": cursor},
                headers=headers,
            ),
            200,
        )
        seen += [m["uid"] for m in page["messages"]]
        cursor = page["next_cursor"]
    assert len(seen) == 5
    assert len(set(seen)) == 5
    asc = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?order=asc&limit=500", headers=headers), 200
    )
    assert [m["uid"] for m in asc["messages"]] == seen[::-1]
    newest = first["messages"][0]
    assert newest["id"] == encode_id(newest["uid"])
    assert newest["size"] == len(simple_message(4))
    assert newest["subject"]
    assert newest["from"]["address"]


async def test_listing_etag(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver(simple_message(1))
    headers = basic(dovecot_user)
    resp = await dovecot_api.get("/v1/mailboxes/me/messages", headers=headers)
    await checked(resp, 200)
    etag = resp.headers["ETag"]
    again = await dovecot_api.get(
        "/v1/mailboxes/me/messages", headers={**headers, "If-None-Match": etag}
    )
    assert again.status == 304
    dovecot_user.deliver(simple_message(2))
    # Within snapshot_max_age the gateway answers from the same POP3 snapshot (new mail is
    # visible only in a new session), so the page is unchanged...
    same = await dovecot_api.get(
        "/v1/mailboxes/me/messages", headers={**headers, "If-None-Match": etag}
    )
    assert same.status == 304
    # ...until a fresh session is asked for.
    changed = await dovecot_api.get(
        "/v1/mailboxes/me/messages?fresh=true", headers={**headers, "If-None-Match": etag}
    )
    await checked(changed, 200)
    assert changed.headers["ETag"] != etag


@pytest.mark.parametrize(
    "given",
    ["W/{etag}", '"nothing", {etag}', '"a", W/{etag}, "b"', "*", 'W/"x",*'],
)
async def test_if_none_match_compares_weakly(
    dovecot_api: Client, dovecot_user: DovecotUser, given: str
) -> None:
    """RFC 9110 section 13.1.2: If-None-Match uses the weak comparison, lists and *."""
    dovecot_user.deliver(simple_message(1))
    headers = basic(dovecot_user)
    listing_url = "/v1/mailboxes/me/messages"
    listing = await dovecot_api.get(listing_url, headers=headers)
    page = await checked(listing, 200)
    message_url = f"{listing_url}/{page['messages'][0]['id']}"
    message = await dovecot_api.get(message_url, headers=headers)
    await checked(message, 200)
    for url, etag in (
        (listing_url, listing.headers["ETag"]),
        (message_url, message.headers["ETag"]),
    ):
        strong = etag.removeprefix("W/")
        resp = await dovecot_api.get(
            url, headers={**headers, "If-None-Match": given.format(etag=strong)}
        )
        await checked(resp, 304)
        assert resp.headers["ETag"].removeprefix("W/") == strong
    other = await dovecot_api.get(listing_url, headers={**headers, "If-None-Match": 'W/"other"'})
    await checked(other, 200)


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=501", "limit=abc", "order=newest", "cursor=%21%21", "fresh=maybe"],
)
async def test_listing_bad_input(
    dovecot_api: Client, dovecot_user: DovecotUser, query: str
) -> None:
    resp = await dovecot_api.get(f"/v1/mailboxes/me/messages?{query}", headers=basic(dovecot_user))
    body = await checked(resp, 400)
    assert body["type"] == "/problems/invalid-request"


@pytest.mark.parametrize(
    "query",
    [
        "limit=50&cursor=&order=desc&fresh=false",  # the README's own example
        "limit=&cursor=&order=&fresh=",
        "cursor=",
    ],
)
async def test_empty_query_parameters_are_absent(
    dovecot_api: Client, dovecot_user: DovecotUser, query: str
) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    headers = basic(dovecot_user)
    plain = await checked(await dovecot_api.get("/v1/mailboxes/me/messages", headers=headers), 200)
    resp = await dovecot_api.get(f"/v1/mailboxes/me/messages?{query}", headers=headers)
    assert await checked(resp, 200) == plain
    stats = await dovecot_api.get("/v1/mailboxes/me?fresh=", headers=headers)
    assert (await checked(stats, 200))["messages"] == 3


async def test_cursor_of_the_other_order(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    headers = basic(dovecot_user)
    page = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?limit=1", headers=headers), 200
    )
    resp = await dovecot_api.get(
        "/v1/mailboxes/me/messages",
        params={"order": "asc", "cursor": page["next_cursor"]},
        headers=headers,
    )
    body = await checked(resp, 400)
    assert "order" in body["detail"]


async def test_cursor_of_another_mailbox_is_refused(
    dovecot_api: Client, dovecot_user: DovecotUser
) -> None:
    """A cursor is bound to the mailbox it was made for, even one over the same maildrop
    (``me`` and the configured ``box`` log in as the same user here)."""
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    url = "/v1/mailboxes/{}/messages"
    mine = await checked(
        await dovecot_api.get(url.format("me") + "?limit=1", headers=basic(dovecot_user)), 200
    )
    theirs = await checked(
        await dovecot_api.get(url.format("box") + "?limit=1", headers=bearer(READ_KEY)), 200
    )
    for mailbox, headers, cursor in (
        ("box", bearer(READ_KEY), mine["next_cursor"]),
        ("me", basic(dovecot_user), theirs["next_cursor"]),
    ):
        resp = await dovecot_api.get(
            url.format(mailbox), params={"cursor": cursor, "limit": "1"}, headers=headers
        )
        body = await checked(resp, 400)
        assert "mailbox" in body["detail"]
    # each in its own mailbox leads on, as before
    for mailbox, headers, page in (
        ("me", basic(dovecot_user), mine),
        ("box", bearer(READ_KEY), theirs),
    ):
        resp = await dovecot_api.get(
            url.format(mailbox), params={"cursor": page["next_cursor"]}, headers=headers
        )
        assert len((await checked(resp, 200))["messages"]) == 2


async def test_a_tampered_cursor_is_refused(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    headers = basic(dovecot_user)
    page = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?limit=1", headers=headers), 200
    )
    sealed = bytearray(base64.urlsafe_b64decode(page["next_cursor"] + "=="))
    sealed[5] ^= 1  # another message number
    forged = base64.urlsafe_b64encode(bytes(sealed)).rstrip(b"=").decode()
    resp = await dovecot_api.get(
        "/v1/mailboxes/me/messages", params={"cursor": forged}, headers=headers
    )
    await checked(resp, 400)


@pytest.mark.parametrize("secret", [None, "a-shared-cache-secret-0123456789"])
async def test_cursors_outlive_a_restart_when_a_secret_is_set(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser, secret: str | None
) -> None:
    """Cursors are sealed with a key from POP3GW_CACHE_SECRET: with it, another process (a
    restart, a replica) takes them; without it each process has a random key of its own."""
    dovecot_user.deliver_many([simple_message(i) for i in range(3)])
    extra = {} if secret is None else {"cache_secret": secret}
    before, after = [
        await aiohttp_client(create_app(settings_for(dovecot.port, **extra))) for _ in range(2)
    ]
    url = "/v1/mailboxes/me/messages"
    page = await checked(await before.get(url + "?limit=1", headers=basic(dovecot_user)), 200)
    resp = await after.get(url, params={"cursor": page["next_cursor"]}, headers=basic(dovecot_user))
    await checked(resp, 400 if secret is None else 200)


async def test_message_raw_and_attachment(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver(MULTIPART)
    headers = basic(dovecot_user)
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages", headers=headers), 200
    )
    summary = listing["messages"][0]
    assert summary["subject"] == "测试 report"
    assert summary["from"] == {"name": "张三", "address": "zhang@example.com"}
    assert summary["date"] == "2024-05-01T10:22:33+08:00"
    base = f"/v1/mailboxes/me/messages/{summary['id']}"
    resp = await dovecot_api.get(base, headers=headers)
    message = await checked(resp, 200)
    assert resp.headers["ETag"] == f'"{summary["id"]}"'
    assert "immutable" in resp.headers["Cache-Control"]
    assert message["text"].strip() == "Hello in text"
    assert "<b>html</b>" in message["html"]
    assert message["message_id"] == "<report-1@example.com>"
    [attachment] = message["attachments"]
    assert attachment["filename"] == "résumé.bin"
    assert attachment["size"] == 256
    raw = await dovecot_api.get(base + "/raw", headers=headers)
    assert raw.status == 200
    assert raw.headers["Content-Type"] == "message/rfc822"
    assert await raw.read() == expected_retr(MULTIPART)
    part = await dovecot_api.get(f"{base}/attachments/{attachment['id']}", headers=headers)
    assert part.status == 200
    assert await part.read() == bytes(range(256))
    disposition = part.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in disposition
    assert part.headers["X-Content-Type-Options"] == "nosniff"
    missing = await dovecot_api.get(f"{base}/attachments/9", headers=headers)
    await checked(missing, 404)
    not_modified = await dovecot_api.get(
        base, headers={**headers, "If-None-Match": resp.headers["ETag"]}
    )
    assert not_modified.status == 304


def _part(content_type: str, payload: bytes, name: str) -> bytes:
    return (
        b"--b1\r\nContent-Type: " + content_type.encode() + b"\r\n"
        b"Content-Disposition: attachment; filename=" + name.encode() + b"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(payload).replace(b"\n", b"\r\n")
    )


TEXT_PARTS = [
    (
        "text/plain; charset=ISO-8859-1",
        "caf\u00e9".encode("latin-1"),
        "text/plain; charset=iso-8859-1",
    ),
    ("text/csv", "a,\u00e9\r\n".encode(), "text/csv; charset=utf-8"),
    ("text/plain", b"plain ascii\r\n", "text/plain; charset=us-ascii"),
    ("text/plain; charset=x-no-such-charset", b"\xe9\xff", "text/plain; charset=unknown-8bit"),
    ('text/html; charset="utf-8"', "<p>\u00e9</p>".encode(), "text/html; charset=utf-8"),
    ("application/pdf", b"%PDF-1.4", "application/pdf"),
]


async def test_text_attachments_carry_a_charset(
    dovecot_api: Client, dovecot_user: DovecotUser
) -> None:
    """A text attachment says how its bytes are encoded: the charset its part declares,
    else what its bytes are (ASCII, UTF-8, or unknown-8bit); other types carry none."""
    raw = (
        b"From: a@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        + b"".join(_part(ct, payload, f"f{i}") for i, (ct, payload, _) in enumerate(TEXT_PARTS))
        + b"--b1--\r\n"
    )
    dovecot_user.deliver(raw)
    headers = basic(dovecot_user)
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages", headers=headers), 200
    )
    base = f"/v1/mailboxes/me/messages/{listing['messages'][0]['id']}"
    message = await checked(await dovecot_api.get(base, headers=headers), 200)
    assert len(message["attachments"]) == len(TEXT_PARTS)
    for attachment, (_, payload, expected) in zip(message["attachments"], TEXT_PARTS, strict=True):
        part = await dovecot_api.get(f"{base}/attachments/{attachment['id']}", headers=headers)
        assert part.status == 200
        await validator().check(part)  # bytes, not JSON
        assert part.headers["Content-Type"] == expected
        assert await part.read() == payload


async def test_every_corpus_message_is_answered(
    dovecot_api: Client, dovecot_user: DovecotUser
) -> None:
    corpus = generate_corpus(seed=3)
    dovecot_user.deliver_many([m.raw for m in corpus])
    headers = basic(dovecot_user)
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?order=asc&limit=500", headers=headers), 200
    )
    assert listing["total"] == len(corpus)
    for item, message in zip(listing["messages"], corpus, strict=True):
        base = f"/v1/mailboxes/me/messages/{item['id']}"
        parsed = await checked(await dovecot_api.get(base, headers=headers), 200)
        for attachment in parsed["attachments"]:
            part = await dovecot_api.get(f"{base}/attachments/{attachment['id']}", headers=headers)
            assert part.status == 200, (message.name, attachment)
        raw = await dovecot_api.get(base + "/raw", headers=headers)
        assert raw.status == 200
        assert await raw.read() == expected_retr(message.raw), message.name


async def test_delete_single_and_batch(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    raws = [simple_message(i) for i in range(4)]
    dovecot_user.deliver_many(raws)
    headers = basic(dovecot_user)
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?order=asc", headers=headers), 200
    )
    ids = [m["id"] for m in listing["messages"]]
    resp = await dovecot_api.delete(f"/v1/mailboxes/me/messages/{ids[0]}", headers=headers)
    assert resp.status == 204
    assert sorted(dovecot_user.messages()) == sorted(raws[1:])
    again = await dovecot_api.delete(f"/v1/mailboxes/me/messages/{ids[0]}", headers=headers)
    await checked(again, 404)
    batch = await dovecot_api.post(
        "/v1/mailboxes/me/messages/delete", json={"ids": [ids[1], ids[0], ids[3]]}, headers=headers
    )
    result = await checked(batch, 200)
    assert result == {"deleted": [ids[1], ids[3]], "not_found": [ids[0]]}
    assert dovecot_user.messages() == [raws[2]]
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/me/messages?fresh=true", headers=headers), 200
    )
    assert [m["id"] for m in listing["messages"]] == [ids[2]]


@pytest.mark.parametrize(
    "body",
    [
        {"ids": []},
        {"ids": ["a" * 101]},
        {"ids": ["!!"]},
        {"ids": ["AA", "AA"]},
        {"idz": ["AA"]},
        {"ids": "AA"},
    ],
)
async def test_batch_delete_bad_input(
    dovecot_api: Client, dovecot_user: DovecotUser, body: object
) -> None:
    dovecot_user.deliver(simple_message(1))
    resp = await dovecot_api.post(
        "/v1/mailboxes/me/messages/delete", json=body, headers=basic(dovecot_user)
    )
    await checked(resp, 400)
    assert len(dovecot_user.messages()) == 1


async def test_batch_delete_needs_json(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    resp = await dovecot_api.post(
        "/v1/mailboxes/me/messages/delete", data="ids=AA", headers=basic(dovecot_user)
    )
    await checked(resp, 400)


async def test_check(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver(simple_message(1))
    body = await checked(
        await dovecot_api.post("/v1/mailboxes/me/check", headers=basic(dovecot_user)), 200
    )
    assert body["messages"] == 1
    assert [s["name"] for s in body["steps"]] == [
        "connect",
        "tls",
        "greeting",
        "auth",
        "capa",
        "stat",
    ]
    assert all(s["ok"] for s in body["steps"] if s["name"] != "tls")
    assert body["ok"]


async def test_check_reports_a_rejected_password_as_its_failed_step(
    dovecot_api: Client, dovecot_user: DovecotUser
) -> None:
    """A check that ran reports its steps, the failed one included: a wrong passthrough
    password is still the 401 of every operation (they are the request's own credentials),
    and its problem carries the report (it was a bare 401)."""
    bad = {"Authorization": "Basic " + base64.b64encode(f"{dovecot_user.name}:x".encode()).decode()}
    resp = await dovecot_api.post("/v1/mailboxes/me/check", headers=bad)
    problem = await checked(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert problem["type"] == "/problems/unauthorized"
    body = problem["check"]
    assert body["ok"] is False
    assert [s["name"] for s in body["steps"]] == ["connect", "tls", "greeting", "auth"]
    assert body["steps"][-1] == {
        **body["steps"][-1],
        "ok": False,
        "detail": "the server rejected the credentials",
    }
    assert (body["messages"], body["octets"], body["capabilities"]) == (None, None, [])


async def test_check_of_a_configured_mailbox_reports_the_failed_step(
    aiohttp_client: ClientFactory, dovecot: Dovecot, dovecot_user: DovecotUser
) -> None:
    settings = settings_for(dovecot.port, user=dovecot_user.name, password="stale")
    api = await aiohttp_client(create_app(settings))
    failed = await checked(await api.post("/v1/mailboxes/box/check", headers=bearer(READ_KEY)), 200)
    assert not failed["ok"]
    assert failed["steps"][-1]["name"] == "auth"
    assert failed["steps"][-1]["detail"] == "the server rejected the credentials"


@pytest.mark.parametrize("path", ["/v1/mailboxes/me", "/v1/mailboxes/me/check"])
async def test_no_mail_server_for_the_user_is_no_credential_problem(
    aiohttp_client: ClientFactory, path: str
) -> None:
    """No upstream for the user's domain: 422 no-mail-server, without a challenge that
    would make a browser ask again for a password that is not the problem."""
    api = await aiohttp_client(create_app(settings_for(1, default_upstream=None)))
    token = base64.b64encode(b"someone@nowhere.example:pw").decode()
    resp = await api.request(
        "POST" if path.endswith("check") else "GET",
        path,
        headers={"Authorization": f"Basic {token}"},
    )
    body = await checked(resp, 422)
    assert body["type"] == "/problems/no-mail-server"
    assert "WWW-Authenticate" not in resp.headers


async def test_wrong_password_is_401(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    token = base64.b64encode(f"{dovecot_user.name}:wrong".encode()).decode()
    resp = await dovecot_api.get("/v1/mailboxes/me", headers={"Authorization": f"Basic {token}"})
    body = await checked(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert "wrong" not in json.dumps(body)


async def test_configured_mailbox_with_keys(dovecot_api: Client, dovecot_user: DovecotUser) -> None:
    dovecot_user.deliver_many([simple_message(i) for i in range(2)])
    stats = await checked(await dovecot_api.get("/v1/mailboxes/box", headers=bearer(READ_KEY)), 200)
    assert stats["mailbox"] == "box"
    assert stats["messages"] == 2
    listing = await checked(
        await dovecot_api.get("/v1/mailboxes/box/messages", headers=bearer(READ_KEY)), 200
    )
    target = listing["messages"][0]["id"]
    refused = await dovecot_api.delete(
        f"/v1/mailboxes/box/messages/{target}", headers=bearer(READ_KEY)
    )
    await checked(refused, 403)
    assert len(dovecot_user.messages()) == 2
    done = await dovecot_api.delete(
        f"/v1/mailboxes/box/messages/{target}", headers=bearer(DELETE_KEY)
    )
    assert done.status == 204
    assert len(dovecot_user.messages()) == 1
    await checked(await dovecot_api.get("/v1/mailboxes/box", headers=bearer(OTHER_KEY)), 404)
    await checked(await dovecot_api.get("/v1/mailboxes/nope", headers=bearer(READ_KEY)), 404)
    await checked(await dovecot_api.get("/v1/mailboxes/box", headers=bearer("wrong-key")), 401)
    resp = await dovecot_api.get("/v1/mailboxes/box")
    await checked(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # A Bearer key does not open the passthrough mailbox, nor Basic a configured one.
    await checked(await dovecot_api.get("/v1/mailboxes/me", headers=bearer(READ_KEY)), 401)
    await checked(await dovecot_api.get("/v1/mailboxes/box", headers=basic(dovecot_user)), 401)
