"""Request ids and the one place where failures become problems."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..keys import METRICS
from ..logs import REQUEST_ID
from .errors import Problem, classify, problem_response

log = logging.getLogger("gateway.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
PASSTHROUGH_KEY = web.RequestKey("passthrough", bool)
STREAMING_KEY = web.RequestKey("streaming", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    value: str = request.get(REQUEST_ID_KEY, "")
    return value


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Accept a sane ``X-Request-ID`` or make one; echo it on every response."""
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        REQUEST_ID.reset(token)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response carries the id, streamed ones included."""
    request_id = request_id_of(request)
    if request_id:
        response.headers["X-Request-ID"] = request_id


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into ``application/problem+json``; unexpected ones are logged and
    become a 500 without details."""
    request_id = request_id_of(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "invalid-request")
        if exc.status >= 500:
            slug = "internal"
        headers = tuple((k, v) for k, v in exc.headers.items() if k.lower() == "allow")
        return problem_response(
            slug, exc.reason or "request failed", request_id=request_id, headers=headers
        )
    except Exception as exc:
        if request.get(STREAMING_KEY):
            log.warning(
                "stream aborted: %s", _describe_cause(exc), extra={"request_id": request_id}
            )
            raise
        problem = classify(exc, passthrough=bool(request.get(PASSTHROUGH_KEY, False)))
        if problem is None:
            log.exception("unexpected failure", extra={"request_id": request_id})
            problem = Problem("internal", "an unexpected error occurred; see the server logs")
        elif problem.slug.startswith(("upstream", "delete", "capability", "mailbox", "login")):
            log.warning(
                "%s: %s (%s)",
                problem.slug,
                problem.detail,
                _describe_cause(exc),
                extra={"request_id": request_id},
            )
        request.app[METRICS].problems.labels(problem.slug).inc()
        return problem_response(
            problem.slug,
            problem.detail,
            request_id=request_id,
            headers=problem.headers,
            extra=problem.extra,
        )


def _describe_cause(exc: BaseException) -> str:
    """The failure chain for the logs (server texts included, never credentials: POP3
    errors do not carry arguments)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__
    return " <- ".join(parts)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template (never by concrete path)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_latency.labels(route, request.method).observe(time.perf_counter() - started)
