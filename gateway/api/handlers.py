"""Route handlers: parse and check input, call the service, shape JSON. Nothing else."""

from __future__ import annotations

import hmac
import re
import urllib.parse
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import contract
from ..accounts import Account
from ..keys import DIRECTORY, LIFECYCLE, METRICS, SERVICE
from ..mail import Attachment
from ..service import MessageTooLargeError, Order, check_limit
from . import serializers
from .auth import resolve_account
from .errors import Problem
from .middlewares import PASSTHROUGH_KEY, STREAMING_KEY, request_id_of
from .serializers import PageRenderings, dumps

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
IMMUTABLE = "private, max-age=31536000, immutable"
#: Rendered listing pages (the API layer's own cache: pages are immutable).
RENDERINGS: web.AppKey[PageRenderings] = web.AppKey("renderings", PageRenderings)


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _account(request: web.Request, scope: str) -> Account:
    account = resolve_account(request, request.app[DIRECTORY], scope)
    request[PASSTHROUGH_KEY] = account.passthrough
    return account


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise Problem("invalid-request", f"{name} must be true or false")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    number = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    return check_limit(number)  # the service's one rule (and its message) for a page size


def _not_modified(request: web.Request, etag: str) -> bool:
    given = request.headers.get("If-None-Match", "")
    return any(tag.strip() in (etag, "*") for tag in given.split(","))


async def mailbox_stats(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    stats = await request.app[SERVICE].stats(account, fresh=_flag(request, "fresh"))
    return _json(serializers.stats(account.mailbox_id, stats))


async def list_messages(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    limit = _limit(request)
    order = request.query.get("order", "desc")
    if order not in ("desc", "asc"):
        raise Problem("invalid-request", "order must be desc or asc")
    ordered: Order = "desc" if order == "desc" else "asc"
    page = await request.app[SERVICE].list_messages(
        account,
        limit=limit,
        cursor=request.query.get("cursor"),
        order=ordered,
        fresh=_flag(request, "fresh"),
    )
    etag, body = request.app[RENDERINGS].render(page)
    if _not_modified(request, etag):
        return web.Response(
            status=304, headers={"ETag": etag, "Cache-Control": "private, no-cache"}
        )
    return web.Response(
        body=body,
        headers={
            "Content-Type": "application/json",
            "ETag": etag,
            "Cache-Control": "private, no-cache",
        },
    )


def _message_id(request: web.Request) -> str:
    # Checked by the service (decode_id) before any POP3 traffic.
    return request.match_info["id"]


async def get_message(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    message_id = _message_id(request)
    etag = f'"{message_id}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    service = request.app[SERVICE]
    if _not_modified(request, etag) and await service.message_exists(account, message_id):
        return web.Response(status=304, headers=headers)
    try:
        message = await service.get_message(account, message_id)
    except MessageTooLargeError as exc:
        raw_url = f"{request.path}/raw"
        raise Problem(
            "message-too-large",
            f"{exc}; fetch it from {raw_url} instead",
            extra=(("raw_url", raw_url), ("limit", exc.limit)),
        ) from exc
    data = {"id": message_id, "uid": message.uid, "size": message.size}
    data.update(serializers.parsed_message(message.parsed))
    return _json(data, headers=headers)


async def get_raw(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    message_id = _message_id(request)
    service = request.app[SERVICE]
    async with service.open_raw(account, message_id) as raw:
        response = web.StreamResponse(
            headers={
                "Content-Type": "message/rfc822",
                "ETag": f'"{message_id}"',
                "Cache-Control": IMMUTABLE,
                "Content-Disposition": f'inline; filename="{message_id}.eml"',
                "X-Content-Type-Options": "nosniff",
                "X-Request-ID": request_id_of(request),
            }
        )
        # The first chunk comes before the status line goes out, so that a failure to start
        # (drop, timeout) is still answered with a problem.
        first = await anext(raw.chunks, b"")
        await response.prepare(request)
        request[STREAMING_KEY] = True
        try:
            metrics = request.app[METRICS]
            if first:
                await response.write(first)
                metrics.streamed("raw", len(first))
            async for chunk in raw.chunks:
                await response.write(chunk)
                metrics.streamed("raw", len(chunk))
        except BaseException:
            # Headers are gone: the only honest signal left is a broken transfer (no final
            # chunk), never a complete-looking truncated message.
            if request.transport is not None:
                request.transport.abort()
            raise
    await response.write_eof()
    return response


def content_disposition(filename: str | None, fallback: str) -> str:
    """``attachment`` with an ASCII-safe filename and the exact one in RFC 5987 form."""
    name = filename or fallback
    ascii_name = "".join(c if 0x20 < ord(c) < 0x7F and c not in '"\\;%' else "_" for c in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{ascii_name[:150]}\"; filename*=UTF-8''{quoted}"


async def get_attachment(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    message_id = _message_id(request)
    attachment_id = request.match_info["attachment"]
    found: Attachment = await request.app[SERVICE].get_attachment(
        account, message_id, attachment_id
    )
    request.app[METRICS].streamed("attachment", len(found.payload))
    content_type = found.content_type.lower()
    if not _MIME_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream"
    return web.Response(
        body=found.payload,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": content_disposition(
                found.filename, f"attachment-{attachment_id}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "ETag": f'"{message_id}.{attachment_id}"',
            "Cache-Control": IMMUTABLE,
        },
    )


async def delete_message(request: web.Request) -> web.StreamResponse:
    account = _account(request, "delete")
    message_id = _message_id(request)
    result = await request.app[SERVICE].delete_messages(account, [message_id])
    if not result.deleted:
        raise Problem("not-found", "no message with that id in the mailbox")
    return web.Response(status=204)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=500)


async def delete_messages(request: web.Request) -> web.StreamResponse:
    account = _account(request, "delete")
    if request.content_type != "application/json":
        raise Problem("invalid-request", "send the ids as application/json")
    try:
        body = DeleteRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Problem("invalid-request", f"{where}: {first['msg']}") from None
    if len(set(body.ids)) != len(body.ids):
        raise Problem("invalid-request", "ids must not repeat")
    result = await request.app[SERVICE].delete_messages(account, body.ids)
    return _json(serializers.delete_result(result))


async def check_mailbox(request: web.Request) -> web.StreamResponse:
    account = _account(request, "read")
    return _json(serializers.check_result(await request.app[SERVICE].check(account)))


async def healthz(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


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
        return _json({"status": "not-ready", "checks": checks}, status=503)
    return _json({"status": "ready", "checks": checks})


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


MAILBOX = "/v1/mailboxes/{mailbox:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
# "delete" is the batch-delete resource, never a message id (ids are canonical base64url of
# unique-ids, and "delete" is not canonical).
MESSAGE = MAILBOX + "/messages/{id:(?!delete$)[^/]+}"


def setup_routes(app: web.Application) -> None:
    app[RENDERINGS] = PageRenderings()
    router = app.router
    router.add_get(MAILBOX, mailbox_stats)
    router.add_get(MAILBOX + "/messages", list_messages)
    router.add_post(MAILBOX + "/messages/delete", delete_messages)
    router.add_post(MAILBOX + "/check", check_mailbox)
    router.add_get(MESSAGE, get_message)
    router.add_delete(MESSAGE, delete_message)
    router.add_get(MESSAGE + "/raw", get_raw)
    router.add_get(MESSAGE + "/attachments/{attachment:[^/]+}", get_attachment)
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/metrics", metrics)
    router.add_get("/openapi.json", openapi_json)
    router.add_get("/docs", docs_page)
    router.add_get("/docs/{asset}", docs_asset)
