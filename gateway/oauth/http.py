"""The HTTP client of token endpoints (aiohttp): verified TLS, a timeout on every request,
answers capped in size, no redirects, no proxies from the environment, no compression.

Only the app factory imports this module (the layers below the API know nothing of
aiohttp). Failures are :class:`TokenEndpointError` in our own words: never the endpoint's
text, never what was sent.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .errors import TokenEndpointError

#: a token answer is a few KB; anything larger is refused unread
MAX_ANSWER_BYTES = 64 * 1024


class TokenEndpointClient:
    """POSTs forms to token endpoints. One aiohttp session, opened on first use and closed
    by :meth:`close` (the app's cleanup)."""

    def __init__(self, *, timeout: float = 10.0, max_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str | None, ssl.SSLContext] = {}

    def _context(self, cafile: str | None) -> ssl.SSLContext:
        context = self._contexts.get(cafile)
        if context is None:
            # verified: the system's CAs, or the operator's bundle; hostname checked
            context = ssl.create_default_context(cafile=cafile)
            self._contexts[cafile] = context
        return context

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, connect=self.timeout, sock_read=self.timeout
                ),
                trust_env=False,
                auto_decompress=False,
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, url: str, form: Mapping[str, str], *, cafile: str | None = None
    ) -> Mapping[str, Any]:
        session = self._open()
        tls = self._context(cafile) if urlsplit(url).scheme == "https" else False
        try:
            async with session.post(
                url, data=dict(form), ssl=tls, allow_redirects=False
            ) as response:
                body = await self._read(response)
                status = response.status
        except TimeoutError:
            raise TokenEndpointError(f"timed out after {self.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TokenEndpointError(
                f"failed TLS verification ({exc.certificate_error.__class__.__name__})"
            ) from None
        except aiohttp.ClientSSLError:
            raise TokenEndpointError("failed the TLS handshake") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise TokenEndpointError(f"could not be reached ({reason.lower()})") from None
        except aiohttp.ClientError as exc:
            raise TokenEndpointError(f"broke off the answer ({type(exc).__name__})") from None
        answer = _json_object(body)
        if 200 <= status < 300:
            if answer is None:
                raise TokenEndpointError("answered something that is not a JSON object")
            return answer
        error = answer.get("error") if answer is not None else None
        code = error if isinstance(error, str) and error.isascii() and len(error) <= 64 else None
        if code is not None and 400 <= status < 500:
            raise TokenEndpointError(f"answered HTTP {status} {code}", error=code, status=status)
        raise TokenEndpointError(f"answered HTTP {status}", status=status)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self.max_bytes:
            raise TokenEndpointError(f"answered more than {self.max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await response.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise TokenEndpointError(f"answered more than {self.max_bytes} bytes")
            chunks.append(chunk)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
