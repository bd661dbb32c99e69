"""Benchmark: a cold listing through the gateway against CPython's poplib.

The gateway (``python -m gateway serve``, its own process, in-process header cache) lists
every message of a Dovecot mailbox with header summaries: ``GET
/v1/mailboxes/me/messages?limit=500``, following ``next_cursor`` until it is null, over one
keep-alive HTTP connection, each page decoded with ``json.loads``. The cache is empty for
every run: each run lists a new Dovecot user (same messages, so new unique-ids and new cache
keys), while the gateway process stays up.

The baseline is poplib on the same mailbox: connect, USER/PASS, STAT, ``TOP n 0`` for every
message one after the other, QUIT; no parsing, no HTTP. Both are timed as wholes (the gateway
from the first request to the last page decoded, poplib from connect to QUIT's answer).

Before the timed runs, each new mailbox is read once with poplib (UIDL, LIST and every
TOP, directly on loopback): Dovecot has then indexed it and the files are in the page cache, so
both ways meet the same warm server; that session's UIDL is the reference the gateway's
listing must match exactly (every unique-id, in order, each with its headers).

Beside them, the POP3 exchange alone is timed on the same mailbox: our client's connect,
login, UIDL+LIST, pipelined ``TOP n 0`` of every message and QUIT, with no parsing and no
HTTP. Its ratio to poplib is the most any listing through HTTP could reach on this machine
and this server (Dovecot's own time per TOP sets it), printed for reference.

Settings: 1,000 messages on loopback; 1,000 through a proxy adding 10 ms each way (for both
the gateway's POP3 sessions and poplib; the HTTP side stays on loopback); 10,000 on
loopback. Times are medians; only ratios are compared with targets.
"""

from __future__ import annotations

import asyncio
import json
import poplib
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.pop3 import POP3Client, TLSMode
from tests.bench import report
from tests.bench.processes import Gateway, basic_auth, cpu_seconds
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.latency_proxy import LatencyProxy

NAME = "http_listing"
PAGE = 500
DELAY = 0.010
HTTP_TIMEOUT = 120.0
_MESSAGES: list[bytes] = []


def messages(count: int) -> list[bytes]:
    """``simple_message(0 .. count-1)``, generated once per process."""
    while len(_MESSAGES) < count:
        _MESSAGES.append(simple_message(len(_MESSAGES)))
    return _MESSAGES[:count]


@dataclass
class Listing:
    seconds: float
    uids: list[str]
    with_headers: int
    page_seconds: list[float]
    decode_seconds: float
    server_seconds: float | None = None
    gateway_cpu: float = 0.0


@dataclass
class Case:
    title: str
    count: int
    target: float
    gateway: list[Listing] = field(default_factory=list)
    poplib: list[float] = field(default_factory=list)
    exchange: list[float] = field(default_factory=list)

    @property
    def gateway_median(self) -> float:
        return statistics.median(r.seconds for r in self.gateway)

    @property
    def poplib_median(self) -> float:
        return statistics.median(self.poplib)


def prime(port: int, user: DovecotUser) -> list[str]:
    """Read the whole mailbox once (UIDL and every TOP); return the unique-ids in order."""
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        _, listing, _ = pop.uidl()
        # LIST too: Dovecot works out every message's size on the first STAT or LIST of a
        # new mailbox, and whichever way came first would pay for it.
        pop.list()
        for n in range(1, len(listing) + 1):
            pop.top(n, 0)
    finally:
        pop.quit()
    uids: list[str] = []
    for line in listing:
        number, _, uid = line.decode("latin-1").partition(" ")
        if int(number) != len(uids) + 1:
            raise RuntimeError("UIDL is not in message-number order")
        uids.append(uid)
    return uids


def poplib_top_all(port: int, user: DovecotUser) -> float:
    """The baseline: login, STAT, ``TOP n 0`` for every message, QUIT; seconds."""
    began = time.perf_counter()
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        count, _ = pop.stat()
        for n in range(1, count + 1):
            pop.top(n, 0)
    finally:
        pop.quit()
    return time.perf_counter() - began


