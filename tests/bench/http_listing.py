"""Benchmark: a cold listing through the gateway against the floor: the bare POP3 exchange.

The gateway (``python -m gateway serve``, its own process, in-process header cache) lists
every message of a Dovecot mailbox with header summaries: ``GET
/v1/mailboxes/me/messages?limit=500``, following ``next_cursor`` until it is null, over one
keep-alive HTTP connection, each page decoded with ``json.loads``. The client sends
``Accept-Encoding: identity`` (curl by default asks for no encoding either), so pages are
not gzipped: a client that asks for gzip gets them compressed, at a CPU cost that loopback
does not pay back. The cache is empty for
every run: each run lists a new Dovecot user (same messages, so new unique-ids and new cache
keys), while the gateway process stays up. It is timed from the first request to the last
page decoded.

The baseline is the floor (``tests/bench/floor.py``): the bare pipelined exchange on the
same mailbox, in the same run (login, UIDL, LIST, pipelined ``TOP n 0`` of every message,
QUIT; no parsing, no HTTP, none of our code), timed from connect to QUIT's answer. It is
what the mail server and the network cost; what the gateway costs beyond it is ours. In
each run the two alternate which goes first.

After both, the same exchange runs once more with each header section summarized as it
arrives, by the gateway's own function (``gateway.mail.summarize``) and nothing else: no
framing checks, no HTTP, no caches, no JSON. It is printed as information: the least that
any listing which summarizes every message this way can cost, so the bound of the loopback
goal (a goal below it asks for a faster summary, not for less overhead around it).

Before the timed runs, each new mailbox is read once with poplib (UIDL, LIST and every
TOP, directly on loopback): Dovecot has then indexed it and the files are in the page cache,
so every way meets the same warm server; that session's UIDL is the reference the gateway's
listing must match exactly (every unique-id, in order, each with its headers).

Settings and targets (medians; only ratios are compared with targets):

- 1,000 and 10,000 messages on loopback: gateway <= 1.5x the floor. CPython's poplib
  (login, STAT, ``TOP n 0`` one after the other, QUIT) and our POP3 client alone (no HTTP,
  no parsing) are shown beside them as information: poplib's loopback speed moves with the
  machine's scheduling and is no target.
- 1,000 messages through a proxy adding 5 ms each way (10 ms round trip) for the POP3
  side (the HTTP side stays on loopback): gateway >= 100x poplib through the same proxy.
- The same at 50 ms round trip: reported, no target.
"""

from __future__ import annotations

import asyncio
import json
import poplib
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.mail import summarize
from gateway.pop3 import POP3Client, TLSMode
from tests.bench import floor, report
from tests.bench.processes import Gateway, basic_auth
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.latency_proxy import LatencyProxy
from tests.support.procfs import cpu_seconds

NAME = "http_listing"
PAGE = 500
#: Loopback targets: the gateway's cold listing at most this many times the floor.
FLOOR_TARGET = 1.5
#: Through a 10 ms round trip: at least this many times faster than poplib.
RTT_TARGET = 100.0
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
    gateway: list[Listing] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    #: the floor with each header section summarized (``summarize``), nothing else
    bound: list[float] = field(default_factory=list)
    poplib: list[float] = field(default_factory=list)
    client: list[float] = field(default_factory=list)  #: our POP3 client alone

    @property
    def gateway_median(self) -> float:
        return statistics.median(r.seconds for r in self.gateway)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor)

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
    # identity: no encoding, as curl asks by default. aiohttp's client asks for gzip unless told
    # otherwise, and on loopback compressing 500 entries a page costs more than it saves:
    # that is the client's choice (README, gzip), not the listing's cost.
    headers = {
        "Authorization": basic_auth(user.name, user.password),
        "Accept-Encoding": "identity",
    }
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
    runs: int,
    poplib_runs: int,
    client_runs: int = 0,
) -> None:
    """``runs`` runs, each on a new mailbox: the gateway's cold listing and the floor on the
    same mailbox (alternating which goes first); poplib on the first ``poplib_runs`` of
    them and our client alone on the first ``client_runs`` (both after the other two)."""
    for run in range(runs):
        user, reference = _new_mailbox(dovecot, case.count)
        if run % 2:
            case.floor.append(_floor(pop_port, user, case.count))
        cpu = cpu_seconds(gateway.pid)
        listing = asyncio.run(http_listing(gateway.base, user))
        listing.gateway_cpu = cpu_seconds(gateway.pid) - cpu
        _check(listing, reference)
        case.gateway.append(listing)
        if not run % 2:
            case.floor.append(_floor(pop_port, user, case.count))
        case.bound.append(_floor(pop_port, user, case.count, summarized=True))
        if run < poplib_runs:
            case.poplib.append(poplib_top_all(pop_port, user))
        if run < client_runs:
            case.client.append(asyncio.run(pop3_exchange(pop_port, user)))


def _floor(port: int, user: DovecotUser, count: int, *, summarized: bool = False) -> float:
    """The floor exchange's seconds; ``summarized``: with every header section summarized
    by the gateway's own function as it arrives (the bound of the loopback goal)."""
    seconds, seen = asyncio.run(
        floor.exchange(
            "127.0.0.1",
            port,
            user.name,
            user.password,
            on_header=_summarize if summarized else None,
        )
    )
    if seen != count:
        raise RuntimeError(f"the floor exchange saw {seen} messages, not {count}")
    return seconds


