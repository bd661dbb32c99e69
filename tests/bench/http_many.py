"""Benchmark: 200 mailboxes at once through one gateway, within its session caps.

200 Dovecot users with 20 messages each; 200 concurrent clients (one asyncio task per
mailbox, aiohttp, HTTP Basic) each list their mailbox (``limit=50``) and then read one
message (the parsed ``GET /v1/mailboxes/me/messages/{id}``). The gateway (``python -m
gateway serve``, its own process) runs with ``POP3GW_POOL__MAX_TOTAL=64``,
``POP3GW_POOL__MAX_PER_UPSTREAM=32`` and ``POP3GW_POOL__ACQUIRE_TIMEOUT=60``; all mailboxes
are on one upstream, so at most 32 POP3 sessions may be open at any time. (The Dovecot
harness raises ``mail_max_userip_connections`` from Dovecot's default of 10, so Dovecot
itself refuses nothing here.)

While the clients run, two samplers watch the sessions every 10 ms:

- the gateway's own gauge, ``pop3gw_pool_sessions{state="open"}`` (and the other states,
  and ``pop3gw_pool_waiting``) from ``/metrics``;
- the kernel's view: ESTABLISHED TCP connections to Dovecot's port, from /proc/net/tcp (the
  gateway is the only POP3 client while the clients run).

Targets: no error (every listing shows the 20 messages with headers, every read answers the
message asked for), neither sampler ever sees more sessions than the caps allow, and each
mailbox is logged in to once (its read reuses its listing's session: the pool's reuse
grace), so 200 logins in all. The
total time is reported with, as a reference, CPython's poplib doing the same work
(login, UIDL, ``TOP n 0`` for each message, RETR of one, QUIT) for every mailbox one after
the other; that ratio has no target. Every mailbox is read once with poplib before anything is
timed, so that both meet mailboxes Dovecot has already indexed.
"""

from __future__ import annotations

import asyncio
import json
import poplib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.bench import report
from tests.bench.processes import Gateway, basic_auth
from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser
from tests.support.procfs import cpu_seconds

NAME = "http_many"
MAILBOXES = 200
PER_MAILBOX = 20
MAX_TOTAL = 64
MAX_PER_UPSTREAM = 32
SAMPLE_EVERY = 0.010  #: /proc/net/tcp
SCRAPE_EVERY = 0.050  #: /metrics (each scrape costs the gateway a few ms)
CLIENT_TIMEOUT = 120.0
_GAUGE = re.compile(r'^pop3gw_pool_sessions\{state="(\w+)"\} ([0-9.e+]+)$', re.M)
_WAITING = re.compile(r"^pop3gw_pool_waiting ([0-9.e+]+)$", re.M)
_OPENS = re.compile(r'^pop3gw_pool_events_total\{kind="open"\} ([0-9.e+]+)$', re.M)


@dataclass
class Seen:
    seconds: float = 0.0
    gateway_cpu: float = 0.0
    dovecot_cpu: float = 0.0
    client_cpu: float = 0.0
    logins: int = 0
    samples: int = 0
    metrics_error: str | None = None
    max_states: dict[str, int] = field(default_factory=dict)
    max_waiting: int = 0
    tcp_samples: int = 0
    max_tcp: int = 0


def established_to(port: int) -> int:
    """ESTABLISHED IPv4 TCP connections whose remote end is 127.0.0.1:``port``."""
    remote = f"0100007F:{port:04X}"
    count = 0
    with Path("/proc/net/tcp").open() as lines:
        next(lines)
        for line in lines:
            fields = line.split()
            if fields[2] == remote and fields[3] == "01":
                count += 1
    return count


async def _watch_metrics(base: str, seen: Seen, done: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not done.is_set():
            async with session.get(base + "/metrics") as resp:
                text = await resp.text()
                if resp.status != 200:
                    seen.metrics_error = f"/metrics answered {resp.status}"
                    return
            for state, value in _GAUGE.findall(text):
                seen.max_states[state] = max(seen.max_states.get(state, 0), int(float(value)))
            waiting = _WAITING.search(text)
            if waiting:
                seen.max_waiting = max(seen.max_waiting, int(float(waiting.group(1))))
            seen.samples += 1
            await asyncio.sleep(SCRAPE_EVERY)


async def _watch_tcp(port: int, seen: Seen, done: asyncio.Event) -> None:
    while not done.is_set():
        seen.max_tcp = max(seen.max_tcp, established_to(port))
        seen.tcp_samples += 1
        await asyncio.sleep(SAMPLE_EVERY)


async def _client(
    session: aiohttp.ClientSession, base: str, user: DovecotUser, errors: list[str]
) -> None:
    auth = {"Authorization": basic_auth(user.name, user.password)}
    try:
        async with session.get(
            base + "/v1/mailboxes/me/messages", params={"limit": "50"}, headers=auth
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                errors.append(f"{user.name}: listing {resp.status} {body[:200]!r}")
                return
        page = json.loads(body)
        items = page["messages"]
        if len(items) != PER_MAILBOX or any(item["subject"] is None for item in items):
            errors.append(f"{user.name}: the listing has {len(items)} messages, or no headers")
            return
        wanted = items[len(items) // 2]
        url = f"{base}/v1/mailboxes/me/messages/{wanted['id']}"
        async with session.get(url, headers=auth) as resp:
            body = await resp.read()
            if resp.status != 200:
                errors.append(f"{user.name}: read {resp.status} {body[:200]!r}")
                return
        message = json.loads(body)
        if message["uid"] != wanted["uid"] or message["size"] != wanted["size"]:
            errors.append(f"{user.name}: read answered another message")
    except (aiohttp.ClientError, TimeoutError) as exc:
        errors.append(f"{user.name}: {type(exc).__name__}: {exc}")


async def _opens(base: str) -> int:
    """POP3 sessions the gateway's pool opened so far; -1 when /metrics does not answer."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(base + "/metrics") as resp,
    ):
        if resp.status != 200:
            return -1
        found = _OPENS.search(await resp.text())
    return int(float(found.group(1))) if found else 0


async def _all_clients(
    gateway: Gateway, dovecot: Dovecot, users: list[DovecotUser]
) -> tuple[list[str], Seen]:
    errors: list[str] = []
    seen = Seen()
    done = asyncio.Event()
    watchers = [
        asyncio.create_task(_watch_metrics(gateway.base, seen, done)),
        asyncio.create_task(_watch_tcp(dovecot.port, seen, done)),
    ]
    await asyncio.sleep(0.1)  # both samplers have looked before the clients start
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    opens = await _opens(gateway.base)
    cpu = (
        cpu_seconds(gateway.pid),
        cpu_seconds(dovecot.pid, reaped_children=True),
        time.process_time(),
    )
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            began = time.perf_counter()
            await asyncio.gather(*(_client(session, gateway.base, u, errors) for u in users))
            seen.seconds = time.perf_counter() - began
    finally:
        done.set()
        await asyncio.gather(*watchers)
    seen.gateway_cpu = cpu_seconds(gateway.pid) - cpu[0]
    seen.dovecot_cpu = cpu_seconds(dovecot.pid, reaped_children=True) - cpu[1]
    seen.client_cpu = time.process_time() - cpu[2]
    after = await _opens(gateway.base)
    seen.logins = after - opens if min(after, opens) >= 0 else -1
    return errors, seen


def _poplib_one(port: int, user: DovecotUser) -> None:
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        _, listing, _ = pop.uidl()
        for n in range(1, len(listing) + 1):
            pop.top(n, 0)
        pop.retr(len(listing) // 2 + 1)
    finally:
        pop.quit()


def run() -> bool:
    with Dovecot() as dovecot:
        raws = [simple_message(i) for i in range(PER_MAILBOX)]
        users = []
        for _ in range(MAILBOXES):
            user = dovecot.new_user("many")
            user.deliver_many(raws)
            users.append(user)
        for user in users:  # Dovecot indexes each new Maildir once, before anything is timed
            _poplib_one(dovecot.port, user)
        extra = {
            "POP3GW_POOL__MAX_TOTAL": str(MAX_TOTAL),
            "POP3GW_POOL__MAX_PER_UPSTREAM": str(MAX_PER_UPSTREAM),
            "POP3GW_POOL__ACQUIRE_TIMEOUT": "60",
            # All 200 clients are one address (loopback) on one upstream, and a login in
            # flight holds a failed-login token of its client and of its upstream until it
            # ends: the default bursts (10, 30) would refuse most of these logins (all of
            # which succeed) with 429.
            "POP3GW_POOL__CLIENT_FAILED_LOGIN_BURST": str(4 * MAILBOXES),
            "POP3GW_POOL__UPSTREAM_FAILED_LOGIN_BURST": str(4 * MAILBOXES),
        }
        with Gateway(dovecot.port, extra=extra) as gateway:
            errors, seen = asyncio.run(_all_clients(gateway, dovecot, users))
            alive = gateway.alive()
        dovecot_cpu = cpu_seconds(dovecot.pid, reaped_children=True)
        began = time.perf_counter()
        for user in users:
            _poplib_one(dovecot.port, user)
        baseline = time.perf_counter() - began
        dovecot_cpu = cpu_seconds(dovecot.pid, reaped_children=True) - dovecot_cpu
    cap = min(MAX_TOTAL, MAX_PER_UPSTREAM)  # one upstream: its cap binds first
    states = ", ".join(f"{k} {v}" for k, v in sorted(seen.max_states.items()))
    print(
        f"\n{MAILBOXES} mailboxes x {PER_MAILBOX} messages, {MAILBOXES} concurrent clients "
        f"(list + read one), pool caps: total {MAX_TOTAL}, per upstream {MAX_PER_UPSTREAM}"
    )
    seconds = seen.seconds
    print(f"  gateway: {seconds:.2f} s for everything, {len(errors)} errors")
    print(
        f"  poplib, the same work mailbox after mailbox (reference): {baseline:.2f} s "
        f"-> gateway {baseline / seconds:.1f}x; Dovecot CPU meanwhile {dovecot_cpu:.2f} s "
        f"for {MAILBOXES} logins"
    )
    print(
        f"  during the gateway's run: {seen.logins if seen.logins >= 0 else 'n/a'} POP3 "
        "logins by the gateway; CPU seconds: "
        f"gateway {seen.gateway_cpu:.2f}, Dovecot (exited processes) {seen.dovecot_cpu:.2f}, "
        f"this client {seen.client_cpu:.2f}"
    )
    print(
        f"  /metrics, {seen.samples} samples: max per state: {states}; "
        f"max waiting {seen.max_waiting}"
    )
    print(
        f"  /proc/net/tcp, {seen.tcp_samples} samples: max ESTABLISHED connections to "
        f"Dovecot {seen.max_tcp}"
    )
    for error in errors[:10]:
        print(f"    {error}")
    report.info(
        NAME,
        "200 clients: gateway vs poplib one mailbox after another",
        f"{baseline / seconds:.1f}x",
    )
    ok = report.target(
        NAME,
        f"{MAILBOXES} concurrent clients: 0 errors",
        f"{len(errors)} errors" + ("" if alive else ", the gateway died"),
        not errors and alive,
    )
    opened = seen.max_states.get("open", -1)
    ok = (
        report.target(
            NAME,
            f"open sessions (gauge) never above the caps ({cap})",
            f"max {opened}" + (f" ({seen.metrics_error})" if seen.metrics_error else ""),
            0 <= opened <= cap and seen.samples > 0 and seen.metrics_error is None,
        )
        and ok
    )
    ok = (
        report.target(
            NAME,
            f"ESTABLISHED POP3 connections (kernel) never above the caps ({cap})",
            f"max {seen.max_tcp}",
            seen.max_tcp <= cap and seen.tcp_samples > 0,
        )
        and ok
    )
    return (
        report.target(
            NAME,
            f"each mailbox logged in to once ({MAILBOXES} logins)",
            f"{seen.logins} logins",
            seen.logins == MAILBOXES,
        )
        and ok
    )


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