async def pop3_exchange(port: int, user: DovecotUser) -> float:
    """Our client alone: connect, login, UIDL+LIST, pipelined TOP of every message, QUIT
    (no parsing, no HTTP); seconds."""
    began = time.perf_counter()
    client = await POP3Client.connect("127.0.0.1", port, tls=TLSMode.PLAIN)
    try:
        await client.login(user.name, user.password)
        uids, _sizes = await client.uidl_and_list()
        numbers = sorted(uids)
        for start in range(0, len(numbers), PAGE):
            replies = await client.top_many(numbers[start : start + PAGE], 0)
            if not all(isinstance(r, bytes) for r in replies):
                raise RuntimeError("a TOP was refused: benchmark void")
        await client.quit()
    finally:
        client.abort()
    return time.perf_counter() - began


async def _server_seconds(session: aiohttp.ClientSession, base: str) -> float | None:
    """The gateway's own total of time spent answering listing requests (from /metrics);
    None when /metrics does not answer."""
    async with session.get(base + "/metrics") as resp:
        if resp.status != 200:
            return None
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pop3gw_http_request_duration_seconds_sum") and '/messages"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def http_listing(base: str, user: DovecotUser) -> Listing:
    """Every page of the listing, in one keep-alive connection; timed as a whole."""
    headers = {"Authorization": basic_auth(user.name, user.password)}
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        before = await _server_seconds(session, base)
        uids: list[str] = []
        with_headers = 0
        pages: list[float] = []
        decode = 0.0
        cursor: str | None = None
        began = time.perf_counter()
        while True:
            started = time.perf_counter()
            params = {"limit": str(PAGE)}
            if cursor is not None:
                params["cursor"] = cursor
            async with session.get(base + "/v1/mailboxes/me/messages", params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"listing answered {resp.status}: {body[:300]!r}")
            decoding = time.perf_counter()
            page = json.loads(body)
            decode += time.perf_counter() - decoding
            for item in page["messages"]:
                uids.append(item["uid"])
                with_headers += item.get("subject") is not None
            pages.append(time.perf_counter() - started)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        seconds = time.perf_counter() - began
        after = await _server_seconds(session, base)
    server = None if before is None or after is None else after - before
    return Listing(seconds, uids, with_headers, pages, decode, server)


def _check(listing: Listing, reference: list[str]) -> None:
    expected = reference[::-1]  # the listing is newest first
    if listing.uids != expected:
        missing = len(set(expected) - set(listing.uids))
        raise RuntimeError(
            f"the gateway listed {len(listing.uids)} uids ({missing} of poplib's missing, "
            "or out of order): benchmark void"
        )
    if listing.with_headers != len(reference):
        raise RuntimeError(
            f"only {listing.with_headers} of {len(reference)} messages came with headers"
        )


def _new_mailbox(dovecot: Dovecot, count: int) -> tuple[DovecotUser, list[str]]:
    user = dovecot.new_user("listing")
    user.deliver_many(messages(count))
    reference = prime(dovecot.port, user)
    if len(reference) != count:
        raise RuntimeError(f"expected {count} messages, Dovecot shows {len(reference)}")
    return user, reference


def measure(
    dovecot: Dovecot,
    case: Case,
    gateway: Gateway,
    pop_port: int,
    *,
    gateway_runs: int,
    poplib_runs: int,
) -> None:
    """``gateway_runs`` runs, each on a new mailbox; poplib timed on the first
    ``poplib_runs`` of them (on the same mailbox, alternating which goes first)."""
    for run in range(gateway_runs):
        user, reference = _new_mailbox(dovecot, case.count)
        with_poplib = run < poplib_runs
        if with_poplib and run % 2:
            case.poplib.append(poplib_top_all(pop_port, user))
        cpu = cpu_seconds(gateway.pid)
        listing = asyncio.run(http_listing(gateway.base, user))
        listing.gateway_cpu = cpu_seconds(gateway.pid) - cpu
        _check(listing, reference)
        case.gateway.append(listing)
        if with_poplib and not run % 2:
            case.poplib.append(poplib_top_all(pop_port, user))
        if with_poplib:
            case.exchange.append(asyncio.run(pop3_exchange(pop_port, user)))


