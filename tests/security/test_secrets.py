"""After a run of requests with known secrets (passthrough passwords, right and wrong; a
configured mailbox's password from the environment; an OAuth token from a token file; API
keys; a Redis URL with a password; the cache secret; the metrics token), none of them
appears in the logs (DEBUG, POP3 conversation included), in /metrics, in any response (bodies
and headers, problems included), or in Redis (keys and values under ``pop3gw:*``)."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.app import create_app
from gateway.config import load_settings
from gateway.logs import JSONFormatter
from gateway.mail import parse_message
from gateway.service import encode_id
from tests.support.api import ClientFactory, basic, bearer, sha
from tests.support.corpus import generate_corpus
from tests.support.fakepop3 import Err, FakeMailbox, FakePOP3Server


def secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(10)}"


ALICE_PW = secret("alice-pw")
WRONG_PW = secret("wrong-pw")
SVC_PW = secret("svc-pw")
TOKEN = secret("oauth-token")
READ_KEY = secret("api-read")
DELETE_KEY = secret("api-delete")
WRONG_KEY = secret("api-wrong")
CACHE_SECRET = secret("cache-secret")
METRICS_TOKEN = secret("metrics-token")
WRONG_METRICS_TOKEN = secret("metrics-wrong")
WRONG_REDIS_PW = secret("redis-wrong")
SVC_PW_ENV = "POP3GW_TEST_SECRET_SVC_PASSWORD"

ATTACHED = next(m.raw for m in generate_corpus(2) if m.name == "mixed-attachments")
MESSAGES = [
    ("uid-1", ATTACHED),
    ("uid-2", b"Subject: two\r\nFrom: b@example.com\r\n\r\nsecond\r\n"),
    ("uid-3", b"Subject: three\r\n\r\nthird\r\n"),
]


def forms(value: str) -> list[str]:
    """A secret and the encodings it could leak in."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


@pytest.fixture
def redis_admin(secret_redis: tuple[int, str]) -> Iterator[redis.Redis]:
    port, password = secret_redis
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        client.flushdb()  # this server is ours alone
        yield client
    finally:
        client.close()


@pytest.fixture
async def servers() -> Any:
    boxes = {
        "alice": FakeMailbox(MESSAGES),
        "svc": FakeMailbox(MESSAGES),
        "tok": FakeMailbox(MESSAGES),
    }
    async with FakePOP3Server(
        mailboxes=boxes, users={"alice": ALICE_PW, "svc": SVC_PW}, tokens={"tok": TOKEN}
    ) as server:
        yield server


