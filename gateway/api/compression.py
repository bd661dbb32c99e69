"""gzip for JSON answers: only when the client asks for it, only above a size where it pays.

A client that does not send ``Accept-Encoding: gzip`` gets the bytes as they are (the
faster path: nothing to compress, nothing to inflate). Byte streams (``/raw``,
attachments) are never compressed: they are streamed, and mail is mostly compressed
already. A compressed answer's ``ETag`` is weak: the same content, other bytes (RFC 9110
section 8.8.3); ``If-None-Match`` compares weakly, so either form gets its ``304``.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

#: JSON bodies at least this long are compressed for clients that accept gzip
MIN_BYTES = 2048
#: bodies longer than this are compressed in a worker thread, off the event loop
INLINE_BYTES = 64 * 1024
#: zlib level: most of the size gain of 9 for a fraction of its time
LEVEL = 6
_COMPRESSIBLE = frozenset({"application/json"})


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (RFC 9110 section 12.5.3):
    ``gzip`` (or ``x-gzip``) with a weight above 0, else ``*`` with one."""
    if not header:
        return False
    gzip_weight = any_weight = None
    for item in header.split(","):
        coding, _, params = item.partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            gzip_weight = weight
        elif coding == "*":
            any_weight = weight
    if gzip_weight is not None:
        return gzip_weight > 0
    return any_weight is not None and any_weight > 0


def _media_type(value: str) -> str:
    """The ``type/subtype`` of a Content-Type value, lower-cased (read from the header: aiohttp's
    ``content_type`` property parses the header again and copies its parameters on every
    read, a measurable part of a warm listing's time)."""
    return value.partition(";")[0].strip().lower()


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


async def compress(request: web.Request, response: web.StreamResponse) -> None:
    """gzip ``response`` in place when it is a JSON answer of at least ``MIN_BYTES`` and
    the client accepts gzip; such answers say ``Vary: Accept-Encoding`` either way."""
    if not isinstance(response, web.Response) or response.prepared:
        return
    body = response.body
    if (
        not isinstance(body, bytes)
        or len(body) < MIN_BYTES
        or _media_type(response.headers.get("Content-Type", "")) not in _COMPRESSIBLE
        or "Content-Encoding" in response.headers
    ):
        return
    response.headers.add("Vary", "Accept-Encoding")
    if not accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return
    if len(body) <= INLINE_BYTES:
        response.body = _gzip(body)
    else:
        response.body = await asyncio.to_thread(_gzip, body)
    response.headers["Content-Encoding"] = "gzip"
    etag = response.headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        response.headers["ETag"] = "W/" + etag
