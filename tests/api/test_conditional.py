"""Conditional requests and HEAD on a message's bytes: a message never changes for its
unique-id, so answering them needs the session's listing, never a RETR."""

from __future__ import annotations

import base64

from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import ClientFactory, basic, checked, settings_for, validator
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

WITH_PART = (
    b"Subject: with a part\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"%PDF-1.7 x").replace(b"\n", b"\r\n")
    + b"--b--\r\n"
)
ALICE = basic("alice", "pw")


def retrs(server: FakePOP3Server) -> int:
    return sum(line.upper().startswith(b"RETR") for lines in server.received for line in lines)


async def test_raw_and_attachment_answer_304_without_retr(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("uid-1", WITH_PART)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        base = f"/v1/mailboxes/me/messages/{encode_id('uid-1')}"
        for url in (base + "/raw", base + "/attachments/2"):
            first = await api.get(url, headers=ALICE)
            assert first.status == 200
            await validator().check(first)
            etag = first.headers["ETag"]
            before = retrs(server)
            for given in (etag, f"W/{etag}", f'"other", {etag}'):
                again = await api.get(url, headers={**ALICE, "If-None-Match": given})
                await checked(again, 304)
                assert again.headers["ETag"].removeprefix("W/") == etag
            assert retrs(server) == before  # answered from the listing alone
            changed = await api.get(url, headers={**ALICE, "If-None-Match": '"other"'})
            assert changed.status == 200
            await validator().check(changed)
        # A tag for a message that is gone is no match: the usual 404.
        gone = f"/v1/mailboxes/me/messages/{encode_id('uid-9')}/raw"
        resp = await api.get(gone, headers={**ALICE, "If-None-Match": f'"{encode_id("uid-9")}"'})
        await checked(resp, 404)


async def test_head_of_raw_reads_no_message(aiohttp_client: ClientFactory) -> None:
    box = FakeMailbox([("uid-1", WITH_PART)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        api = await aiohttp_client(create_app(settings_for(server.port)))
        url = f"/v1/mailboxes/me/messages/{encode_id('uid-1')}/raw"
        head = await api.head(url, headers=ALICE)
        await checked(head, 200)
        assert head.headers["Content-Type"] == "message/rfc822"
        assert head.headers["ETag"] == f'"{encode_id("uid-1")}"'
        assert "Content-Length" not in head.headers  # never a size we have not read
        assert retrs(server) == 0
        missing = await api.head(
            f"/v1/mailboxes/me/messages/{encode_id('uid-9')}/raw", headers=ALICE
        )
        await checked(missing, 404)
        assert retrs(server) == 0
        got = await api.get(url, headers=ALICE)
        assert got.status == 200
        assert await got.read() == WITH_PART
        assert retrs(server) == 1
