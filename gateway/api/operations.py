"""Operations: liveness, readiness, metrics, the OpenAPI document and its /docs page."""

from __future__ import annotations

import hmac

from aiohttp import web

from .. import contract
from ..keys import LIFECYCLE, METRICS, SERVICE
from .common import json_response
from .errors import Problem


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when configured, listening and not shutting down.

    A cache that does not answer is reported but does not make the replica unready:
    requests are then served uncached (slower, still right), and taking every replica out
    of service because Redis is down would turn a slowdown into an outage.
    """
    shutting_down = request.app[LIFECYCLE].shutting_down
    checks: dict[str, dict[str, bool | str | None]] = {
        "config": {"ok": True, "detail": None},
        "lifecycle": {
            "ok": not shutting_down,
            "detail": "shutting down: finishing requests in flight" if shutting_down else None,
        },
    }
    for name, (ok, detail) in (await request.app[SERVICE].dependencies()).items():
        checks[name] = {"ok": ok, "detail": detail}
    if shutting_down:
        return json_response({"status": "not-ready", "checks": checks}, status=503)
    return json_response({"status": "ready", "checks": checks})


async def metrics(request: web.Request) -> web.StreamResponse:
    token = request.app[LIFECYCLE].metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Problem(
                "unauthorized",
                "send the metrics token as 'Authorization: Bearer <token>'",
                (("WWW-Authenticate", 'Bearer realm="pop3gw-metrics"'),),
            )
    body, content_type = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=contract.spec_json(), content_type="application/json")


async def root(request: web.Request) -> web.StreamResponse:
    """The gateway's address alone leads to its documentation."""
    return web.Response(status=302, headers={"Location": "/docs"})


async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=contract.docs_html(),
        content_type="text/html",
        headers={"Content-Security-Policy": contract.DOCS_CONTENT_SECURITY_POLICY},
    )


async def docs_asset(request: web.Request) -> web.StreamResponse:
    found = contract.docs_asset(request.match_info["asset"])
    if found is None:
        raise Problem("not-found", "no such documentation file")
    body, content_type = found
    return web.Response(
        body=body,
        headers={"Content-Type": content_type, "Cache-Control": "public, max-age=86400"},
    )
