"""Operations: metrics with the right labels and no secrets, JSON logs with request ids,
readiness, and a graceful SIGTERM during a download."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.logs import REQUEST_ID, AccessLogger, RequestIdFilter, configure_logging
from gateway.service import encode_id
from tests.support.api import ClientFactory, checked, settings_for
from tests.support.corpus import large_message
from tests.support.dovecot import Dovecot, DovecotUser, free_port
from tests.support.fakepop3 import FakePOP3Server

ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong-pw-XYZ").decode()}


def samples(scrape: str, name: str) -> dict[str, float]:
    out = {}
    for line in scrape.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


async def test_metrics_after_real_requests(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    await checked(await api.get("/v1/mailboxes/me/messages", headers=ALICE), 200)
    raw = await api.get(f"/v1/mailboxes/me/messages/{encode_id('uid-1')}/raw", headers=ALICE)
    body = await raw.read()
    await checked(await api.get("/v1/mailboxes/me", headers=WRONG), 401)
    scrape = await (await api.get("/metrics")).text()

    http = samples(scrape, "pop3gw_http_requests_total")
    assert (
        http[
            'pop3gw_http_requests_total{method="GET",route="/v1/mailboxes/{mailbox}/messages",'
            'status="200"}'
        ]
        == 1
    )
    assert any('route="/v1/mailboxes/{mailbox}",status="401"' in k for k in http)
    logins = samples(scrape, "pop3gw_pop3_logins_total")
    assert logins['pop3gw_pop3_logins_total{outcome="ok",upstream="default"}'] >= 1
    assert logins['pop3gw_pop3_logins_total{outcome="auth",upstream="default"}'] == 1
    problems = samples(scrape, "pop3gw_problems_total")
    assert problems['pop3gw_problems_total{type="unauthorized"}'] == 1
    streamed = samples(scrape, "pop3gw_streamed_bytes_total")
    assert streamed['pop3gw_streamed_bytes_total{kind="raw"}'] == len(body)
    assert samples(scrape, "pop3gw_pool_lease_wait_seconds_count")
    assert samples(scrape, "pop3gw_pop3_command_duration_seconds_count")
    # Nothing that identifies a user, a mailbox, a message or a secret is a label.
    for secret in ("alice", "wrong-pw-XYZ", "uid-1", encode_id("uid-1"), 'pw"', "pw}"):
        assert secret not in scrape


async def test_root_leads_to_the_docs(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    resp = await api.get("/", allow_redirects=False)
    await checked(resp, 302)
    assert resp.headers["Location"] == "/docs"
    followed = await api.get("/")
    assert followed.status == 200
    assert followed.content_type == "text/html"


async def test_metrics_token(aiohttp_client: ClientFactory, fake_server: FakePOP3Server) -> None:
    api = await aiohttp_client(
        create_app(settings_for(fake_server.port, metrics_token="m-token-123"))
    )
    resp = await api.get("/metrics")
    await checked(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await checked(await api.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
    ok = await api.get("/metrics", headers={"Authorization": "Bearer m-token-123"})
    assert ok.status == 200
    assert "m-token-123" not in await ok.text()


async def test_request_id_reaches_the_pop3_log_lines(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.DEBUG)
    api = await aiohttp_client(create_app(settings_for(fake_server.port)))
    headers = {**ALICE, "X-Request-ID": "trace-42"}
    await checked(await api.get("/v1/mailboxes/me/messages?fresh=true", headers=headers), 200)
    wire = [r for r in caplog.records if r.name == "gateway.pop3.wire"]
    assert any(r.getMessage().startswith("C: TOP") for r in wire)
    assert all(getattr(r, "request_id", "") == "trace-42" for r in wire)
    text = "\n".join(r.getMessage() for r in caplog.records)
    # The login is one AUTH PLAIN (the fake offers SASL PLAIN): its payload never shows.
    assert "C: AUTH <redacted>" in text
    assert base64.b64encode(b"\0alice\0pw").decode() not in text
    assert REQUEST_ID.get() == ""  # reset after the request


def test_json_and_text_log_lines() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        token = REQUEST_ID.set("rid-7")
        logging.getLogger("gateway.test").info("hello %s", "world", extra={"status": 200})
        REQUEST_ID.reset(token)
        logging.getLogger("gateway.test").warning("outside")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert lines[0]["msg"] == "hello world"
        assert lines[0]["request_id"] == "rid-7"
        assert lines[0]["status"] == 200
        assert lines[0]["level"] == "info"
        assert "request_id" not in lines[1]
        text = io.StringIO()
        configure_logging("INFO", "text", stream=text)
        token = REQUEST_ID.set("rid-8")
        logging.getLogger("gateway.test").info("plain")
        REQUEST_ID.reset(token)
        assert text.getvalue().rstrip().endswith("plain [rid-8]")
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    assert AccessLogger  # exercised by the SIGTERM test's real server


async def test_access_lines_carry_duration_and_problem_type(
    aiohttp_client: ClientFactory, fake_server: FakePOP3Server
) -> None:
    """An error answer's access line names its problem type (JSON and text); the text line
    says how long the request took."""
    server = TestServer(create_app(settings_for(fake_server.port)))
    await server.start_server(
        access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
    )
    api = await aiohttp_client(server)
    stream = io.StringIO()
    try:
        for fmt in ("json", "text"):
            configure_logging("INFO", fmt, stream=stream)
            await checked(await api.get("/v1/mailboxes/me", headers=WRONG), 401)
            await checked(await api.get("/v1/mailboxes/me/messages?limit=0", headers=ALICE), 400)
            await checked(await api.get("/healthz"), 200)
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    lines = [line for line in stream.getvalue().splitlines() if "gateway.access" in line]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    texts = [line for line in lines if not line.startswith("{")]
    assert [e.get("problem") for e in entries] == ["unauthorized", "invalid-request", None]
    assert all(e["duration_ms"] >= 0 for e in entries)
    assert len(texts) == 3
    assert re.search(r" /v1/mailboxes/\{mailbox\} 401 [0-9.]+ms unauthorized \[", texts[0])
    assert re.search(r" 400 [0-9.]+ms invalid-request \[", texts[1])
    assert re.search(r" /healthz 200 [0-9.]+ms \[", texts[2])
    assert "wrong-pw-XYZ" not in stream.getvalue()


# -- SIGTERM during a download ------------------------------------------------------------------
@pytest.mark.dovecot
async def test_sigterm_during_a_download(dovecot: Dovecot, dovecot_user: DovecotUser) -> None:
    raw = large_message(20_000_000)
    dovecot_user.deliver(raw)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")},
        "POP3GW_LISTEN": f"127.0.0.1:{port}",
        "POP3GW_DEFAULT_UPSTREAM": f"pop3://127.0.0.1:{dovecot.port}",
        "POP3GW_PRESETS": "false",
        "POP3GW_SHUTDOWN_DELAY_SECONDS": "1",
        "POP3GW_SHUTDOWN_GRACE_SECONDS": "30",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once; waits are threaded
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    auth = {
        "Authorization": "Basic "
        + base64.b64encode(f"{dovecot_user.name}:{dovecot_user.password}".encode()).decode()
    }
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(base + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "pop3gw serve did not start"
                await asyncio.sleep(0.1)
            listing = await (
                await http.get(base + "/v1/mailboxes/me/messages", headers=auth)
            ).json()
            url = f"{base}/v1/mailboxes/me/messages/{listing['messages'][0]['id']}/raw"
            received = bytearray()
            readiness: list[int] = []
            async with http.get(url, headers={**auth, "X-Request-ID": "dl-1"}) as resp:
                assert resp.status == 200
                received += await resp.content.read(65536)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                async with http.get(base + "/readyz") as ready:
                    readiness.append(ready.status)
                    body: dict[str, Any] = await ready.json()
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    received += chunk
                    await asyncio.sleep(0.005)  # a slow client: the download outlives the delay
            assert readiness == [503]
            assert body["checks"]["lifecycle"]["ok"] is False
            assert bytes(received) == raw
        _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "gateway.access"]
    assert any(e.get("request_id") == "dl-1" and e["status"] == 200 for e in access)
    assert dovecot_user.password not in err.decode()
    assert len(dovecot_user.messages()) == 1
