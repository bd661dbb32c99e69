"""The floor of a cold listing: the bare pipelined POP3 exchange, with nothing of ours in it.

Connect, read the greeting, USER and PASS step by step (never pipelined across
authentication: some servers drop what follows PASS), UIDL and LIST in one write,
``TOP n 0`` of every message in one pipelined write (read while it is written), QUIT. The
replies are only counted (their terminating ``.`` lines), not parsed; no HTTP, and none of
the gateway's code: an asyncio protocol over a plain TCP connection.

Whatever a listing through the gateway costs beyond this is ours; this is what the mail
server and the network cost. ``http_listing`` measures it in the same run as the gateway
and compares the two.

With ``on_header``, each TOP reply's header section is also handed to it as it arrives
(split at its terminating line and dot-unstuffed, nothing else): ``http_listing`` passes
the gateway's header summary function, and so measures the least that any listing which
summarizes every message with it can cost (the bound of the loopback goal).

    python -m tests.bench.floor --port 1110 --user u --password p   # prints seconds
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

_END = b"\r\n.\r\n"  #: the end of a multi-line reply (a body line "." is sent as "..")
TIMEOUT = 120.0


class _Counter(asyncio.Protocol):
    """Buffers status lines; counts multi-line reply ends as they stream past."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()  #: kept while ``keep`` (short replies, UIDL)
        self.keep = True
        self.ends = 0  #: multi-line reply ends seen since the last ``expect``
        self._tail = b""
        self._want: tuple[str, int] = ("", 0)
        self._done: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.keep:
            self.data += data
        # The end marker may straddle two reads: look at the last 4 bytes of the last one too.
        joined = self._tail + data
        self.ends += joined.count(_END) - self._tail.count(_END)
        self._tail = joined[-4:]
        self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("the server closed the connection"))

    def expect(self, kind: str, count: int = 1) -> asyncio.Future[None]:
        """A future done when ``count`` status lines (``kind="lines"``) or multi-line reply
        ends (``kind="ends"``) arrived since this call."""
        self.data.clear()
        self.ends = 0
        self._tail = b""
        self._want = (kind, count)
        self._done = asyncio.get_running_loop().create_future()
        self._check()
        return self._done

    def _check(self) -> None:
        kind, count = self._want
        done = self._done
        if done is None or done.done():
            return
        have = self.data.count(b"\n") if kind == "lines" else self.ends
        if have >= count:
            done.set_result(None)


class _Headers(_Counter):
    """A :class:`_Counter` that, while ``on``, also cuts the stream into replies and hands
    each one's body (its status line dropped, dot-unstuffed) to ``handle``."""

    def __init__(self, handle: Callable[[bytes], object]) -> None:
        super().__init__()
        self.handle = handle
        self.on = False
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        if self.on:
            # Every reply that ends in what has arrived is handled before the count of
            # ends (the base class) can wake the waiter.
            pending = self._pending + data
            start = 0
            end = pending.find(_END)
            while end >= 0:
                body = pending[pending.index(b"\n", start) + 1 : end + 2]
                if b"\n." in body:
                    body = body.replace(b"\n.", b"\n")
                self.handle(body)
                start = end + len(_END)
                end = pending.find(_END, start)
            self._pending = pending[start:]
        super().data_received(data)


async def exchange(
    host: str,
    port: int,
    user: str,
    password: str,
    on_header: Callable[[bytes], object] | None = None,
) -> tuple[float, int]:
    """Run the whole exchange; (seconds, message count). With ``on_header``, every TOP
    reply's header section goes to it as it arrives (see the module's docstring)."""
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    headers = None if on_header is None else _Headers(on_header)
    async with asyncio.timeout(TIMEOUT):
        transport, proto = await loop.create_connection(
            _Counter if headers is None else (lambda: headers), host, port
        )
        try:
            await proto.expect("lines")

            async def lockstep(line: bytes) -> None:
                done = proto.expect("lines")
                transport.write(line)
                await done
                if not proto.data.startswith(b"+OK"):
                    raise RuntimeError(f"{line.split()[0].decode()} refused: {proto.data[:80]!r}")

            await lockstep(b"USER " + user.encode() + b"\r\n")
            await lockstep(b"PASS " + password.encode() + b"\r\n")
            done = proto.expect("ends", 2)
            transport.write(b"UIDL\r\nLIST\r\n")
            await done
            # UIDL's body has one line per message: every line but its status line, the
            # terminator and LIST's reply.
            uidl = bytes(proto.data[: proto.data.index(_END) + 5])
            count = uidl.count(b"\n") - 2
            proto.keep = False
            if headers is not None:
                headers.on = True
            done = proto.expect("ends", count)
            transport.write(b"".join(b"TOP %d 0\r\n" % n for n in range(1, count + 1)))
            await done
            proto.keep = True
            if headers is not None:
                headers.on = False
            await lockstep(b"QUIT\r\n")
        finally:
            transport.close()
    return time.perf_counter() - began, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    seconds, count = asyncio.run(exchange(args.host, args.port, args.user, args.password))
    print(f"{seconds:.4f} s for {count} messages")


if __name__ == "__main__":
    main()