def _summarize(header: bytes) -> object:
    return summarize(header, size=len(header))


def _times(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _print(case: Case) -> None:
    gw, low = case.gateway_median, case.floor_median
    print(f"\n{case.title}")
    print(f"  {'way':<36} {'median s':>9} {'msgs/s':>8} {'vs floor':>9}  runs")
    rows = [("floor (bare pipelined exchange)", case.floor), ("gateway (HTTP, cold cache)", None)]
    if case.bound:
        rows.append(("floor + header summaries only", case.bound))
    if case.client:
        rows.append(("our POP3 client alone (no HTTP)", case.client))
    if case.poplib:
        rows.append(("poplib (login, STAT, TOP loop)", case.poplib))
    for name, values in rows:
        median = gw if values is None else statistics.median(values)
        runs = len(case.gateway) if values is None else len(values)
        print(f"  {name:<36} {median:9.3f} {case.count / median:8.0f} {median / low:8.2f}x  {runs}")
    print(
        f"  runs: gateway {_times([r.seconds for r in case.gateway])} s; floor "
        f"{_times(case.floor)} s" + (f"; poplib {_times(case.poplib)} s" if case.poplib else "")
    )
    paired = [g.seconds / f for g, f in zip(case.gateway, case.floor, strict=True)]
    print(f"  gateway / floor, run by run: {', '.join(f'{r:.2f}' for r in paired)}")
    mid = sorted(case.gateway, key=lambda r: r.seconds)[len(case.gateway) // 2]
    later = mid.page_seconds[1:]
    print(
        f"  median gateway run: {len(mid.page_seconds)} pages; first page (login, UIDL+LIST, "
        f"{min(PAGE, case.count)} TOP) {mid.page_seconds[0] * 1000:.0f} ms"
        + (f", later pages {statistics.mean(later) * 1000:.0f} ms on average" if later else "")
    )
    print(
        f"    gateway process CPU during the run {mid.gateway_cpu * 1000:.0f} ms "
        f"({mid.gateway_cpu / mid.seconds:.0%} of the run's wall time, "
        f"{mid.gateway_cpu / case.count * 1e6:.0f} us per message)"
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


def _floor_target(case: Case) -> bool:
    ratio = case.gateway_median / case.floor_median
    if case.bound:
        report.info(
            NAME,
            f"{case.title}: floor + header summaries only / floor (the least any listing "
            "that summarizes each message this way costs)",
            f"{statistics.median(case.bound) / case.floor_median:.2f}x",
        )
    if case.poplib:
        report.info(
            NAME,
            f"{case.title}: poplib / floor (information, no target)",
            f"{case.poplib_median / case.floor_median:.2f}x",
        )
    return report.target(
        NAME,
        f"{case.title}: gateway <= {FLOOR_TARGET:g}x the floor",
        f"{ratio:.2f}x",
        ratio <= FLOOR_TARGET,
    )


def _poplib_ratio(case: Case, target: float | None) -> bool:
    ratio = case.poplib_median / case.gateway_median
    report.info(
        NAME,
        f"{case.title}: gateway / floor (information)",
        f"{case.gateway_median / case.floor_median:.2f}x",
    )
    # The bound of any client of this server through this proxy: the floor's own lead.
    report.info(
        NAME,
        f"{case.title}: the floor vs poplib (the most any client could reach)",
        f"{case.poplib_median / case.floor_median:.0f}x faster",
    )
    if target is None:
        report.info(NAME, f"{case.title}: gateway vs poplib (no target)", f"{ratio:.0f}x faster")
        return True
    return report.target(
        NAME,
        f"{case.title}: gateway >= {target:g}x faster than poplib",
        f"{ratio:.0f}x",
        ratio >= target,
    )


def run() -> bool:
    """Every setting; True when every target is met."""
    ok = True
    with Dovecot() as dovecot:
        with Gateway(dovecot.port) as gateway:
            direct = Case("1,000 messages, loopback", 1000)
            measure(dovecot, direct, gateway, dovecot.port, runs=5, poplib_runs=5, client_runs=5)
            _print(direct)
            ok = _floor_target(direct) and ok
            big = Case("10,000 messages, loopback", 10_000)
            measure(dovecot, big, gateway, dovecot.port, runs=3, poplib_runs=3, client_runs=3)
            _print(big)
            ok = _floor_target(big) and ok
        for rtt, target in ((0.010, RTT_TARGET), (0.050, None)):
            with (
                LatencyProxy(dovecot.port, rtt / 2) as proxy_port,
                Gateway(proxy_port) as gateway,
            ):
                slow = Case(f"1,000 messages, POP3 at {rtt * 1000:g} ms round trip", 1000)
                measure(dovecot, slow, gateway, proxy_port, runs=3, poplib_runs=1)
                _print(slow)
                ok = _poplib_ratio(slow, target) and ok
    return ok


if __name__ == "__main__":
    import sys

    sys.exit(0 if run() else 1)
