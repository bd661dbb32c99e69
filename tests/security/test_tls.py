"""TLS to the mail server is verified by default: an upstream whose certificate comes from a
CA the gateway does not trust is answered 502 upstream-error before any credential is
sent; with that CA in the upstream's ``cafile`` it works; a wrong name still fails."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.app import create_app
from gateway.config import ConfigError, load_settings
from tests.security.helpers import MESSAGES, READ_KEY, SHORT_TIMEOUTS, write_pem
from tests.support.api import ClientFactory, bearer, sha
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)  # no 127.0.0.1 in it: names matter
    return ctx


@pytest.fixture
async def implicit_server(tls_ca: trustme.CA) -> AsyncIterator[FakePOP3Server]:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES),
        users={"alice": "pw"},
        tls_context=server_context(tls_ca),
        implicit_tls=True,
    ) as server:
        yield server


@pytest.fixture
async def starttls_server(tls_ca: trustme.CA) -> AsyncIterator[FakePOP3Server]:
    async with FakePOP3Server(
        FakeMailbox(MESSAGES), users={"alice": "pw"}, tls_context=server_context(tls_ca)
    ) as server:
        yield server


@pytest.fixture
def cafile(tls_ca: trustme.CA, tmp_path: Path) -> Path:
    return write_pem(tmp_path / "ca.pem", tls_ca.cert_pem)


def tls_settings(url: str, **upstream: Any) -> Any:
    return load_settings(
        presets=False,
        timeouts=SHORT_TIMEOUTS,
        upstreams=[{"name": "corp", "url": url, "tls_server_name": "localhost", **upstream}],
        mailboxes=[{"id": "box", "upstream": "corp", "user": "alice", "password": "pw"}],
        api_keys=[{"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"]}],
    )


def nothing_sent(server: FakePOP3Server) -> None:
    """No command at all reached the server (the handshake failed first)."""
    assert all(received == [] for received in server.received)


def no_credentials(server: FakePOP3Server) -> None:
    for received in server.received:
        assert not [line for line in received if line.startswith((b"USER", b"PASS", b"AUTH"))]


async def get_box(aiohttp_client: ClientFactory, settings: Any) -> tuple[int, dict[str, Any]]:
    api = await aiohttp_client(create_app(settings))
    resp = await api.get("/v1/mailboxes/box", headers=bearer(READ_KEY))
    return resp.status, await resp.json(content_type=None)


async def test_untrusted_certificate_is_refused(
    aiohttp_client: ClientFactory, implicit_server: FakePOP3Server
) -> None:
    url = f"pop3s://127.0.0.1:{implicit_server.port}"
    status, body = await get_box(aiohttp_client, tls_settings(url))
    assert (status, body["type"]) == (502, "/problems/upstream-error")
    assert "TLS" in body["detail"]
    nothing_sent(implicit_server)


async def test_trusted_with_the_upstream_cafile(
    aiohttp_client: ClientFactory, implicit_server: FakePOP3Server, cafile: Path
) -> None:
    url = f"pop3s://127.0.0.1:{implicit_server.port}"
    status, body = await get_box(aiohttp_client, tls_settings(url, cafile=str(cafile)))
    assert status == 200, body
    assert body["messages"] == len(MESSAGES)


async def test_trusted_ca_but_wrong_name_is_refused(
    aiohttp_client: ClientFactory, implicit_server: FakePOP3Server, cafile: Path
) -> None:
    url = f"pop3s://127.0.0.1:{implicit_server.port}"
    for name in ("pop.other.example", None):  # None: the URL's host, 127.0.0.1
        settings = tls_settings(url, cafile=str(cafile), tls_server_name=name)
        status, body = await get_box(aiohttp_client, settings)
        assert (status, body["type"]) == (502, "/problems/upstream-error"), name
    nothing_sent(implicit_server)


async def test_another_ca_is_not_trusted(
    aiohttp_client: ClientFactory, implicit_server: FakePOP3Server, tmp_path: Path
) -> None:
    other = write_pem(tmp_path / "other-ca.pem", trustme.CA().cert_pem)
    url = f"pop3s://127.0.0.1:{implicit_server.port}"
    status, body = await get_box(aiohttp_client, tls_settings(url, cafile=str(other)))
    assert (status, body["type"]) == (502, "/problems/upstream-error")
    nothing_sent(implicit_server)


async def test_starttls_untrusted_sends_no_credentials(
    aiohttp_client: ClientFactory, starttls_server: FakePOP3Server
) -> None:
    url = f"pop3+starttls://127.0.0.1:{starttls_server.port}"
    status, body = await get_box(aiohttp_client, tls_settings(url))
    assert (status, body["type"]) == (502, "/problems/upstream-error")
    no_credentials(starttls_server)
    assert [line for c in starttls_server.received for line in c] == [b"STLS\r\n"]


async def test_starttls_trusted_with_the_upstream_cafile(
    aiohttp_client: ClientFactory, starttls_server: FakePOP3Server, cafile: Path
) -> None:
    url = f"pop3+starttls://127.0.0.1:{starttls_server.port}"
    status, body = await get_box(aiohttp_client, tls_settings(url, cafile=str(cafile)))
    assert status == 200, body
    assert all(c.tls for c in starttls_server.connections if c.user)


async def test_check_reports_the_tls_failure(
    aiohttp_client: ClientFactory, implicit_server: FakePOP3Server
) -> None:
    url = f"pop3s://127.0.0.1:{implicit_server.port}"
    api = await aiohttp_client(create_app(tls_settings(url)))
    resp = await api.post("/v1/mailboxes/box/check", headers=bearer(READ_KEY))
    body = await resp.json()
    assert resp.status == 200
    assert body["ok"] is False
    assert body["steps"][0]["name"] == "connect"
    assert body["steps"][0]["ok"] is False
    nothing_sent(implicit_server)


def test_verification_cannot_be_switched_off_without_a_pin() -> None:
    with pytest.raises(ConfigError, match="fingerprint_sha256"):
        tls_settings("pop3s://127.0.0.1:995", verify_tls=False)
