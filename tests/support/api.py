"""What every test of the HTTP API shares: a client factory type, authorization headers,
settings for a gateway in front of a test POP3 server, and :func:`checked`, through which
every API response in the tests goes (its status asserted, the whole response validated
against the OpenAPI contract by tests/support/contract.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.contract import load_spec
from gateway.edge import EdgeLimits, EdgeSite, handler_kwargs
from gateway.keys import METRICS
from gateway.logs import AccessLogger
from tests.support.contract import ResponseValidator

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]

READ_KEY = "read-key-0123456789abcdef"
DELETE_KEY = "delete-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": "Basic " + token}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + key}


def settings_for(port: int, *, user: str = "", password: str = "", **extra: Any) -> Settings:
    """Passthrough to 127.0.0.1:port, plus a configured mailbox 'box' for user/password and
    three API keys: read-only on box, read+delete on box, read on another mailbox only."""
    mailboxes = []
    if user:
        mailboxes = [
            {
                "id": "box",
                "upstream": f"pop3://127.0.0.1:{port}",
                "user": user,
                "password": password,
            },
            {
                "id": "other",
                "upstream": f"pop3://127.0.0.1:{port}",
                "user": user,
                "password": password,
            },
        ]
    values: dict[str, Any] = {
        "default_upstream": f"pop3://127.0.0.1:{port}",
        "presets": False,
        "mailboxes": mailboxes,
        "api_keys": [
            {"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"], "scopes": ["read"]},
            {
                "name": "deleter",
                "sha256": sha(DELETE_KEY),
                "mailboxes": ["box"],
                "scopes": ["read", "delete"],
            },
            {"name": "other", "sha256": sha(OTHER_KEY), "mailboxes": ["other"]},
        ]
        if user
        else [],
    }
    values.update(extra)
    return load_settings(**values)


@asynccontextmanager
async def served(
    settings: Settings, **limits: float
) -> AsyncIterator[tuple[EdgeSite, web.Application]]:
    """The gateway's app served as ``pop3gw serve`` serves it (an ``AppRunner`` and an
    ``EdgeSite`` on a free port), not by aiohttp's test server: that one cancels a handler
    whose client disconnects, which the gateway's own runner does not do."""
    app = create_app(settings)
    edge_limits = EdgeLimits(**limits)  # type: ignore[arg-type]
    kwargs = handler_kwargs(
        edge_limits, access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
    )
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    site = EdgeSite(
        runner, "127.0.0.1", 0, limits=edge_limits, metrics=app[METRICS], handler_kwargs=kwargs
    )
    await site.start()
    try:
        yield site, app
    finally:
        await runner.cleanup()


@cache
def validator() -> ResponseValidator:
    return ResponseValidator(load_spec())


async def checked(resp: ClientResponse, status: int) -> Any:
    """Assert the status, validate against the contract, return the decoded JSON body."""
    body = await resp.read()
    assert resp.status == status, (resp.status, body[:500])
    await validator().check(resp)
    return json.loads(body) if body else None
