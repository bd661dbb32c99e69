"""A fault-injecting TCP proxy on loopback, run on the test's event loop.

It sits between the gateway and a real server (Dovecot) and, per connection, can:

- ``cut_on(command)``: close both sides as soon as the client sends a line starting with
  ``command`` (the server never sees it);
- ``blackhole_after(command)``: forward that line, then drop everything the server answers
  and close the client side (the server acted, the client never hears about it);
- ``cut_reply_after(nbytes)``: close after forwarding ``nbytes`` of server output that
  follow the client's next line starting with ``command``;
- ``stall_on(command)``: stop forwarding server output once the client sent ``command``.

Rules apply to every connection opened after they are set (``times`` limits how many).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

Action = Literal["cut", "blackhole", "cut_reply", "stall"]


@dataclass
class _Rule:
    command: bytes
    action: Action
    nbytes: int = 0
    times: int | None = 1
    seq: int = 0


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._rules: list[_Rule] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._seq = 0
        self.connections = 0
        self.fired: list[str] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()

    # -- rules -----------------------------------------------------------------------------
    def _add(self, rule: _Rule) -> None:
        self._seq += 1
        rule.seq = self._seq
        self._rules.append(rule)

    def cut_on(self, command: bytes, times: int | None = 1) -> None:
        self._add(_Rule(command.upper(), "cut", times=times))

    def blackhole_after(self, command: bytes, times: int | None = 1) -> None:
        self._add(_Rule(command.upper(), "blackhole", times=times))

    def cut_reply_after(self, command: bytes, nbytes: int, times: int | None = 1) -> None:
        self._add(_Rule(command.upper(), "cut_reply", nbytes, times))

    def stall_on(self, command: bytes, times: int | None = 1) -> None:
        self._add(_Rule(command.upper(), "stall", times=times))

    def _take(self, line: bytes, opened: int) -> _Rule | None:
        """The first rule set before the connection ``opened`` that matches ``line``."""
        for rule in self._rules:
            if rule.seq > opened:
                continue
            if rule.times != 0 and line.upper().startswith(rule.command):
                if rule.times is not None:
                    rule.times -= 1
                self.fired.append(f"{rule.action} {rule.command.decode()}")
                return rule
        return None

    # -- plumbing --------------------------------------------------------------------------
    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._seq += 1
        opened = self._seq
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self._target)
        except OSError:
            c_writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers.update((c_writer, s_writer))
        state: dict[str, object] = {"mode": "pass", "budget": 0}

        def close_all() -> None:
            for w in (c_writer, s_writer):
                w.transport.abort()

        async def upstream() -> None:  # client -> server, line by line
            while line := await c_reader.readline():
                rule = self._take(line, opened)
                if rule is not None and rule.action == "cut":
                    close_all()
                    return
                s_writer.write(line)
                await s_writer.drain()
                if rule is not None:
                    state["mode"] = rule.action
                    state["budget"] = rule.nbytes
                    if rule.action == "blackhole":
                        await asyncio.sleep(0.2)  # let the server act on it
                        close_all()
                        return

        async def downstream() -> None:  # server -> client
            while data := await s_reader.read(65536):
                mode = state["mode"]
                if mode == "stall":
                    await asyncio.Event().wait()  # until cancelled
                if mode == "blackhole":
                    continue
                if mode == "cut_reply":
                    budget = int(state["budget"])  # type: ignore[call-overload]
                    if len(data) >= budget:
                        c_writer.write(data[:budget])
                        await c_writer.drain()
                        close_all()
                        return
                    state["budget"] = budget - len(data)
                c_writer.write(data)
                await c_writer.drain()
            close_all()

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            close_all()
            for w in (c_writer, s_writer):
                self._writers.discard(w)
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self._tasks.discard(task)
