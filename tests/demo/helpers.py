"""Clients for the demo server tests: CPython's poplib in a thread, and raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import poplib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from gateway.demo import DemoPOP3Server, POP3Server

T = TypeVar("T")

TIMEOUT = 5.0


async def with_poplib(server: DemoPOP3Server, session: Callable[[poplib.POP3], T]) -> T:
    """Run `session` on a poplib connection in a worker thread; the socket is always closed."""

    def run() -> T:
        pop = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
        try:
            return session(pop)
        finally:
            pop.close()

    return await asyncio.to_thread(run)


def poplib_login(pop: poplib.POP3, credentials: tuple[str, str] = ("demo", "demo")) -> None:
    pop.user(credentials[0])
    pop.pass_(credentials[1])


class Raw:
    """A byte-level client on the test's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def multi(self, timeout: float = TIMEOUT) -> bytes:
        """The rest of a multi-line reply, terminating line included."""
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n.\r\n"), timeout)

    async def command(self, line: bytes) -> bytes:
        await self.send(line + b"\r\n")
        return await self.line()

    async def exactly(self, n: int, timeout: float = TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def rest(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def silent(self, seconds: float = 0.2) -> bool:
        """True if nothing arrives (not even EOF) within `seconds`."""
        try:
            await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return True
        return False

    async def greeting(self) -> bytes:
        line = await self.line()
        assert line.startswith(b"+OK "), line
        return line

    async def login(self, user: bytes = b"demo", password: bytes = b"demo") -> None:
        await self.greeting()
        assert (await self.command(b"USER " + user)).startswith(b"+OK")
        assert (await self.command(b"PASS " + password)).startswith(b"+OK")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(server: POP3Server) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    client = Raw(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def unstuff(body: bytes) -> bytes:
    """A multi-line reply body (after the status line, with the terminating line) as the
    message data: the terminating line removed and one leading dot taken off each line."""
    assert body.endswith(b".\r\n")
    lines = body[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:-1])
