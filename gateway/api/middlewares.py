"""Request ids and the one place where failures become problems."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..keys import METRICS
from ..logs import PROBLEM_KEY, REQUEST_ID
from .compression import compress
from .errors import Problem, classify, problem_response

log = logging.getLogger("gateway.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
PASSTHROUGH_KEY = web.RequestKey("passthrough", bool)
STREAMING_KEY = web.RequestKey("streaming", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: aiohttp's own HTTP errors, by status, to problem types (others: invalid-request)
_HTTP_PROBLEMS = {404: "not-found", 405: "method-not-allowed", 413: "request-too-large"}


def request_id_of(request: web.Request) -> str:
    value: str = request.get(REQUEST_ID_KEY, "")
    return value


def new_request_id() -> str:
    """A process-unique id: a random prefix per process and a counter (cheaper than a
    UUID per request; unique across replicas by the prefix)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware (one layer is cheaper than three on every request):

    - accepts a sane ``X-Request-ID`` or makes one, echoes it on every response (streamed
      ones set it before they start), and keeps it in a context variable for the logs;
    - turns every failure into ``application/problem+json``;
    - compresses large JSON answers for clients that accept gzip (api/compression.py);
    - counts and times the request by route template (never by concrete path).
    """
    started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    request_id = given if given and _REQUEST_ID.fullmatch(given) else new_request_id()
    request[REQUEST_ID_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    status = 500
    try:
        response = await _answer(request, handler, request_id)
        await compress(request, response)  # JSON for clients that accept gzip
        status = response.status
        if not response.prepared:  # streamed responses set it before they start
            response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        REQUEST_ID.reset(token)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_http(
            route, request.method, status, time.perf_counter() - started
        )


async def _answer(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    """The handler's response, or the problem for its failure; unexpected failures are
    logged and become a 500 without details."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = _HTTP_PROBLEMS.get(exc.status, "invalid-request")
        if exc.status >= 500:
            slug = "internal"
        headers = tuple((k, v) for k, v in exc.headers.items() if k.lower() == "allow")
        detail = exc.reason or "request failed"
        if slug == "request-too-large":
            # aiohttp raises HTTPRequestEntityTooLarge from request.read()/json()/post() past
            # the app's client_max_size (http.max_body_bytes)
            detail = "the request body is larger than the gateway accepts"
        request[PROBLEM_KEY] = slug
        return problem_response(slug, detail, request_id=request_id, headers=headers)
    except Exception as exc:
        if request.get(STREAMING_KEY):
            log.warning(
                "stream aborted: %s", _describe_cause(exc), extra={"request_id": request_id}
            )
            raise
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # The client went away before the response started, or the edge closed the
            # connection (a body timeout): nobody is left to answer, and it is no server
            # fault worth a traceback.
            log.info("client connection lost: %s", exc, extra={"request_id": request_id})
            request[PROBLEM_KEY] = "invalid-request"
            return problem_response(
                "invalid-request", "the connection was closed", request_id=request_id
            )
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
        request.app[METRICS].problem(problem.slug)
        request[PROBLEM_KEY] = problem.slug
        return problem_response(
            problem.slug,
            problem.detail,
            request_id=request_id,
            headers=problem.headers,
            extra=problem.extra,
        )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _describe_cause(exc: BaseException) -> str:
    """The failure chain for the logs (server texts included, never credentials: POP3
    errors do not carry arguments)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__
    return " <- ".join(parts)
