"""Benchmark: ``TOP n 0`` for every message of a 1,000-message Dovecot mailbox, three ways.

- ``pipelined``: our client, ``top_many`` with PIPELINING;
- ``lockstep``: our client with pipelining switched off;
- ``poplib``: CPython's poplib, one ``top(n, 0)`` after another (the baseline).

Each is measured directly on loopback and through a proxy that adds a fixed delay each way.
The target compares the TOP phase (after login and STAT, the same for every way); the whole
session (connect, login, STAT, TOP, QUIT) is printed beside it. Every way must return the
same headers; times are medians of several runs measured in this one process, and only the
ratios are compared with targets (the machines are shared: absolute times vary).
"""

from __future__ import annotations

import asyncio
import poplib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.pop3 import POP3Client, TLSMode
from tests.bench import report
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot
from tests.support.latency_proxy import LatencyProxy

MESSAGES = 1000


@dataclass
class Measured:
    name: str
    top_seconds: list[float]
    session_seconds: list[float]

    @property
    def top(self) -> float:
        return statistics.median(self.top_seconds)

    @property
    def session(self) -> float:
        return statistics.median(self.session_seconds)


Timed = tuple[list[bytes], float, float]  # headers, TOP phase seconds, whole session seconds


def _poplib_top_all(port: int, user: str, password: str) -> Timed:
    began = time.perf_counter()
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user)
        pop.pass_(password)
        count, _ = pop.stat()
        started = time.perf_counter()
        got = [b"\r\n".join(pop.top(n, 0)[1]) + b"\r\n" for n in range(1, count + 1)]
        top = time.perf_counter() - started
    finally:
        pop.quit()
    return got, top, time.perf_counter() - began


async def _ours_top_all(port: int, user: str, password: str, *, pipelining: bool) -> Timed:
    began = time.perf_counter()
    client = await POP3Client.connect("127.0.0.1", port, tls=TLSMode.PLAIN, pipelining=pipelining)
    try:
        await client.login(user, password)
        count, _ = await client.stat()
        started = time.perf_counter()
        got = await client.top_many(range(1, count + 1), 0)
        top = time.perf_counter() - started
    finally:
        await client.quit()
    out = [h for h in got if isinstance(h, bytes)]
    if len(out) != count:
        raise RuntimeError("a TOP was refused during the benchmark")
    return out, top, time.perf_counter() - began


def _time(name: str, fn: Callable[[], Timed], runs: int, expected: list[bytes]) -> Measured:
    measured = Measured(name, [], [])
    for _ in range(runs):
        got, top, session = fn()
        if got != expected:
            raise RuntimeError(f"{name} disagrees with poplib on the headers: benchmark void")
        measured.top_seconds.append(top)
        measured.session_seconds.append(session)
    return measured


def _measure(port: int, user: str, password: str, runs: dict[str, int]) -> dict[str, Measured]:
    reference, _, _ = _poplib_top_all(port, user, password)  # also warms Dovecot's caches
    if len(reference) != MESSAGES:
        raise RuntimeError(f"expected {MESSAGES} messages, found {len(reference)}")
    ways: dict[str, Callable[[], Timed]] = {
        "poplib": lambda: _poplib_top_all(port, user, password),
        "lockstep": lambda: asyncio.run(_ours_top_all(port, user, password, pipelining=False)),
        "pipelined": lambda: asyncio.run(_ours_top_all(port, user, password, pipelining=True)),
    }
    return {name: _time(name, fn, runs[name], reference) for name, fn in ways.items()}


def _report(title: str, results: dict[str, Measured], target: float) -> bool:
    base = results["poplib"]
    print(f"\n{title}")
    print(
        f"  {'way':<10} {'TOP phase s':>11} {'msgs/s':>8} {'vs poplib':>9}"
        f"   {'session s':>9} {'vs poplib':>9}  runs"
    )
    for m in results.values():
        print(
            f"  {m.name:<10} {m.top:11.3f} {MESSAGES / m.top:8.0f} {base.top / m.top:8.1f}x"
            f"   {m.session:9.3f} {base.session / m.session:8.1f}x  {len(m.top_seconds)}"
        )
    ratio = base.top / results["pipelined"].top
    return report.target(
        "pop3_top",
        f"{title}: pipelined TOP phase >= {target:g}x poplib's",
        f"{ratio:.1f}x",
        ratio >= target,
    )


def run(delay: float = 0.010) -> bool:
    """Run both settings; True when every target is met."""
    with Dovecot() as dovecot:
        user = dovecot.new_user("bench")
        user.deliver_many(simple_message(i) for i in range(MESSAGES))
        direct = _measure(
            dovecot.port, user.name, user.password, {"poplib": 5, "lockstep": 5, "pipelined": 5}
        )
        ok = _report(f"TOP n 0 x {MESSAGES}, loopback", direct, 4.0)
        with LatencyProxy(dovecot.port, delay) as proxy_port:
            slow = _measure(
                proxy_port, user.name, user.password, {"poplib": 1, "lockstep": 1, "pipelined": 3}
            )
        ok = (
            _report(
                f"TOP n 0 x {MESSAGES}, through a {delay * 1000:g} ms-each-way proxy", slow, 30.0
            )
            and ok
        )
    return ok
