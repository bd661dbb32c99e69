"""POP3 framing over an asyncio transport.

This layer knows bytes, lines and timeouts, not commands:

- :class:`POP3Stream` owns the transport: it reads status lines (with a length cap), multi-line
  bodies (dot-unstuffed, as whole bytes or as a flow of chunks), writes command lines, and
  upgrades to TLS (STLS) only when nothing is buffered.
- :func:`scan_body` is the pure multi-line parser; it works on any chunking of the input and
  keeps no line in memory, so message lines of any length stream through.

Every wait for the network has a timeout. Any failure while reading or writing (timeout, EOF,
cancellation, garbage) aborts the transport: a half-read reply can never be mistaken for the
next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import ssl
from collections.abc import AsyncGenerator
from typing import Final, NamedTuple

from .errors import (
    POP3ConnectionError,
    POP3InjectionError,
    POP3LineTooLongError,
    POP3ProtocolError,
    POP3ResponseTooLargeError,
    POP3TimeoutError,
    POP3TLSError,
    server_address,
)

CRLF: Final = b"\r\n"
_LF: Final = 0x0A
_CR: Final = 0x0D
#: A line that starts with a dot (after its LF). Found with ``re``: for a two-byte needle
#: that seldom occurs, its search reads a header section in about two thirds of the time
#: of ``bytearray.find`` (timed: 2.0 against 2.8 us per 1.9 KB reply, framing included).
_DOT_LINE: Final = re.compile(rb"\n\.")
_DOT: Final = 0x2E

#: Reading pauses when this much unread data is buffered (flow control toward the server).
READ_HIGH_WATER: Final = 256 * 1024
#: Reading resumes below this.
READ_LOW_WATER: Final = 64 * 1024
#: Largest chunk handed out by :meth:`POP3Stream.iter_body`.
CHUNK_SIZE: Final = 64 * 1024


class StatusLine(NamedTuple):
    """A parsed ``+OK`` / ``-ERR`` line (or a SASL ``+`` continuation).

    A named tuple, not a frozen dataclass: as immutable, and made several times faster (one
    per reply of a pipelined burst; a frozen dataclass sets each field through
    ``object.__setattr__``)."""

    ok: bool
    code: str | None
    text: str
    continuation: bool = False

    @classmethod
    def parse(cls, line: bytes) -> StatusLine:
        """Parse one status line (without its line ending).

        Raises :class:`POP3ProtocolError` for anything that is not a POP3 status.
        """
        if line.startswith(b"+OK"):
            ok, rest = True, line[3:]
        elif line.startswith(b"-ERR"):
            ok, rest = False, line[4:]
        elif line == b"+" or line.startswith(b"+ "):
            return cls(True, None, line[2:].decode("ascii", "replace"), continuation=True)
        else:
            raise POP3ProtocolError(f"not a POP3 status line: {_preview(line)}")
        if rest and rest[:1] not in (b" ", b"\t"):
            # "+OKAY", "-ERRor": not a status word.
            raise POP3ProtocolError(f"not a POP3 status line: {_preview(line)}")
        text = rest.strip().decode("utf-8", "replace")
        code: str | None = None
        if text.startswith("["):
            end = text.find("]")
            if end > 1:
                code = text[1:end].upper()
                text = text[end + 1 :].lstrip()
        return cls(ok, code, text)


class TruncatedBody(bytes):
    """A multi-line body cut at its reply's cap: the first bytes the server sent, while the
    rest was read and dropped (``skip_to``), so the session stays usable."""

    __slots__ = ()


def _preview(data: bytes | bytearray, limit: int = 60) -> str:
    """A short, printable, single-line rendering of server bytes for error messages."""
    shown = bytes(data[:limit]).decode("ascii", "backslashreplace")
    shown = shown.replace("\r", "\\r").replace("\n", "\\n")
    return repr(shown + ("..." if len(data) > limit else ""))


def scan_body(
    buf: bytearray, pos: int, at_line_start: bool, out: list[bytes | bytearray]
) -> tuple[int, bool, bool]:
    """Parse as much of a multi-line body as ``buf[pos:]`` allows.

    Appends the dot-unstuffed data to ``out`` and returns ``(pos, at_line_start, done)``: where
    parsing stopped, whether that is the start of a line, and whether the terminating ``.``
    line was consumed. A line is ended by LF, with or without CR before it (servers that send
    bare LF are tolerated); the terminator is a line that is exactly ``.``. Stops early (not
    done) when the bytes after a line-leading dot are not there yet.
    """
    n = len(buf)
    while pos < n:
        if at_line_start and buf[pos] == _DOT:
            if pos + 1 >= n:
                return pos, True, False
            nxt = buf[pos + 1]
            if nxt == _LF:
                return pos + 2, True, True
            if nxt == _CR:
                if pos + 2 >= n:
                    return pos, True, False
                if buf[pos + 2] == _LF:
                    return pos + 3, True, True
            pos += 1  # byte-stuffed: drop the leading dot
            at_line_start = False
            continue
        hit = buf.find(b"\n.", pos)
        if hit < 0:
            out.append(buf[pos:n])
            return n, buf[n - 1] == _LF, False
        out.append(buf[pos : hit + 1])
        pos = hit + 1
        at_line_start = True
    return pos, at_line_start, False


def complete_reply(
    buf: bytearray, max_line: int, multiline: bool
) -> tuple[bytes, bytes | None, int]:
    """A whole reply at the start of ``buf``, without awaiting: ``(status line, body,
    consumed)``, or ``consumed == 0`` when not all of it has arrived (nor a line longer than
    ``max_line``: the slow path reports that).

    The body (for ``multiline`` and a ``+OK`` line, else None) is dot-unstuffed exactly as
    :func:`scan_body` does it; it is used when many replies are already buffered (a
    pipelined burst), where the general reader's per-piece bookkeeping would dominate.
    """
    hit = buf.find(b"\n")
    if hit < 0 or hit > max_line:
        return b"", None, 0
    line = bytes(buf[: hit - 1 if hit > 0 and buf[hit - 1] == _CR else hit])
    if not (multiline and line.startswith(b"+OK")):
        return line, None, hit + 1
    n = len(buf)
    stuffed = False
    # Every line-leading dot of the body follows an LF (the first one the status line's).
    found = _DOT_LINE.search(buf, hit)
    while found is not None:
        dot = found.start()
        after = dot + 2
        if after >= n:
            return b"", None, 0
        nxt = buf[after]
        if nxt == _LF:
            end = after + 1
            break
        if nxt == _CR:
            if after + 1 >= n:
                return b"", None, 0
            if buf[after + 1] == _LF:
                end = after + 2
                break
        stuffed = True
        found = _DOT_LINE.search(buf, after)
    else:
        return b"", None, 0
    if not stuffed:
        return line, bytes(buf[hit + 1 : dot + 1]), end
    # Drop the dot that starts each stuffed line (the slice keeps the status line's LF).
    return line, bytes(buf[hit : dot + 1]).replace(b"\n.", b"\n")[1:], end


class _ReaderProtocol(asyncio.Protocol):
    """Buffers what the server sends and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self._read_paused and len(self.buffer) > READ_HIGH_WATER and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.exception = exc
        self._wake()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by POP3Stream -------------------------------------------------------------
    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def consumed(self, count: int) -> None:
        """Drop ``count`` bytes from the front of the buffer; resume reading if paused."""
        del self.buffer[:count]
        if self._read_paused and len(self.buffer) < READ_LOW_WATER and self.transport:
            self._read_paused = False
            self.transport.resume_reading()

    async def wait_for_data(self) -> None:
        if self._read_paused and self.transport:
            # The caller consumed nothing yet wants more: let the server send.
            self._read_paused = False
            self.transport.resume_reading()
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def wait_writable(self) -> None:
        if not self._write_paused or self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiter = waiter
        await waiter


