"""gzip for large JSON answers, for clients that ask for it, and for nothing else."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientResponse

from gateway.api.compression import MIN_BYTES, accepts_gzip
from gateway.app import create_app
from gateway.service import encode_id
from tests.support.api import Client, ClientFactory, basic, checked, settings_for
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

ALICE = basic("alice", "pw")
LISTING = "/v1/mailboxes/me/messages?limit=40"


def message(i: int) -> bytes:
    return (
        f"Subject: message number {i} about something\r\nFrom: Sender {i} <s{i}@example.com>\r\n"
        f"To: alice@example.com\r\nMessage-ID: <{i}@example.com>\r\n\r\nbody {i}\r\n"
    ).encode()


@pytest.fixture
async def many() -> AsyncIterator[FakePOP3Server]:
    box = FakeMailbox([(f"uid-{i}", message(i)) for i in range(40)])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        yield server


async def get(api: Client, url: str, encoding: str, **headers: str) -> tuple[ClientResponse, bytes]:
    """The response and its body as sent (not inflated by the client)."""
    resp = await api.get(
        url, headers={**ALICE, "Accept-Encoding": encoding, **headers}, auto_decompress=False
    )
    return resp, await resp.read()


async def test_large_json_is_gzipped_for_clients_that_ask(
    aiohttp_client: ClientFactory, many: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(many.port)))
    plain_resp = await api.get(LISTING, headers={**ALICE, "Accept-Encoding": "identity"})
    plain = await checked(plain_resp, 200)
    assert "Content-Encoding" not in plain_resp.headers
    assert plain_resp.headers["Vary"] == "Accept-Encoding"
    assert len(json.dumps(plain)) >= MIN_BYTES
    resp, sent = await get(api, LISTING, "gzip, deflate")
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert len(sent) < len(json.dumps(plain)) / 2
    assert json.loads(gzip.decompress(sent)) == plain
    # the same content in other bytes: a weak ETag, which still earns a 304
    assert resp.headers["ETag"] == "W/" + plain_resp.headers["ETag"]
    again = await api.get(LISTING, headers={**ALICE, "If-None-Match": resp.headers["ETag"]})
    await checked(again, 304)
    # validated against the contract like every answer (the client inflates it)
    await checked(await api.get(LISTING, headers={**ALICE, "Accept-Encoding": "gzip"}), 200)
    spec, spec_sent = await get(api, "/openapi.json", "gzip")
    assert spec.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(spec_sent))["openapi"].startswith("3.1")


@pytest.mark.parametrize("encoding", ["identity", "gzip;q=0", "br", "deflate", "*;q=0", ""])
async def test_no_gzip_unless_asked(
    aiohttp_client: ClientFactory, many: FakePOP3Server, encoding: str
) -> None:
    api = await aiohttp_client(create_app(settings_for(many.port)))
    resp, sent = await get(api, LISTING, encoding)
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert json.loads(sent)["total"] == 40


async def test_small_json_and_bytes_are_never_gzipped(
    aiohttp_client: ClientFactory, many: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(many.port)))
    health, _ = await get(api, "/healthz", "gzip")
    assert "Content-Encoding" not in health.headers
    raw, sent = await get(api, f"/v1/mailboxes/me/messages/{encode_id('uid-1')}/raw", "gzip")
    assert raw.status == 200
    assert "Content-Encoding" not in raw.headers
    assert sent == message(1)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("*", True),
        ("gzip;q=0, *", False),
        ("gzip;q=0.0", False),
        ("gzip;q=nonsense", False),
        ("identity", False),
        ("", False),
    ],
)
def test_accept_encoding(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted
