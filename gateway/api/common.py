"""What every handler shares: resolving the caller's account, reading flags, answering
JSON, conditional requests. Handlers parse and check input, call the service, shape JSON
(api/serializers.py). Nothing else."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..accounts import Account
from ..keys import DIRECTORY
from .auth import resolve_account
from .errors import Problem
from .middlewares import PASSTHROUGH_KEY
from .serializers import PageRenderings, dumps

_TRUE = {"true", "1", "yes"}
#: one entry of an If-None-Match list: ``*``, or an entity tag, weak or strong
_ENTITY_TAGS = re.compile(r'\*|(W/)?("[\x21\x23-\x7E\x80-\xFF]*")')
_FALSE = {"false", "0", "no"}
IMMUTABLE = "private, max-age=31536000, immutable"
#: Rendered listing pages (the API layer's own cache: pages are immutable).
RENDERINGS: web.AppKey[PageRenderings] = web.AppKey("renderings", PageRenderings)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def account_of(request: web.Request, scope: str) -> Account:
    account = resolve_account(request, request.app[DIRECTORY], scope)
    request[PASSTHROUGH_KEY] = account.passthrough
    return account


def query(request: web.Request, name: str) -> str | None:
    """An optional query parameter; an empty value (``?cursor=``) is the same as none, as
    forms and URL templates send them."""
    return request.query.get(name) or None


def flag(request: web.Request, name: str) -> bool:
    value = query(request, name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise Problem("invalid-request", f"{name} must be true or false")


def not_modified(request: web.Request, etag: str) -> str | None:
    """Whether ``If-None-Match`` matches ``etag`` by the weak comparison (RFC 9110 section
    13.1.2: ``W/"x"`` matches ``"x"``; a list matches if one entry does; ``*`` matches any):
    the entity tag a ``304`` then carries (the one the client holds), else None."""
    wanted = etag.removeprefix("W/")
    for header in request.headers.getall("If-None-Match", ()):
        for match in _ENTITY_TAGS.finditer(header):
            if match.group(0) == "*":
                return etag
            if match.group(2) == wanted:
                return match.group(0)
    return None