class POP3Stream:
    """A POP3 byte stream: status lines, multi-line bodies, command lines, STLS.

    Not safe for concurrent use: one command (or one pipeline) at a time, which the client
    layer guarantees.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _ReaderProtocol,
        *,
        max_line: int,
        idle_timeout: float,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._max_line = max_line
        self.idle_timeout = idle_timeout
        #: the server's host:port, named in errors
        self.address: str | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        connect_timeout: float,
        tls_timeout: float,
        max_line: int,
        idle_timeout: float,
    ) -> POP3Stream:
        """Connect (and, with ``ssl_context``, do the implicit TLS handshake)."""
        loop = asyncio.get_running_loop()
        protocol = _ReaderProtocol()
        address = server_address(host, port)
        try:
            async with asyncio.timeout(connect_timeout):
                transport, _ = await loop.create_connection(lambda: protocol, host, port)
        except TimeoutError:
            raise POP3TimeoutError(
                f"connecting to {address} took longer than {connect_timeout:g}s",
                phase="connect",
                address=address,
            ) from None
        except (OSError, UnicodeError) as exc:
            # UnicodeError: a name that cannot be looked up at all (an empty or long label)
            cause = _os_cause(exc) if isinstance(exc, OSError) else "not a valid host name"
            raise POP3ConnectionError(
                f"cannot connect to {address}: {cause}",
                address=address,
                cause=cause,
                connecting=True,
            ) from exc
        assert isinstance(transport, asyncio.Transport)
        stream = cls(transport, protocol, max_line=max_line, idle_timeout=idle_timeout)
        stream.address = address
        if ssl_context is not None:
            await stream._handshake(ssl_context, server_hostname, tls_timeout, "TLS")
        return stream

    # -- state ---------------------------------------------------------------------------
    @property
    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol.closed

    def get_extra_info(self, name: str) -> object:
        return self._transport.get_extra_info(name)

    def abort(self) -> None:
        """Drop the connection at once (no goodbye): used when the session is broken."""
        self._transport.abort()

    async def close(self, timeout: float = 2.0) -> None:
        """Close politely: flush what is written, then close; abort if that stalls."""
        if self._transport.is_closing():
            return
        self._transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._protocol.closed:
                    await self._protocol.wait_for_data()
        if not self._protocol.closed:
            self._transport.abort()

    # -- reading -----------------------------------------------------------------------
    async def _fill(self, timeout: float, phase: str, where: str = "") -> None:
        """Wait until more bytes arrive; raise on EOF or after ``timeout`` seconds.

        ``where`` (e.g. "inside a multi-line reply") completes the error message.
        """
        if self._protocol.closed:
            raise self._eof_error(where)
        try:
            async with asyncio.timeout(timeout):
                await self._protocol.wait_for_data()
        except TimeoutError:
            raise POP3TimeoutError(
                f"no answer from the server within {timeout:g}s", phase=phase, address=self.address
            ) from None
        if self._drained_and_closed():
            raise self._eof_error(where)

    def _drained_and_closed(self) -> bool:
        return self._protocol.closed and not self._protocol.buffer

    def _eof_error(self, where: str = "") -> POP3ConnectionError:
        suffix = f" {where}" if where else ""
        exc = self._protocol.exception
        if isinstance(exc, ssl.SSLError):
            cause = _ssl_cause(exc)
            return POP3TLSError(f"TLS failed{suffix}: {cause}", address=self.address, cause=cause)
        if exc is not None:
            cause = _os_cause(exc) if isinstance(exc, OSError) else "the connection broke"
            return POP3ConnectionError(
                f"the connection broke{suffix}: {exc}", address=self.address, cause=cause
            )
        return POP3ConnectionError(
            f"the server closed the connection{suffix}",
            address=self.address,
            cause="the server closed the connection",
        )

    async def read_line(self, timeout: float, phase: str = "command") -> bytes:
        """One line without its ending (CRLF, or a bare LF from a broken server).

        Raises :class:`POP3LineTooLongError` once more than ``max_line`` bytes arrive
        without a line end.
        """
        buf = self._protocol.buffer
        start = 0
        while True:
            hit = buf.find(b"\n", start)
            if hit >= 0:
                if hit > self._max_line:
                    raise POP3LineTooLongError(
                        f"a reply line of {hit} bytes passes the {self._max_line}-byte cap"
                    )
                end = hit - 1 if hit > 0 and buf[hit - 1] == _CR else hit
                line = bytes(buf[:end])
                self._protocol.consumed(hit + 1)
                return line
            if len(buf) > self._max_line:
                raise POP3LineTooLongError(
                    f"a reply line passes the {self._max_line}-byte cap without ending"
                )
            if self._protocol.closed:
                if buf:
                    raise POP3ProtocolError(
                        f"the connection closed inside a reply line: {_preview(buf)}"
                    )
                raise self._eof_error()
            start = len(buf)
            await self._fill(timeout, phase)

    def take_reply(
        self,
        multiline: bool,
        *,
        max_bytes: int | None = None,
        command: str | None = None,
        skip_to: int | None = None,
    ) -> tuple[bytes, bytes | None] | None:
        """The next reply if all of it is already buffered (see :func:`complete_reply`),
        consumed; else None and nothing consumed.

        ``max_bytes`` and ``skip_to`` cap the body as :meth:`read_body` does (a whole reply
        already buffered is at most the read buffer's size, so the check can come after
        parsing).
        """
        line, body, used = complete_reply(self._protocol.buffer, self._max_line, multiline)
        if not used:
            return None
        if max_bytes is not None and body is not None and len(body) > max_bytes:
            if skip_to is None or len(body) > skip_to:
                raise POP3ResponseTooLargeError(skip_to or max_bytes, command)
            body = TruncatedBody(body[:max_bytes])
        self._protocol.consumed(used)
        return line, body

    async def read_body(
        self,
        *,
        max_bytes: int | None = None,
        command: str | None = None,
        skip_to: int | None = None,
    ) -> bytes:
        """A whole multi-line body, dot-unstuffed, line endings as the server sent them.

        With ``max_bytes``, raises :class:`POP3ResponseTooLargeError` (naming ``command``)
        as soon as the body grows past it, before reading more: what is held stays below
        the cap plus one read buffer, however long the server goes on. The stream is then
        mid-reply: the caller must abort it. With ``skip_to`` as well, a body past
        ``max_bytes`` is read on and dropped (flat memory) up to ``skip_to`` bytes in all,
        and its first ``max_bytes`` are returned as a :class:`TruncatedBody`: the session
        stays usable; past ``skip_to``, the error as above.
        """
        out: list[bytes | bytearray] = []
        size = 0
        kept: bytes | None = None
        async for chunk in self._body_chunks(out):
            size += len(chunk)
            if max_bytes is None or size <= max_bytes:
                continue
            if skip_to is None or size > skip_to:
                raise POP3ResponseTooLargeError(skip_to or max_bytes, command)
            if kept is None:
                kept = b"".join(out)[:max_bytes]
            out.clear()  # what is past the cap is dropped as it comes
        return b"".join(out) if kept is None else TruncatedBody(kept)

    async def iter_body(self) -> AsyncGenerator[bytes, None]:
        """The multi-line body as a flow of chunks of at most :data:`CHUNK_SIZE` bytes.

        One parsed piece can be as large as the read buffer (it fills to its high-water
        mark and beyond while the consumer is slow): such a piece is cut, so that what the
        consumer holds at a time stays bounded however the bytes arrived."""
        out: list[bytes | bytearray] = []
        pending = 0
        async for piece in self._body_chunks(out):
            pending += len(piece)
            if pending < CHUNK_SIZE:
                continue
            data = b"".join(out)
            out.clear()
            whole = len(data) - len(data) % CHUNK_SIZE
            if whole == len(data):
                # the common case: a chunk of exactly CHUNK_SIZE, no copy
                for start in range(0, whole, CHUNK_SIZE):
                    yield data if whole == CHUNK_SIZE else data[start : start + CHUNK_SIZE]
                pending = 0
                continue
            for start in range(0, whole, CHUNK_SIZE):
                yield data[start : start + CHUNK_SIZE]
            rest = data[whole:]
            out.append(rest)
            pending = len(rest)
        if out:
            yield b"".join(out)

    async def _body_chunks(
        self, out: list[bytes | bytearray]
    ) -> AsyncGenerator[bytes | bytearray, None]:
        """Parse the body, appending to ``out``, yielding each newly appended piece."""
        proto = self._protocol
        at_line_start = True
        while True:
            before = len(out)
            pos, at_line_start, done = scan_body(proto.buffer, 0, at_line_start, out)
            proto.consumed(pos)
            unparsed = len(proto.buffer)  # at most a line-leading "." or ".\r"
            for piece in out[before:]:
                yield piece
            if done:
                return
            if len(proto.buffer) > unparsed:
                # More arrived while the consumer held the pieces (a slow HTTP client): parse
                # it first. Waiting for yet more could wait forever when the server has
                # already sent the rest of the reply.
                continue
            if proto.closed and proto.buffer:
                # A lone "." (or ".\r") at the very end of what the server sent before closing.
                raise POP3ProtocolError("the connection closed inside a multi-line reply")
            await self._fill(self.idle_timeout, "idle", "inside a multi-line reply")

    # -- writing -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.is_closing:
            raise self._eof_error()
        self._transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait until the transport accepted what was written (bounded)."""
        try:
            async with asyncio.timeout(timeout):
                await self._protocol.wait_writable()
        except TimeoutError:
            raise POP3TimeoutError(
                f"the server did not read what was sent within {timeout:g}s",
                phase="command",
                address=self.address,
            ) from None
        if self._protocol.closed:
            raise self._eof_error()

    # -- TLS upgrade ---------------------------------------------------------------------
    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout: float
    ) -> None:
        """Upgrade to TLS after STLS ``+OK``.

        Anything already buffered arrived in plaintext after the ``+OK`` and before the
        handshake: that is response injection (RFC 2595 / CVE-2011-0411 family), so the
        session is aborted instead of discarding or trusting those bytes.
        """
        if self._protocol.buffer:
            count = len(self._protocol.buffer)
            self.abort()
            raise POP3InjectionError(
                f"{count} plaintext byte(s) arrived between STLS +OK and the TLS handshake",
                address=self.address,
                cause="plaintext arrived before the TLS handshake (response injection)",
            )
        await self._handshake(context, server_hostname, timeout, "STLS")

    async def _handshake(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        what: str,
    ) -> None:
        """Run the TLS handshake on the current transport; any failure aborts it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                new_transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    context,
                    server_hostname=server_hostname,
                    # Our own timeout above fires first and names the phase.
                    ssl_handshake_timeout=timeout + 5,
                )
        except TimeoutError:
            self.abort()
            raise POP3TimeoutError(
                f"the {what} handshake took longer than {timeout:g}s",
                phase="tls",
                address=self.address,
            ) from None
        except ssl.SSLError as exc:
            self.abort()
            cause = _ssl_cause(exc, server_hostname)
            raise POP3TLSError(
                f"{what} handshake failed: {_ssl_reason(exc, cause)}",
                address=self.address,
                cause=cause,
            ) from exc
        except (OSError, RuntimeError) as exc:
            self.abort()
            cause = (
                _os_cause(exc)
                if isinstance(exc, OSError)
                else "the connection closed during the handshake"
            )
            raise POP3TLSError(
                f"{what} handshake failed: {exc}", address=self.address, cause=cause
            ) from exc
        if new_transport is None:  # pragma: no cover - only when the loop is closing
            self.abort()
            raise POP3TLSError(f"{what} handshake failed: the connection closed")
        assert isinstance(new_transport, asyncio.Transport)
        self._transport = new_transport
        self._protocol.transport = new_transport


def _ssl_reason(exc: ssl.SSLError, cause: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed ({cause})"
    return cause


#: OpenSSL's X509_V_ERR_* codes, in our words
_VERIFY_CAUSES: Final = {
    2: "certificate issued by an unknown authority",  # UNABLE_TO_GET_ISSUER_CERT
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "self-signed certificate in the chain (a CA that is not trusted)",
    20: "certificate issued by an unknown authority",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "the chain cannot be verified (the server sends no intermediate certificate?)",
    23: "certificate has been revoked",
    62: "hostname mismatch",
    64: "IP address mismatch",
}
#: OpenSSL's reasons for a handshake that failed before any certificate was looked at
_HANDSHAKE_CAUSES: Final = {
    "WRONG_VERSION_NUMBER": "the server did not answer with TLS (plaintext POP3 on this port?)",
    "RECORD_LAYER_FAILURE": "the server did not answer with TLS (plaintext POP3 on this port?)",
    "PACKET_LENGTH_TOO_LONG": "the server did not answer with TLS (plaintext POP3 on this port?)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.2 or newer is required)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.2 or newer is required)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (no cipher in common?)",
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection during the handshake",
}


def _ssl_cause(exc: ssl.SSLError, server_hostname: str | None = None) -> str:
    """What went wrong with TLS, in a few words of our own (never the server's)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        cause = _VERIFY_CAUSES.get(exc.verify_code)
        if cause is None:
            return exc.verify_message or "certificate verification failed"
        if exc.verify_code in (62, 64) and server_hostname:
            cause += f" (the certificate is not valid for {server_hostname})"
        return cause
    reason = exc.reason or ""
    return _HANDSHAKE_CAUSES.get(reason) or reason.lower().replace("_", " ") or str(exc)


_ERRNO_CAUSES: Final = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "the connection broke",
    errno.ETIMEDOUT: "timed out",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}
_NAME_NOT_FOUND: Final = {
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
}


def _os_cause(exc: OSError) -> str:
    """What went wrong with a connection, in a few words of our own."""
    if isinstance(exc, socket.gaierror):
        if exc.errno in _NAME_NOT_FOUND:
            return "the name did not resolve"
        if exc.errno == socket.EAI_AGAIN:
            return "the name did not resolve (temporary DNS failure)"
        return f"the name did not resolve ({exc.strerror or exc})"
    if exc.errno in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[exc.errno]
    if exc.errno is None:
        # asyncio, when every address of a name failed: "Multiple exceptions: [Errno 111] ..."
        codes = sorted({int(n) for n in re.findall(r"\[Errno (\d+)\]", str(exc))})
        if codes:
            return ", ".join(dict.fromkeys(_ERRNO_CAUSES.get(c) or os.strerror(c) for c in codes))
    return str(exc.strerror or exc)
