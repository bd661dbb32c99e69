"""What every handler shares: resolving the caller's account, reading flags, answering
JSON, conditional requests. Handlers parse and check input, call the service, shape JSON
(api/serializers.py). Nothing else."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..accounts import Account
from ..keys import DIRECTORY
from .auth import resolve_account
from .errors import Problem
from .middlewares import PASSTHROUGH_KEY
from .serializers import PageRenderings, dumps

_TRUE = {"true", "1", "yes"}
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


def not_modified(request: web.Request, etag: str) -> bool:
    given = request.headers.get("If-None-Match", "")
    return any(tag.strip() in (etag, "*") for tag in given.split(","))