def settings_for(port: int, redis_url: str, token_file: Path) -> Any:
    upstream = f"pop3://127.0.0.1:{port}"
    return load_settings(
        default_upstream=upstream,
        presets=False,
        timeouts={"connect": 2, "tls": 2, "command": 1, "idle": 1},
        pool={"retry_budget": 0.2},
        redis_url=redis_url,
        cache_secret=CACHE_SECRET,
        metrics_token=METRICS_TOKEN,
        mailboxes=[
            {"id": "svc", "upstream": upstream, "user": "svc", "password_env": SVC_PW_ENV},
            {
                "id": "tok",
                "upstream": upstream,
                "user": "tok",
                "auth": "xoauth2",
                "token_file": str(token_file),
            },
        ],
        api_keys=[
            {"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["*"]},
            {
                "name": "deleter",
                "sha256": sha(DELETE_KEY),
                "mailboxes": ["svc"],
                "scopes": ["read", "delete"],
            },
        ],
    )


async def test_no_secret_leaks(
    aiohttp_client: ClientFactory,
    servers: FakePOP3Server,
    secret_redis: tuple[int, str],
    redis_admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="gateway.pop3.wire")
    monkeypatch.setenv(SVC_PW_ENV, SVC_PW)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    redis_port, redis_password = secret_redis
    redis_url = f"redis://:{redis_password}@127.0.0.1:{redis_port}/0"
    seen: list[str] = []  # every response: status line, headers, body

    async def call(api: Any, method: str, path: str, expect: int, **kwargs: Any) -> bytes:
        resp = await api.request(method, path, **kwargs)
        body: bytes = await resp.read()
        seen.append(f"{resp.status} {dict(resp.headers)!r}\n{body.decode('utf-8', 'replace')}")
        assert resp.status == expect, (method, path, resp.status, body[:300])
        return body

    api = await aiohttp_client(create_app(settings_for(servers.port, redis_url, token_file)))
    alice = basic("alice", ALICE_PW)
    id1, id2 = encode_id("uid-1"), encode_id("uid-2")
    attachment = parse_message(ATTACHED).attachments[0].id
    for path in (
        "/v1/mailboxes/me",
        "/v1/mailboxes/me/messages",
        "/v1/mailboxes/me/messages?fresh=true",
        f"/v1/mailboxes/me/messages/{id1}",
        f"/v1/mailboxes/me/messages/{id1}/raw",
        f"/v1/mailboxes/me/messages/{id1}/attachments/{attachment}",
    ):
        await call(api, "GET", path, 200, headers=alice)
    await call(api, "POST", "/v1/mailboxes/me/check", 200, headers=alice)
    await call(api, "GET", "/v1/mailboxes/me", 401, headers=basic("alice", WRONG_PW))
    await call(api, "POST", "/v1/mailboxes/me/check", 401, headers=basic("alice", WRONG_PW))
    for mailbox in ("svc", "tok"):
        await call(api, "GET", f"/v1/mailboxes/{mailbox}", 200, headers=bearer(READ_KEY))
        await call(api, "GET", f"/v1/mailboxes/{mailbox}/messages", 200, headers=bearer(READ_KEY))
        await call(api, "POST", f"/v1/mailboxes/{mailbox}/check", 200, headers=bearer(READ_KEY))
    await call(api, "GET", "/v1/mailboxes/svc", 401, headers=bearer(WRONG_KEY))
    await call(api, "DELETE", f"/v1/mailboxes/svc/messages/{id2}", 403, headers=bearer(READ_KEY))
    await call(api, "DELETE", f"/v1/mailboxes/svc/messages/{id2}", 204, headers=bearer(DELETE_KEY))
    servers.script("STAT", Err("SYS/PERM", "broken"), times=None)
    await call(api, "GET", "/v1/mailboxes/svc?fresh=true", 502, headers=bearer(READ_KEY))
    servers.rules.clear()
    token_file.write_text("stale-token\n")  # the token sidecar fails: upstream-auth-failed
    await call(api, "GET", "/v1/mailboxes/tok?fresh=true", 502, headers=bearer(READ_KEY))
    token_file.write_text(TOKEN + "\n")
    await call(api, "GET", "/readyz", 200)
    await call(api, "GET", "/metrics", 401)
    await call(api, "GET", "/metrics", 401, headers=bearer(WRONG_METRICS_TOKEN))
    metrics = await call(api, "GET", "/metrics", 200, headers=bearer(METRICS_TOKEN))
    assert b"pop3gw_" in metrics

    # A gateway whose Redis password is wrong: the cache and the replica gate fail, and log it.
    wrong_url = f"redis://:{WRONG_REDIS_PW}@127.0.0.1:{redis_port}/0"
    broken = await aiohttp_client(create_app(settings_for(servers.port, wrong_url, token_file)))
    await call(broken, "GET", "/v1/mailboxes/me/messages", 200, headers=alice)
    await call(broken, "GET", "/readyz", 200)

    # The POP3 conversation was logged, with its secrets redacted.
    wire = [r.getMessage() for r in caplog.records if r.name == "gateway.pop3.wire"]
    # (password logins are one AUTH PLAIN here: the fake offers SASL PLAIN)
    assert "C: AUTH <redacted>" in wire
    assert not any(line.startswith(("C: PASS", "C: USER")) for line in wire)
    # The failures were logged (the URL with the wrong password was in play)...
    warned = {r.name for r in caplog.records if r.levelno >= logging.WARNING}
    assert {"gateway.api", "gateway.redis", "gateway.replicas"} <= warned
    # ...and the cache did write to Redis, so the check of its keys is not vacuous.
    keys = list(redis_admin.scan_iter(match="pop3gw:*", count=1000))
    assert any(k.startswith(b"pop3gw:v2:hdr:") for k in keys)

    formatter = JSONFormatter()
    logs = "\n".join(f"{formatter.format(r)}\n{r.__dict__!r}" for r in caplog.records)
    stored = []
    for key in keys:
        stored.append(key.decode("utf-8", "replace"))
        kind = redis_admin.type(key)
        if kind == b"string":
            value = redis_admin.get(key)
            stored.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else "")
        elif kind == b"hash":
            stored.append(repr(redis_admin.hgetall(key)))
    places = {
        "logs": logs,
        "responses": "\n".join(seen),
        "metrics": metrics.decode(),
        "redis": "\n".join(stored),
    }
    leaked = []
    every_secret = [
        ALICE_PW,
        WRONG_PW,
        SVC_PW,
        TOKEN,
        READ_KEY,
        DELETE_KEY,
        WRONG_KEY,
        CACHE_SECRET,
        METRICS_TOKEN,
        WRONG_METRICS_TOKEN,
        redis_password,
        WRONG_REDIS_PW,
    ]
    derived = [
        f"alice:{ALICE_PW}",
        f"alice:{WRONG_PW}",
        f"user=tok\x01auth=Bearer {TOKEN}\x01\x01",
    ]
    for value in every_secret + derived:
        for form in forms(value):
            leaked += [(where, value) for where, text in places.items() if form in text]
    assert leaked == []
    for where in ("redis", "metrics"):
        for user in ("alice", "svc", "tok"):
            assert f"{user}\0" not in places[where]
    assert not [k for k in keys if b"alice" in k or b"svc" in k or b"tok" in k]
