"""A TCP proxy on loopback that delays every byte by a fixed time in each direction.

It simulates network latency (not bandwidth): data keeps its order and arrives ``delay``
seconds after it was sent, so a lockstep client pays two delays per command and a pipelined
one pays them once per window. It runs in its own process (``LatencyProxy`` starts it) so that
it does not compete for the interpreter lock with the client being measured.

    python -m tests.support.latency_proxy --target 127.0.0.1:1110 --delay 0.01
    # prints the port it listens on, then serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import subprocess
import sys
from types import TracebackType


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader -> writer, each chunk released ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    releaser = asyncio.create_task(release())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await releaser
    except (OSError, asyncio.IncompleteReadError):
        releaser.cancel()
    finally:
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await releaser


async def serve(
    target_host: str, target_port: int, delay: float, ready: asyncio.Future[int]
) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(_pipe(c_reader, s_writer, delay), _pipe(s_reader, c_writer, delay))
        finally:
            for w in (c_writer, s_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    ready.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port to forward to (loopback)")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds, each direction")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the proxy only forwards to loopback")

    async def run() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(host, int(port), args.delay, ready))
        print(await ready, flush=True)
        await task

    asyncio.run(run())


class LatencyProxy:
    """Runs the proxy in a child process: ``with LatencyProxy(port, 0.01) as proxy_port:``."""

    def __init__(self, target_port: int, delay: float, target_host: str = "127.0.0.1") -> None:
        self._args = [
            sys.executable,
            "-m",
            "tests.support.latency_proxy",
            "--target",
            f"{target_host}:{target_port}",
            "--delay",
            str(delay),
        ]
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> int:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        readable, _, _ = select.select([self._proc.stdout], [], [], 10)
        line = self._proc.stdout.readline() if readable else ""
        if not line.strip().isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError("latency proxy did not start")
        return int(line)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None


if __name__ == "__main__":
    main()
