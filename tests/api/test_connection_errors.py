"""When the mail server cannot be reached or trusted, the answer says which server
(``host:port``) and precisely why, in the problem's ``detail`` and in the failed step of
``/check``: a self-signed or expired certificate, a hostname mismatch, an unknown CA, a name
that does not resolve, a refused connection, a server that never greets. Never a secret.

Everything runs on loopback; the unresolvable name (``.invalid``, RFC 6761) fails in the
resolver, before any connection."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme

from gateway.app import create_app
from gateway.config import load_settings
from tests.support.api import ClientFactory, basic, checked
from tests.support.dovecot import Dovecot, free_port
from tests.support.fakepop3 import FakeMailbox, FakePOP3Server

PASSWORD = "s3cret-Pa55word"  # looked for in every answer
SHORT = {"connect": 2, "tls": 2, "command": 0.5, "idle": 0.5}


async def answers(
    aiohttp_client: ClientFactory, user: str = "alice", **settings: Any
) -> tuple[str, str]:
    """The problem detail of GET /v1/mailboxes/me and the failed /check step's detail."""
    values: dict[str, Any] = {"presets": False, "timeouts": SHORT, "pool": {"retry_budget": 0}}
    api = await aiohttp_client(create_app(load_settings(**values | settings)))
    auth = basic(user, PASSWORD)
    problem = await checked(await api.get("/v1/mailboxes/me", headers=auth), 502)
    report = await checked(await api.post("/v1/mailboxes/me/check", headers=auth), 200)
    failed = [step for step in report["steps"] if not step["ok"]]
    assert report["ok"] is False
    assert len(failed) == 1, report["steps"]
    for text in (problem["detail"], failed[0]["detail"]):
        assert PASSWORD not in text
    return problem["detail"], failed[0]["detail"]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def expired_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=past - datetime.timedelta(days=365),
        not_after=past,
    )
    cert.configure_cert(ctx)
    return ctx


async def test_self_signed_certificate_is_named(
    aiohttp_client: ClientFactory, lab_dovecot: Dovecot
) -> None:
    where = f"127.0.0.1:{lab_dovecot.tls_port}"
    detail, step = await answers(aiohttp_client, default_upstream=f"pop3s://{where}")
    assert detail == f"TLS with the mail server {where} failed: self-signed certificate"
    assert step == detail


async def test_unknown_ca_and_hostname_mismatch_are_named(
    aiohttp_client: ClientFactory, dovecot: Dovecot
) -> None:
    where = f"localhost:{dovecot.tls_port}"
    detail, step = await answers(aiohttp_client, default_upstream=f"pop3s://{where}")
    expected = (
        f"TLS with the mail server {where} failed: certificate issued by an unknown authority"
    )
    assert (detail, step) == (expected, expected)
    detail, step = await answers(
        aiohttp_client,
        default_upstream=f"pop3s://{where}",
        default_upstream_cafile=str(dovecot.cafile),
        default_upstream_tls_server_name="pop.other.example",
    )
    expected = (
        f"TLS with the mail server {where} failed: hostname mismatch "
        "(the certificate is not valid for pop.other.example)"
    )
    assert (detail, step) == (expected, expected)


async def test_expired_certificate_is_named(aiohttp_client: ClientFactory, tmp_path: Any) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with FakePOP3Server(
        FakeMailbox([]),
        users={"alice": PASSWORD},
        tls_context=expired_context(ca),
        implicit_tls=True,
    ) as server:
        where = f"127.0.0.1:{server.port}"
        detail, step = await answers(
            aiohttp_client,
            default_upstream=f"pop3s://{where}",
            default_upstream_cafile=str(tmp_path / "ca.pem"),
        )
        assert detail == f"TLS with the mail server {where} failed: certificate has expired"
        assert step == detail
        assert all(received == [] for received in server.received)  # nothing was sent


async def test_plaintext_server_on_a_tls_url_is_named(aiohttp_client: ClientFactory) -> None:
    async with FakePOP3Server(FakeMailbox([]), users={"alice": PASSWORD}) as server:
        where = f"127.0.0.1:{server.port}"
        detail, step = await answers(aiohttp_client, default_upstream=f"pop3s://{where}")
        assert detail == (
            f"TLS with the mail server {where} failed: the server did not answer with TLS "
            "(plaintext POP3 on this port?)"
        )
        assert step == detail


async def test_unresolvable_name_is_named(aiohttp_client: ClientFactory) -> None:
    """A domain routed to a server whose name does not resolve (as a preset's would)."""
    detail, step = await answers(
        aiohttp_client,
        user="alice@corp.invalid",
        upstreams=[
            {"name": "corp", "url": "pop3s://pop.corp.invalid", "domains": ["corp.invalid"]}
        ],
    )
    assert detail.startswith("cannot reach the mail server pop.corp.invalid:995: ")
    assert "the name did not resolve" in detail
    assert step == detail


async def test_refused_connection_is_named(aiohttp_client: ClientFactory) -> None:
    port = free_port()
    detail, step = await answers(aiohttp_client, default_upstream=f"pop3://127.0.0.1:{port}")
    assert detail == f"cannot reach the mail server 127.0.0.1:{port}: connection refused"
    assert step == detail


async def test_a_server_that_never_greets_is_named(
    aiohttp_client: ClientFactory, silent_server: int
) -> None:
    where = f"127.0.0.1:{silent_server}"
    api = await aiohttp_client(
        create_app(load_settings(default_upstream=f"pop3://{where}", presets=False, timeouts=SHORT))
    )
    auth = basic("alice", PASSWORD)
    problem = await checked(await api.get("/v1/mailboxes/me", headers=auth), 504)
    assert problem["detail"] == f"the mail server {where} timed out (greeting)"
    report = await checked(await api.post("/v1/mailboxes/me/check", headers=auth), 200)
    assert [s["detail"] for s in report["steps"] if not s["ok"]] == [problem["detail"]]
