"""Whole-message parsing away from the event loop, once per message, never for nobody.

- :class:`ParseWorkers`: a few worker processes (:mod:`gateway.mail.worker`) that parse;
  each job has a time limit, after which its worker is killed and replaced (under the GIL
  this is the only sure way to stop a parse). A job whose caller went away (cancelled) is
  killed the same way: the CPU goes to the requests still waiting. Jobs wait for a free
  worker at most ``queue_timeout`` seconds.
- :class:`ParsedCache`: parsed messages by mailbox namespace + unique-id, bounded in bytes
  and in age, so a message opened again is not fetched nor parsed again.
- :class:`MessageParser`: the two together, single-flight per message: concurrent GETs of
  one message share one parse, which is cancelled only when the last of them is gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..mail import Attachment, ParsedMessage, find_attachment, parse_message
from ..mail import worker as wire
from .errors import ParseBusyError, ParseFailedError
from .sessions import SessionObserver

log = logging.getLogger("gateway.parsing")

#: What a worker may answer per octet of message (decoded text is at most twice its
#: octets in UTF-8; the rest is structure), plus a fixed allowance.
_ANSWER_PER_OCTET = 4
_ANSWER_ALLOWANCE = 1024 * 1024


class _Worker:
    """One worker process and its pipes; used by one job at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._closing: asyncio.Task[None] | None = None

    async def exchange(self, job: Sequence[bytes], max_answer: int) -> tuple[bytes, bytes]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:  # made with both pipes: never
            raise ParseFailedError("the parser has no pipes", cause="crash")
        for part in job:
            stdin.write(part)
        await stdin.drain()
        status, length = wire.ANSWER_HEAD.unpack(await stdout.readexactly(wire.ANSWER_HEAD.size))
        if length > max_answer:
            raise ParseFailedError(
                f"the parser's answer is larger than {max_answer} octets", cause="answer"
            )
        return status, await stdout.readexactly(length)

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def close(self, timeout: float) -> asyncio.Task[None]:
        """End the worker (once, however many ask): close its input (it exits; or it is
        killed after ``timeout``), read its output to the end and reap it, so that its pipes
        are closed."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(timeout))
        return self._closing

    async def _close(self, timeout: float) -> None:
        process = self.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(timeout):
                await self._drain()
        except TimeoutError:
            self.kill()
            await self._drain()

    async def _drain(self) -> None:
        if self.process.stdout is not None:
            while await self.process.stdout.read(1024 * 1024):
                pass
        await self.process.wait()


class ParseWorkers:
    """``count`` worker processes, started on :meth:`start` (or on first use) and replaced
    when one is killed. ``memory_limit`` (bytes, 0 for none) caps each worker's address
    space."""

    def __init__(
        self,
        count: int,
        *,
        timeout: float,
        queue_timeout: float,
        memory_limit: int = 0,
        observer: SessionObserver | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.count = count
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self._memory_limit = memory_limit
        self._observer = observer
        self._command = list(command or (sys.executable, "-m", "gateway.mail.worker"))
        self._idle: list[_Worker] = []
        self._reaping: set[asyncio.Task[None]] = set()
        self._free = asyncio.Semaphore(count)
        self._all: set[_Worker] = set()
        self._closed = False
        #: jobs sent to a worker, and workers killed (time limit, caller gone, crash;
        #: replaced on the next job)
        self.jobs = 0
        self.killed = 0
        #: jobs in a worker now
        self.running = 0

    async def start(self) -> None:
        """Start every worker now, so that the first job does not wait for one."""
        while len(self._all) < self.count:
            self._idle.append(await self._spawn())

    async def _spawn(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            "--memory-limit",
            str(self._memory_limit),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # nothing of a message ever reaches a log
        )
        worker = _Worker(process)
        self._all.add(worker)
        return worker

    def _idle_worker(self) -> _Worker | None:
        """An idle worker that is still alive (one may have died meanwhile: the OOM
        killer, an operator): the dead are retired, not handed a job."""
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            self._retire(worker)
        return None

    async def _spawn_or_busy(self) -> _Worker:
        try:
            return await self._spawn()
        except OSError as exc:  # out of processes or file descriptors: a passing state
            log.warning("cannot start a message parser: %s", exc.strerror or type(exc).__name__)
            raise ParseBusyError("no message parser could be started") from None

    async def run(self, op: bytes, message: bytes, attachment_id: str = "") -> object:
        """The worker's result for one job. :class:`ParseBusyError` when no worker is free
        within ``queue_timeout``; :class:`ParseFailedError` when the job takes longer than
        ``timeout``, the worker dies or answers an error."""
        if self._closed:
            raise ParseBusyError("the gateway is shutting down")
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._free.acquire()
        except TimeoutError:
            self._limited("parse-busy")
            raise ParseBusyError(
                f"every message parser is busy; waited {self.queue_timeout:g} s"
            ) from None
        worker: _Worker | None = None
        done = False
        try:
            worker = self._idle_worker() or await self._spawn_or_busy()
            self.running += 1
            job = wire.job(op, message, attachment_id)
            self.jobs += 1
            max_answer = _ANSWER_PER_OCTET * len(message) + _ANSWER_ALLOWANCE
            try:
                async with asyncio.timeout(self.timeout):
                    status, payload = await worker.exchange(job, max_answer)
            except TimeoutError:
                self._limited("parse-timeout")
                raise ParseFailedError(
                    f"parsing took longer than {self.timeout:g} s", cause="timeout"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self._limited("parse-crash")
                raise ParseFailedError("the parser stopped on this message", cause="crash") from exc
            except ParseFailedError:
                self._limited("parse-crash")
                raise
            result = _result(payload) if status == b"O" else None
            if status == b"O" and result is None:
                # a worker that answers what it never writes is broken (or was made to
                # misbehave): its answer is refused, and the worker with it
                self._limited("parse-crash")
                raise ParseFailedError(
                    "the parser answered something that is not a parse result", cause="crash"
                )
            done = True
        finally:
            if worker is not None:
                self.running -= 1
                if done:
                    self._idle.append(worker)
                else:  # timed out, crashed or nobody waits: the work is stopped here
                    self._retire(worker)
            self._free.release()
        if result is None:  # an E answer: the worker said why, in a word
            self._limited("parse-crash")
            raise ParseFailedError(
                f"the parser stopped on this message ({_reason(payload)})", cause="crash"
            )
        return result.value

    def _retire(self, worker: _Worker) -> None:
        self.killed += 1
        worker.kill()
        self._all.discard(worker)
        # reaped in the background (the process is dead or dying: this is quick)
        reaping = worker.close(5.0)
        self._reaping.add(reaping)
        reaping.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[None]) -> None:
        self._reaping.discard(task)
        if not task.cancelled():
            task.exception()

    def _limited(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.limited(reason)

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now (for tests and the abuse suite)."""
        return [w.process.pid for w in self._all if w.process.returncode is None]

    async def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        workers, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(w.close(timeout) for w in workers), return_exceptions=True)
        while self._reaping:  # workers retired meanwhile (their jobs ended by the closing)
            await asyncio.gather(*self._reaping, return_exceptions=True)


