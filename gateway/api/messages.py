"""The message resources: listings, one message (parsed, raw, one attachment), deletes."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..keys import METRICS, SEND_TIMEOUT, SERVICE
from ..mail import Attachment, text_charset
from ..service import (
    MessageTooLargeError,
    Order,
    ParseFailedError,
    check_attachment_id,
    check_limit,
)
from . import serializers
from .common import IMMUTABLE, RENDERINGS, account_of, flag, json_response, not_modified, query
from .errors import Problem
from .middlewares import STREAMING_KEY, request_id_of

#: bytes of an attachment written at a time
_ATTACHMENT_CHUNK = 64 * 1024
#: text parts up to this size have their charset found on the event loop
_INLINE_SNIFF = 256 * 1024
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


def _limit(request: web.Request) -> int:
    raw = query(request, "limit") or "50"
    digits = raw.lstrip("0") or "0"  # leading zeros are fine ("0050"), huge numbers are not
    number = int(digits) if raw.isascii() and raw.isdigit() and len(digits) <= 6 else 0
    return check_limit(number)  # the service's one rule (and its message) for a page size


async def list_messages(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "read")
    limit = _limit(request)
    order = query(request, "order") or "desc"
    if order not in ("desc", "asc"):
        raise Problem("invalid-request", "order must be desc or asc")
    ordered: Order = "desc" if order == "desc" else "asc"
    page = await request.app[SERVICE].list_messages(
        account,
        limit=limit,
        cursor=query(request, "cursor"),
        order=ordered,
        fresh=flag(request, "fresh"),
    )
    etag, body = request.app[RENDERINGS].render(page)
    held = not_modified(request, etag)
    if held is not None:
        return web.Response(
            status=304,
            headers={
                "ETag": held,
                "Cache-Control": "private, no-cache",
                "Vary": "Accept-Encoding",
            },
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
    account = account_of(request, "read")
    message_id = _message_id(request)
    etag = f'"{message_id}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    service = request.app[SERVICE]
    held = not_modified(request, etag)
    if held is not None and await service.message_exists(account, message_id):
        return web.Response(
            status=304, headers={**headers, "ETag": held, "Vary": "Accept-Encoding"}
        )
    try:
        message = await unless_gone(request, service.get_message(account, message_id))
    except MessageTooLargeError as exc:
        raw_url = f"{request.path}/raw"
        raise Problem(
            "message-too-large",
            f"{exc}; fetch it from {raw_url} instead",
            extra=(("raw_url", raw_url), ("limit", exc.limit)),
        ) from exc
    except ParseFailedError as exc:
        raw_url = f"{request.path}/raw"
        raise Problem(
            "message-too-complex",
            f"{exc}; fetch it from {raw_url} instead",
            extra=(("raw_url", raw_url),),
        ) from exc
    data = {"id": message_id, "uid": message.uid, "size": message.size}
    data.update(serializers.parsed_message(message.parsed))
    return json_response(data, headers=headers)


#: seconds between two looks at whether the client of a parse is still connected
_GONE_POLL = 0.1
_T = TypeVar("_T")


async def unless_gone(request: web.Request, work: Coroutine[Any, Any, _T]) -> _T:
    """``work``'s result; if the client disconnects first, ``work`` is cancelled (its
    session dropped, its parse killed) and so is this handler: CPU and sessions go to the
    requests whose clients still wait. Only for work that changes nothing (reads)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_GONE_POLL)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                request.app[METRICS].limited("client-gone")
                task.cancel()
                await asyncio.wait({task})
                raise asyncio.CancelledError("the client went away")
    finally:
        if not task.done():
            task.cancel()


class SendStalledError(ConnectionError):
    """The client accepted no bytes for the send timeout: the transfer is aborted."""


async def send(request: web.Request, response: web.StreamResponse, chunk: bytes) -> None:
    """Write ``chunk``; :class:`SendStalledError` if the client accepts no bytes for
    ``SEND_TIMEOUT`` seconds (progress, however slow, restarts the wait)."""
    timeout = request.app[SEND_TIMEOUT]
    transport = request.transport
    write = asyncio.ensure_future(response.write(chunk))
    try:
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        while True:
            done, _ = await asyncio.wait({write}, timeout=timeout)
            if done:
                return write.result()
            now = transport.get_write_buffer_size() if transport is not None else 0
            if now >= buffered:
                request.app[METRICS].limited("send-timeout")
                raise SendStalledError(f"the client accepted no bytes in {timeout:g} s")
            buffered = now
    finally:
        if not write.done():
            write.cancel()
            write.add_done_callback(_retrieved)  # it may still end with a write error