def _print(case: Case) -> bool:
    gw, base = case.gateway_median, case.poplib_median
    print(f"\n{case.title}")
    print(f"  {'way':<30} {'median s':>9} {'msgs/s':>8} {'vs poplib':>9}  runs")
    print(
        f"  {'poplib (login, STAT, TOP loop)':<30} {base:9.3f} {case.count / base:8.0f}"
        f" {1.0:8.1f}x  {len(case.poplib)}"
    )
    print(
        f"  {'gateway (HTTP, cold cache)':<30} {gw:9.3f} {case.count / gw:8.0f}"
        f" {base / gw:8.1f}x  {len(case.gateway)}"
    )
    if case.exchange:
        alone = statistics.median(case.exchange)
        print(
            f"  {'POP3 exchange alone (ceiling)':<30} {alone:9.3f} {case.count / alone:8.0f}"
            f" {base / alone:8.1f}x  {len(case.exchange)}"
        )
        report.info(
            NAME,
            f"{case.title}: the POP3 exchange alone (no parsing, no HTTP) vs poplib",
            f"{base / alone:.1f}x",
        )
    print(
        f"  runs: gateway {', '.join(f'{r.seconds:.3f}' for r in case.gateway)} s; "
        f"poplib {', '.join(f'{s:.3f}' for s in case.poplib)} s"
    )
    mid = sorted(case.gateway, key=lambda r: r.seconds)[len(case.gateway) // 2]
    later = mid.page_seconds[1:]
    print(
        f"  median gateway run: {len(mid.page_seconds)} pages; first page (login, UIDL+LIST, "
        f"{min(PAGE, case.count)} TOP) {mid.page_seconds[0] * 1000:.0f} ms"
        + (f", later pages {statistics.mean(later) * 1000:.0f} ms on average" if later else "")
    )
    print(
        f"    gateway process CPU during the run {mid.gateway_cpu * 1000:.0f} ms "
        f"({mid.gateway_cpu / mid.seconds:.0%} of the run's wall time)"
    )
    if mid.server_seconds is None:
        print(
            f"    client JSON decode {mid.decode_seconds * 1000:.0f} ms (/metrics did not answer)"
        )
    else:
        rest = mid.seconds - mid.server_seconds - mid.decode_seconds
        print(
            f"    gateway's own time answering (from /metrics) {mid.server_seconds * 1000:.0f} "
            f"ms; client JSON decode {mid.decode_seconds * 1000:.0f} ms; the rest (HTTP "
            f"transfer, client) {rest * 1000:.0f} ms"
        )
    ratio = base / gw
    return report.target(
        NAME,
        f"{case.title}: gateway >= {case.target:g}x poplib",
        f"{ratio:.1f}x",
        ratio >= case.target,
    )


def run() -> bool:
    """Every setting; True when every target is met."""
    ok = True
    with Dovecot() as dovecot:
        with Gateway(dovecot.port) as gateway:
            direct = Case("1,000 messages, loopback", 1000, 3.0)
            measure(dovecot, direct, gateway, dovecot.port, gateway_runs=5, poplib_runs=5)
            ok = _print(direct) and ok
            big = Case("10,000 messages, loopback", 10_000, 3.0)
            measure(dovecot, big, gateway, dovecot.port, gateway_runs=3, poplib_runs=3)
            ok = _print(big) and ok
        with LatencyProxy(dovecot.port, DELAY) as proxy_port, Gateway(proxy_port) as gateway:
            slow = Case(
                f"1,000 messages, POP3 through a {DELAY * 1000:g} ms-each-way proxy", 1000, 30.0
            )
            measure(dovecot, slow, gateway, proxy_port, gateway_runs=3, poplib_runs=1)
            ok = _print(slow) and ok
    return ok


if __name__ == "__main__":
    import sys

    sys.exit(0 if run() else 1)
