"""Misbehaving servers for the failure tests: one that never answers, and a proxy to the real
Redis that can refuse connections at first and hold replies back on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType


class _Server:
    """Bookkeeping shared by the servers: accepted connections, their tasks and writers."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, userinfo: str = "") -> str:
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    async def _start(self, *, start_serving: bool) -> None:
        # Bound but not yet serving means not listening: connections are refused.
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, start_serving=start_serving
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


class StallServer(_Server):
    """Accepts connections, reads everything, answers nothing."""

    async def __aenter__(self) -> StallServer:
        await self._start(start_serving=True)
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass


class RedisProxy(_Server):
    """A byte pipe to the real Redis. Refuses connections until ``serve()``; while
    ``hold_replies()`` is in effect, replies wait in the proxy (Redis has already executed
    the commands)."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        super().__init__()
        self._upstream = upstream
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def __aenter__(self) -> RedisProxy:
        await self._start(start_serving=False)
        return self

    async def serve(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    def hold_replies(self) -> None:
        self._flowing.clear()

    def release_replies(self) -> None:
        self._flowing.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, hold=False)),
                asyncio.create_task(self._pump(up_reader, writer, hold=True)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        while data := await source.read(65536):
            if hold:
                await self._flowing.wait()
            sink.write(data)
            await sink.drain()


class ScriptedServer(_Server):
    """Speaks just enough RESP: each command (a list of byte strings, verb upper-cased) is
    answered with the raw bytes ``answer`` returns for it."""

    def __init__(self, answer: Callable[[list[bytes]], bytes]) -> None:
        super().__init__()
        self._answer = answer
        self.commands: list[list[bytes]] = []

    async def __aenter__(self) -> ScriptedServer:
        await self._start(start_serving=True)
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while header := await reader.readline():
                assert header.startswith(b"*"), header
                command = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    command.append((await reader.readexactly(size + 2))[:-2])
                command[0] = command[0].upper()
                self.commands.append(command)
                writer.write(self._answer(command))
                await writer.drain()


def handshake_or(answer: Callable[[list[bytes]], bytes]) -> Callable[[list[bytes]], bytes]:
    """``answer`` for the cache's commands, ``+OK`` for the connection handshake."""

    def scripted(command: list[bytes]) -> bytes:
        if command[0] in (b"CLIENT", b"HELLO", b"AUTH", b"SELECT"):
            return b"+OK\r\n"
        return answer(command)

    return scripted