def _retrieved(task: asyncio.Future[None]) -> None:
    """Take the outcome of an abandoned write (the transfer is aborted anyway)."""
    if not task.cancelled():
        task.exception()


async def get_raw(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "read")
    message_id = _message_id(request)
    service = request.app[SERVICE]
    etag = f'"{message_id}"'
    headers = {
        "Content-Type": "message/rfc822",
        "ETag": etag,
        "Cache-Control": IMMUTABLE,
        "Content-Disposition": f'inline; filename="{message_id}.eml"',
        "X-Content-Type-Options": "nosniff",
        "X-Request-ID": request_id_of(request),
    }
    # A message never changes for its unique-id: a 304, and the headers of a HEAD, need only
    # the session's listing, never a RETR. (No Content-Length: LIST sizes are not always what
    # RETR sends, and GET streams without one.)
    held = not_modified(request, etag)
    if held is not None or request.method == "HEAD":
        exists = await service.message_exists(account, message_id)
        if exists and held is not None:
            return web.Response(status=304, headers={"ETag": held, "Cache-Control": IMMUTABLE})
        if request.method == "HEAD":
            if not exists:
                raise Problem("not-found", "no message with that id in the mailbox")
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write_eof()
            return response
    # Spooled (the usual case), the whole message is read and its session back in the pool
    # before the block starts; else the block holds the session, and the send timeout bounds
    # how long a client that stops reading can keep it.
    async with service.open_raw(account, message_id) as raw:
        response = web.StreamResponse(headers=headers)
        # The first chunk comes before the status line goes out, so that a failure to start
        # (drop, timeout) is still answered with a problem.
        first = await anext(raw.chunks, b"")
        await response.prepare(request)
        request[STREAMING_KEY] = True
        try:
            metrics = request.app[METRICS]
            if first and request.method != "HEAD":  # HEAD: aiohttp sends what is written
                await send(request, response, first)
                metrics.streamed("raw", len(first))
                async for chunk in raw.chunks:
                    await send(request, response, chunk)
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
    account = account_of(request, "read")
    message_id = _message_id(request)
    attachment_id = request.match_info["attachment"]
    service = request.app[SERVICE]
    etag = f'"{message_id}.{attachment_id}"'
    held = not_modified(request, etag)
    if (
        held is not None
        and check_attachment_id(attachment_id)
        and await service.message_exists(account, message_id)
    ):
        # The client holds this part of a message that never changes: no RETR.
        return web.Response(status=304, headers={"ETag": held, "Cache-Control": IMMUTABLE})
    found: Attachment = await unless_gone(
        request, service.get_attachment(account, message_id, attachment_id)
    )
    content_type = found.content_type.lower()
    if not _MIME_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream"
    elif content_type.startswith("text/"):
        # a look at every byte when the part declares no known charset: off the loop if long
        if len(found.payload) <= _INLINE_SNIFF:
            charset = text_charset(found.charset, found.payload)
        else:
            charset = await asyncio.to_thread(text_charset, found.charset, found.payload)
        content_type += f"; charset={charset}"
    # The part was read with a capped RETR whose session is already back in the pool; the
    # send timeout bounds how long a client that stops reading keeps its bytes in memory.
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": content_disposition(
                found.filename, f"attachment-{attachment_id}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "ETag": etag,
            "Cache-Control": IMMUTABLE,
            "X-Request-ID": request_id_of(request),  # streamed: set before it starts
        },
    )
    payload = memoryview(found.payload)
    response.content_length = len(payload)
    await response.prepare(request)
    request[STREAMING_KEY] = True
    try:
        size = len(payload) if request.method != "HEAD" else 0  # aiohttp sends what is written
        for start in range(0, size, _ATTACHMENT_CHUNK):
            chunk = bytes(payload[start : start + _ATTACHMENT_CHUNK])
            await send(request, response, chunk)
            request.app[METRICS].streamed("attachment", len(chunk))
    except BaseException:
        if request.transport is not None:
            request.transport.abort()
        raise
    await response.write_eof()
    return response


async def delete_message(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "delete")
    message_id = _message_id(request)
    result = await request.app[SERVICE].delete_messages(account, [message_id])
    if not result.deleted:
        raise Problem("not-found", "no message with that id in the mailbox")
    return web.Response(status=204)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=500)


async def delete_messages(request: web.Request) -> web.StreamResponse:
    account = account_of(request, "delete")
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
    return json_response(serializers.delete_result(result))