def _reason(payload: bytes) -> str:
    """The word of a worker's ``E`` answer (an exception's class name), or ``error``: what a
    problem's detail shows is never more than that."""
    word = payload.decode("ascii", "replace")
    return word if len(word) <= 64 and word.isidentifier() else "error"


@dataclass(frozen=True, slots=True)
class _Loaded:
    value: object


def _result(payload: bytes) -> _Loaded | None:
    """A worker's ``O`` answer read as a parse result, or None when it is not one."""
    try:
        return _Loaded(wire.loads(payload))
    except Exception:  # any malformed pickle: UnpicklingError, EOFError, TypeError, ...
        return None


@dataclass(slots=True)
class _Entry:
    message: ParsedMessage
    cost: int
    expires: float


class ParsedCache:
    """Parsed messages by (namespace, unique-id), least recently used first out, within
    ``max_bytes`` (each counted at its message's size on the wire, a fair measure of what
    a parse keeps) and ``ttl`` seconds."""

    def __init__(
        self, max_bytes: int, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[str, str]) -> ParsedMessage | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.message

    def put(self, key: tuple[str, str], message: ParsedMessage, cost: int) -> None:
        if key in self._entries:
            self._remove(key)
        if cost > self.max_bytes or self.ttl <= 0:
            return
        while self._entries and self.bytes + cost > self.max_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[key] = _Entry(message, cost, self._clock() + self.ttl)
        self.bytes += cost

    def purge(self) -> None:
        """Drop what has expired (called on a timer: memory comes back by itself)."""
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._remove(key)

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.cost

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Flight:
    key: tuple[str, str]
    task: asyncio.Task[ParsedMessage]
    waiters: int = 0


class MessageParser:
    """Parses off the loop when it has workers (in the loop without: tests, tiny setups),
    single-flight per message, results kept in a :class:`ParsedCache`."""

    def __init__(self, workers: ParseWorkers | None, cache: ParsedCache) -> None:
        self.workers = workers
        self.cache = cache
        self._flights: dict[tuple[str, str], _Flight] = {}

    async def start(self) -> None:
        """Start the workers now (else on first use: the first parse then waits for a
        worker to import the parser, some 60 ms)."""
        if self.workers is not None:
            await self.workers.start()

    def cached(self, key: tuple[str, str]) -> ParsedMessage | None:
        return self.cache.get(key)

    def in_flight(self, key: tuple[str, str]) -> bool:
        return key in self._flights

    async def join(self, key: tuple[str, str]) -> ParsedMessage | None:
        """The result of the parse of ``key`` under way, None if there is none."""
        flight = self._flights.get(key)
        return None if flight is None else await self._wait(flight)

    async def parse(self, key: tuple[str, str], message: bytes) -> ParsedMessage:
        flight = self._flights.get(key)
        if flight is None:
            task = asyncio.ensure_future(self._parse(key, message))
            flight = _Flight(key, task)
            self._flights[key] = flight
            task.add_done_callback(lambda done: self._landed(key, flight, done))
        return await self._wait(flight)

    async def _wait(self, flight: _Flight) -> ParsedMessage:
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody waits any more: stop the work, and let no one join it meanwhile
                # (the task ends at the loop's next turn; a new request starts afresh).
                if self._flights.get(flight.key) is flight:
                    del self._flights[flight.key]
                flight.task.cancel()

    def _landed(
        self, key: tuple[str, str], flight: _Flight, task: asyncio.Task[ParsedMessage]
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure reached every waiter already

    async def _parse(self, key: tuple[str, str], message: bytes) -> ParsedMessage:
        if self.workers is None:
            parsed = parse_message(message)
        else:
            result = await self.workers.run(wire.OP_PARSE, message)
            if not isinstance(result, ParsedMessage):
                raise ParseFailedError("the parser answered something else", cause="crash")
            parsed = result
        self.cache.put(key, parsed, len(message))
        return parsed

    async def attachment(self, message: bytes, attachment_id: str) -> Attachment | None:
        if self.workers is None:
            return find_attachment(message, attachment_id)
        result = await self.workers.run(wire.OP_ATTACHMENT, message, attachment_id)
        if result is not None and not isinstance(result, Attachment):
            raise ParseFailedError("the parser answered something else", cause="crash")
        return result
