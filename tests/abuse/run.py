"""``make abuse``: the isolation scenarios, each against a real ``pop3gw serve`` process in
front of a real Dovecot (or a scripted fake server where Dovecot cannot misbehave), each
printing its figure beside its goal.

    python -m tests.abuse.run                 # every scenario
    python -m tests.abuse.run fresh_loop      # only these (names below)

Exits non-zero when a goal is missed. Every loop is bounded in count and time; traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from tests.bench.processes import REDIS_URL, Gateway, basic_auth, proc_status
from tests.support.dovecot import Dovecot
from tests.support.fakepop3 import Endless, FakeMailbox, FakePOP3Server
from tests.support.procfs import cpu_seconds

MIB = 1024 * 1024


@dataclass
class Figure:
    scenario: str
    what: str
    value: float
    goal: float
    unit: str
    lower_is_better: bool = True

    @property
    def ok(self) -> bool:
        return self.value <= self.goal if self.lower_is_better else self.value >= self.goal

    def line(self) -> str:
        sign = "<=" if self.lower_is_better else ">="
        verdict = "PASS" if self.ok else "FAIL"
        return (
            f"  {verdict}  {self.scenario:<16} {self.what:<52} "
            f"{self.value:>10.3f} {self.unit:<6} (goal {sign} {self.goal:g})"
        )


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the gateway's message parsers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _sum_status(pid: int, field: str) -> float:
    total = 0
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError, KeyError):  # a parser may end meanwhile
            total += proc_status(each)[field]
    return total / 1024


def rss_mib(pid: int) -> float:
    """Resident memory of the gateway and its parser processes together."""
    return _sum_status(pid, "VmRSS")


def peak_mib(pid: int) -> float:
    """Peak resident memory of the gateway plus that of its parsers alive now."""
    return _sum_status(pid, "VmHWM")


async def metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    """One sample of /metrics (``name`` with its labels as printed), 0 when absent."""
    async with http.get(base + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


async def watch_health(base: str, stop: asyncio.Event) -> list[float]:
    """/healthz every 50 ms until ``stop``: each answer's latency in seconds."""
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            started = time.perf_counter()
            async with http.get(base + "/healthz") as resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    return latencies


def hostile_to(size: int) -> bytes:
    """A message anyone can send: a To: header of ``size`` bytes of recipients."""
    count = size // 40
    recipients = b", ".join(b'"Recipient %d" <r%d@example.com>' % (i, i) for i in range(count))
    return (
        b"From: Stranger <s@example.com>\r\nSubject: hello\r\nTo: "
        + recipients
        + b"\r\nMessage-ID: <hostile@example.com>\r\n\r\nbody\r\n"
    )


async def hostile_header(dovecot: Dovecot) -> list[Figure]:
    """A stranger's message with a 12 MB To: header is listed and opened over and over,
    while /healthz is asked every 50 ms."""
    user = dovecot.new_user("abuse")
    user.deliver(hostile_to(12 * MIB))
    auth = {"Authorization": basic_auth(user.name, user.password)}
    with Gateway(dovecot.port) as gateway:
        stop = asyncio.Event()
        health = asyncio.create_task(watch_health(gateway.base, stop))
        statuses: list[int] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            url = gateway.base + "/v1/mailboxes/me/messages?fresh=true"
            async with http.get(url, headers=auth) as resp:
                page = await resp.json()
                statuses.append(resp.status)
            message = f"{gateway.base}/v1/mailboxes/me/messages/{page['messages'][0]['id']}"

            async def reader(path: str) -> None:
                for _ in range(4):
                    async with http.get(path, headers=auth) as resp:
                        await resp.read()
                        statuses.append(resp.status)

            await asyncio.gather(*(reader(p) for p in (url, message, url, message)))
        stop.set()
        latencies = await health
    worst = max(latencies)
    return [
        Figure("hostile_header", "worst /healthz while a 12 MB To: is read (s)", worst, 0.5, "s"),
        Figure("hostile_header", "answers other than 200", sum(s != 200 for s in statuses), 0, ""),
    ]


def big_message() -> bytes:
    """Near the parse cap: an 8 MB quoted-printable text body, an HTML body of 4 MB of
    tags, and a 10 MB base64 attachment."""
    text = b"=41" * (8 * MIB // 3)
    html = b"<p>" * (4 * MIB // 3)
    attachment = b"QUJD" * (10 * MIB // 4)
    lines = b"\r\n".join(attachment[i : i + 76] for i in range(0, len(attachment), 76))
    return (
        b"From: Stranger <s@example.com>\r\nSubject: heavy\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n"
        b"--A\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + text
        + b"\r\n--A\r\nContent-Type: text/html\r\n\r\n"
        + html
        + b"\r\n--A--\r\n--B\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=a.bin\r\n\r\n" + lines + b"\r\n--B--\r\n"
    )


async def heavy_message(dovecot: Dovecot) -> list[Figure]:
    """A stranger's 24 MB message (text, HTML, an attachment) opened parsed, as raw and
    its attachment, four clients at once, while /healthz is asked every 50 ms."""
    user = dovecot.new_user("heavy")
    user.deliver(big_message())
    auth = {"Authorization": basic_auth(user.name, user.password)}
    with Gateway(dovecot.port) as gateway:
        statuses: list[int] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            async with http.get(gateway.base + "/v1/mailboxes/me/messages", headers=auth) as r:
                page = await r.json()
            message = f"{gateway.base}/v1/mailboxes/me/messages/{page['messages'][0]['id']}"
            stop = asyncio.Event()
            health = asyncio.create_task(watch_health(gateway.base, stop))

            async def reader(path: str) -> None:
                for _ in range(3):
                    async with http.get(path, headers=auth) as resp:
                        await resp.read()
                        statuses.append(resp.status)

            paths = (message, message + "/raw", message + "/attachments/2", message)
            await asyncio.gather(*(reader(p) for p in paths))
            stop.set()
            latencies = await health
    return [
        Figure(
            "heavy_message",
            "worst /healthz while 24 MB messages are read (s)",
            max(latencies),
            0.5,
            "s",
        ),
        Figure("heavy_message", "answers other than 200", sum(s != 200 for s in statuses), 0, ""),
    ]


async def abandoned_gets(dovecot: Dovecot) -> list[Figure]:
    """Four clients open a stranger's 24 MB message and hang up at once (after 0.05 to
    0.4 s: while it is fetched, while it is parsed), eight rounds; /healthz every 50 ms.
    The work of a request whose client left must stop: no parse running and no session
    leased a second later."""
    user = dovecot.new_user("abandon")
    user.deliver(big_message())
    auth = {"Authorization": basic_auth(user.name, user.password)}
    # no parsed cache: every round must fetch and parse again
    with Gateway(dovecot.port, extra={"POP3GW_PARSE__CACHE_MAX_BYTES": "0"}) as gateway:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.get(gateway.base + "/v1/mailboxes/me/messages", headers=auth) as r:
                page = await r.json()
            message = f"{gateway.base}/v1/mailboxes/me/messages/{page['messages'][0]['id']}"
            stop = asyncio.Event()
            health = asyncio.create_task(watch_health(gateway.base, stop))

            path = "/" + message.split("/", 3)[3]
            head = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {auth['Authorization']}\r\n\r\n"
            ).encode()

            async def leave_after(delay: float) -> None:
                """Ask for the message on a connection of its own, hang up after ``delay``."""
                _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                writer.write(head)
                await asyncio.sleep(delay)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

            for i in range(8):
                await asyncio.gather(*(leave_after(0.05 + 0.05 * i) for _ in range(4)))
            await asyncio.sleep(1.0)
            running = await metric(http, gateway.base, "pop3gw_parse_jobs_running")
            leased = await metric(http, gateway.base, 'pop3gw_pool_sessions{state="leased"}')
            gone = await metric(http, gateway.base, 'pop3gw_limits_total{reason="client-gone"}')
            stop.set()
            latencies = await health
            async with http.get(message, headers=auth) as resp:
                await resp.read()
                still = resp.status
    return [
        Figure(
            "abandoned_gets",
            "worst /healthz while 32 GETs are abandoned (s)",
            max(latencies),
            0.5,
            "s",
        ),
        Figure("abandoned_gets", f"parses running 1 s after ({gone:.0f} stopped)", running, 0, ""),
        Figure("abandoned_gets", "sessions leased 1 s after", leased, 0, ""),
        Figure(
            "abandoned_gets",
            "the message still answers 200 (1 = yes)",
            still == 200,
            1,
            "",
            lower_is_better=False,
        ),
    ]


async def case_spellings() -> list[Figure]:
    """The big_names mailbox under four case spellings of one login (one person to a
    server that ignores case): listed in full by each, three times."""
    name = b"N" * MIB
    box = FakeMailbox(
        [
            (
                f"u{i}",
                b'From: "'
                + name
                + b'" <n%d@example.com>\r\nTo: "' % i
                + name
                + b'" <t@example.com>\r\nSubject: big name %d\r\n\r\nx\r\n' % i,
            )
            for i in range(100)
        ]
    )
    spellings = ["bob", "Bob", "BOB", "bOb"]
    async with FakePOP3Server(box, users={s: "pw" for s in spellings}) as server:
        with Gateway(server.port) as gateway:
            before = rss_mib(gateway.pid)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                for _ in range(3):
                    for spelling in spellings:
                        url = gateway.base + "/v1/mailboxes/me/messages?limit=100&fresh=true"
                        auth = {"Authorization": basic_auth(spelling, "pw")}
                        async with http.get(url, headers=auth) as resp:
                            body = await resp.read()
                            assert resp.status == 200, body[:200]
                    await asyncio.sleep(2.1)  # past the fresh ration
            peak = peak_mib(gateway.pid) - before
            after = rss_mib(gateway.pid) - before
    return [
        Figure("case_spellings", "peak RSS growth, 4 spellings x 100 MB (MiB)", peak, 256, "MiB"),
        Figure("case_spellings", "RSS growth after the listings (MiB)", after, 256, "MiB"),
    ]


async def big_names(dovecot: Dovecot) -> list[Figure]:
    """100 messages whose display names are 1 MB each, listed in full several times."""
    user = dovecot.new_user("names")
    name = b"N" * MIB
    user.deliver_many(
        b'From: "'
        + name
        + b'" <n%d@example.com>\r\nTo: "' % i
        + name
        + b'" <t@example.com>\r\nSubject: big name %d\r\n\r\nx\r\n' % i
        for i in range(100)
    )
    auth = {"Authorization": basic_auth(user.name, user.password)}
    with Gateway(dovecot.port) as gateway:
        before = rss_mib(gateway.pid)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            for _ in range(3):
                url = gateway.base + "/v1/mailboxes/me/messages?limit=100&fresh=true"
                async with http.get(url, headers=auth) as resp:
                    body = await resp.read()
                    assert resp.status == 200, body[:200]
                await asyncio.sleep(2.1)  # past the fresh ration: a new login each time
        peak = peak_mib(gateway.pid) - before
        after = rss_mib(gateway.pid) - before
    return [
        Figure(
            "big_names", "peak RSS growth, 100 messages with 1 MB names (MiB)", peak, 256, "MiB"
        ),
        Figure("big_names", "RSS growth after the listings (MiB)", after, 256, "MiB"),
        Figure("big_names", "largest listing body (MiB)", len(body) / MIB, 1, "MiB"),
    ]


async def fresh_loop(dovecot: Dovecot) -> list[Figure]:
    """A client loops on ?fresh=true for 6 seconds."""
    user = dovecot.new_user("fresh")
    user.deliver(b"Subject: one\r\n\r\nx\r\n")
    auth = {"Authorization": basic_auth(user.name, user.password)}
    marker = f"Login: user=<{user.name}>"
    before = dovecot.log_text().count(marker)
    with Gateway(dovecot.port, extra={"POP3GW_POOL__MIN_FRESH_INTERVAL": "2"}) as gateway:
        started = time.monotonic()
        requests = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            url = gateway.base + "/v1/mailboxes/me/messages?fresh=true"
            while time.monotonic() - started < 6 and requests < 50_000:
                async with http.get(url, headers=auth) as resp:
                    await resp.read()
                requests += 1
        elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # the last login reaches Dovecot's log
    logins = dovecot.log_text().count(marker) - before
    allowed = elapsed / 2 + 1
    return [
        Figure(
            "fresh_loop", f"logins per 2 s interval ({requests} requests)", logins / allowed, 1, "x"
        ),
    ]


async def endless_uidl() -> list[Figure]:
    """A server whose UIDL reply never ends (it would send 1 GiB)."""
    box = FakeMailbox([("u1", b"Subject: one\r\n\r\nx\r\n")])
    async with FakePOP3Server(box, users={"alice": "pw"}) as server:
        server.script("UIDL", Endless(limit=1024 * MIB))
        auth = {"Authorization": basic_auth("alice", "pw")}
        with Gateway(server.port) as gateway:
            before = rss_mib(gateway.pid)
            timeout = aiohttp.ClientTimeout(total=120)
            url = gateway.base + "/v1/mailboxes/me/messages"
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, headers=auth) as resp,
            ):
                status = resp.status
                await resp.read()
            peak = peak_mib(gateway.pid) - before
    return [
        Figure("endless_uidl", "peak RSS growth (MiB)", peak, 256, "MiB"),
        Figure("endless_uidl", "answer is 502", 1.0 if status == 502 else 0.0, 1, "", False),
    ]


async def spray(dovecot: Dovecot) -> list[Figure]:
    """300 user names with wrong passwords from one client, 20 at a time."""
    marker = "auth failed"
    before = dovecot.log_text().lower().count(marker)
    statuses: list[int] = []
    with Gateway(dovecot.port) as gateway:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def guess(i: int) -> None:
                auth = {"Authorization": basic_auth(f"sprayed{i}", "wrong")}
                async with http.get(gateway.base + "/v1/mailboxes/me", headers=auth) as resp:
                    await resp.read()
                    statuses.append(resp.status)

            for start in range(0, 300, 20):
                await asyncio.gather(*(guess(i) for i in range(start, start + 20)))
    await asyncio.sleep(0.5)  # Dovecot's log catches up
    reached = dovecot.log_text().lower().count(marker) - before
    return [
        Figure("spray", "of 300 wrong logins, reaching the server", reached, 30, ""),
        Figure("spray", "answered 429", statuses.count(429), 250, "", False),
    ]


async def check_flood(dovecot: Dovecot) -> list[Figure]:
    """30 parallel POST /check with wrong passwords for one user, three rounds: guessing
    through /check meets the same pool and throttle as every route."""
    user = dovecot.new_user("checked")
    marker = "auth failed"
    before = dovecot.log_text().lower().count(marker)
    statuses: list[int] = []
    owner = {"Authorization": basic_auth(user.name, user.password)}
    with Gateway(dovecot.port) as gateway:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            # the owner uses the gateway (its password becomes known-good), then the flood
            async with http.get(gateway.base + "/v1/mailboxes/me", headers=owner) as resp:
                assert resp.status == 200, await resp.text()

            async def guess(i: int) -> None:
                auth = {"Authorization": basic_auth(user.name, f"guess-{i}")}
                url = gateway.base + "/v1/mailboxes/me/check"
                async with http.post(url, headers=auth) as resp:
                    await resp.read()
                    statuses.append(resp.status)

            for start in range(0, 90, 30):
                await asyncio.gather(*(guess(i) for i in range(start, start + 30)))
            async with http.get(
                gateway.base + "/v1/mailboxes/me?fresh=true", headers=owner
            ) as resp:
                owner_status = resp.status
    await asyncio.sleep(0.5)  # Dovecot's log catches up
    reached = dovecot.log_text().lower().count(marker) - before
    return [
        Figure("check_flood", "of 90 wrong /check logins, reaching the server", reached, 10, ""),
        Figure("check_flood", "answered 429", statuses.count(429), 80, "", False),
        Figure(
            "check_flood", "the owner's next request answers 200", owner_status == 200, 1, "", False
        ),
    ]


async def owner_after_restart(dovecot: Dovecot) -> list[Figure]:
    """The owner logs in; the gateway restarts (Redis keeps its state); a stranger sends 20
    wrong passwords for the owner's login; the owner must still get in."""
    user = dovecot.new_user("owner")
    user.deliver(b"Subject: mine\r\n\r\nx\r\n")
    extra = {
        "POP3GW_REDIS_URL": REDIS_URL,
        "POP3GW_CACHE_SECRET": secrets.token_hex(16),  # the same across the restart
    }
    owner = {"Authorization": basic_auth(user.name, user.password)}
    url_for = "/v1/mailboxes/me"
    with Gateway(dovecot.port, extra=extra) as gateway:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(gateway.base + url_for, headers=owner) as resp,
        ):
            first = resp.status
    statuses: list[int] = []
    with Gateway(dovecot.port, extra=extra) as gateway:  # a new process: nothing in memory
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for i in range(20):
                stranger = {"Authorization": basic_auth(user.name, f"wrong-{i}")}
                async with http.get(gateway.base + url_for, headers=stranger) as resp:
                    statuses.append(resp.status)
            async with http.get(gateway.base + url_for, headers=owner) as resp:
                after = resp.status
    return [
        Figure("owner_restart", "owner before the restart answers 200", first == 200, 1, "", False),
        Figure(
            "owner_restart",
            "stranger's 20 guesses refused (401/429)",
            sum(s in (401, 429) for s in statuses),
            20,
            "",
            False,
        ),
        Figure("owner_restart", "owner after them answers 200", after == 200, 1, "", False),
    ]


async def redis_tamper(dovecot: Dovecot) -> list[Figure]:
    """Anyone who can write to Redis rewrites the cached header summaries of a mailbox:
    forged values and values moved from another message's key. The listing must show the
    real subjects, and count the forged values as invalid."""
    user = dovecot.new_user("tamper")
    user.deliver_many(b"Subject: real %d\r\n\r\nx\r\n" % i for i in range(5))
    auth = {"Authorization": basic_auth(user.name, user.password)}
    # a database of its own, so that no one else's keys are touched (other runs share the
    # server); still, only the keys of this mailbox are rewritten
    url = REDIS_URL.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    before = set(client.scan_iter("pop3gw:v2:hdr:*", count=1000))
    listing = "/v1/mailboxes/me/messages?fresh=true"
    extra = {"POP3GW_REDIS_URL": url, "POP3GW_CACHE_SECRET": secrets.token_hex(16)}
    with Gateway(dovecot.port, extra=extra) as gateway:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(gateway.base + listing, headers=auth) as resp:
                page = (await resp.json())["messages"]
            real = sorted(m["subject"] for m in page)
            ids = {m["id"].encode() for m in page}
            # this mailbox's keys (the shared Redis may hold others' meanwhile): new ones
            # ending in its message ids, in the one namespace that has all of them
            new = set(client.scan_iter("pop3gw:v2:hdr:*", count=1000)) - before
            spaces: dict[bytes, list[bytes]] = {}
            for key in new:
                space, _, uid = key.rpartition(b":")
                if uid in ids:
                    spaces.setdefault(space, []).append(key)
            keys = sorted(next(k for k in spaces.values() if len(k) == len(ids)))
            values = [client.get(k) for k in keys]
            # half forged outright, half swapped: each a sealed value of another key
            for i, key in enumerate(keys):
                if i % 2:
                    client.set(key, values[(i + 1) % len(keys)] or b"")
                else:
                    client.set(key, json.dumps({"v": 1, "s": "FORGED"}))
    # A replica reads them (the first process holds the summaries it parsed itself).
    with Gateway(dovecot.port, extra=extra) as replica:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(replica.base + listing, headers=auth) as resp:
                shown = sorted(m["subject"] for m in (await resp.json())["messages"])
            invalid = await metric(
                http, replica.base, 'pop3gw_header_cache_events_total{kind="invalid"}'
            )
    client.close()
    return [
        Figure(
            "redis_tamper",
            f"tampered values shown (of {len(keys)} rewritten)",
            sum(a != b for a, b in zip(shown, real, strict=True)),
            0,
            "",
        ),
        Figure("redis_tamper", "tampered values counted invalid", invalid, len(keys), "", False),
    ]


async def slowloris(dovecot: Dovecot) -> list[Figure]:
    """50 connections that send half a request head and then one byte a second."""
    extra = {"POP3GW_HTTP__HEADER_TIMEOUT": "2"}
    with Gateway(dovecot.port, extra=extra) as gateway:
        writers: list[asyncio.StreamWriter] = []
        readers: list[asyncio.StreamReader] = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            readers.append(reader)
            writers.append(writer)
        for _ in range(5):  # 5 s of trickling, past the 2 s header timeout
            for writer in writers:
                if not writer.is_closing():
                    writer.write(b"X")
            await asyncio.sleep(1)

        async def ended(reader: asyncio.StreamReader) -> bool:
            """Whether the gateway closed the connection (an error answer first or not)."""
            try:
                await asyncio.wait_for(reader.read(), 3)
            except (TimeoutError, ConnectionError):
                return reader.at_eof()
            return True

        closed = sum(await asyncio.gather(*(ended(r) for r in readers)))
        async with aiohttp.ClientSession() as http, http.get(gateway.base + "/healthz") as r:
            healthy = r.status == 200
        for writer in writers:
            writer.close()
    return [
        Figure("slowloris", "share of trickling connections closed", closed / 50, 1, "", False),
        Figure("slowloris", "/healthz answers meanwhile", float(healthy), 1, "", False),
    ]


async def stalled_readers(dovecot: Dovecot) -> list[Figure]:
    """8 clients start /raw of a 12 MB message and stop reading; another account lists."""
    owner, other = dovecot.new_user("stall"), dovecot.new_user("other")
    owner.deliver(
        b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" * 0 + (b"y" * 998 + b"\r\n") * 12_000
    )
    other.deliver(b"Subject: small\r\n\r\nx\r\n")
    extra = {"POP3GW_POOL__MAX_PER_UPSTREAM": "8", "POP3GW_POOL__ACQUIRE_TIMEOUT": "10"}
    with Gateway(dovecot.port, extra=extra) as gateway:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            auth = {"Authorization": basic_auth(owner.name, owner.password)}
            async with http.get(gateway.base + "/v1/mailboxes/me/messages", headers=auth) as r:
                message_id = (await r.json())["messages"][0]["id"]
            head = (
                f"GET /v1/mailboxes/me/messages/{message_id}/raw HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {basic_auth(owner.name, owner.password)}\r\n\r\n"
            ).encode()
            stalled = []
            for _ in range(8):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", gateway.port, limit=4096
                )
                sock = writer.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                writer.write(head)
                await reader.read(4096)  # the start of the answer, then nothing more
                stalled.append(writer)
            await asyncio.sleep(1)
            worst = 0.0
            statuses = []
            other_auth = {"Authorization": basic_auth(other.name, other.password)}
            for _ in range(5):
                started = time.perf_counter()
                url = gateway.base + "/v1/mailboxes/me/messages?fresh=true"
                async with http.get(url, headers=other_auth) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                worst = max(worst, time.perf_counter() - started)
                await asyncio.sleep(2.1)
            for writer in stalled:
                writer.close()
    return [
        Figure("stalled_readers", "another account's worst answer, 8 stalled (s)", worst, 1, "s"),
        Figure(
            "stalled_readers", "its answers other than 200", sum(s != 200 for s in statuses), 0, ""
        ),
    ]


Scenario = Callable[[Dovecot], Awaitable[list[Figure]]]


async def fd_exhaustion(dovecot: Dovecot) -> list[Figure]:
    """The gateway runs out of file descriptors: 200 clients connect while it has room for
    8 more, and hold on for 10 s. Accepting must pause (no busy loop, a log line per 10 s,
    not one per failed accept), and it must answer again once they leave."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        with Gateway(dovecot.port, extra={"POP3GW_POOL__MAX_TOTAL": "4"}, log=log) as gateway:
            in_use = len(os.listdir(f"/proc/{gateway.pid}/fd"))
            resource.prlimit(gateway.pid, resource.RLIMIT_NOFILE, (in_use + 8, 4096))
            before = len(log.read_bytes().splitlines())
            cpu = cpu_seconds(gateway.pid)
            port = gateway.port
            clients: list[socket.socket] = []
            try:
                for _ in range(200):
                    sock = socket.socket()
                    sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        sock.connect(("127.0.0.1", port))
                    clients.append(sock)
                await asyncio.sleep(10)
                busy = cpu_seconds(gateway.pid) - cpu
                lines = log.read_bytes().splitlines()[before:]
            finally:
                for sock in clients:
                    sock.close()
            resource.prlimit(gateway.pid, resource.RLIMIT_NOFILE, (4096, 4096))
            started = time.monotonic()
            answered = False
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                while not answered and time.monotonic() - started < 20:
                    try:
                        async with http.get(gateway.base + "/healthz") as resp:
                            answered = resp.status == 200
                    except (aiohttp.ClientError, TimeoutError):
                        await asyncio.sleep(0.2)
            recovery = time.monotonic() - started if answered else 99.0
    tracebacks = sum(b"Traceback" in line for line in lines)
    return [
        Figure("fd_exhaustion", "log lines in 10 s out of descriptors", len(lines), 3, ""),
        Figure("fd_exhaustion", "tracebacks logged", tracebacks, 0, ""),
        Figure("fd_exhaustion", "CPU seconds used meanwhile (no busy loop)", busy, 1.0, "s"),
        Figure("fd_exhaustion", "seconds to answer /healthz once they left", recovery, 5, "s"),
    ]


async def _endless(_dovecot: Dovecot) -> list[Figure]:
    return await endless_uidl()


SCENARIOS: dict[str, Scenario] = {
    "hostile_header": hostile_header,
    "heavy_message": heavy_message,
    "abandoned_gets": abandoned_gets,
    "big_names": big_names,
    "case_spellings": lambda _dovecot: case_spellings(),
    "fresh_loop": fresh_loop,
    "spray": spray,
    "check_flood": check_flood,
    "owner_restart": owner_after_restart,
    "redis_tamper": redis_tamper,
    "slowloris": slowloris,
    "stalled_readers": stalled_readers,
    "endless_uidl": _endless,
    "fd_exhaustion": fd_exhaustion,
}


async def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    figures: list[Figure] = []
    with Dovecot() as dovecot:
        for name in names or list(SCENARIOS):
            started = time.monotonic()
            try:
                found = await asyncio.wait_for(SCENARIOS[name](dovecot), timeout=300)
            except Exception as exc:  # a scenario that cannot run is a failure, said plainly
                found = [Figure(name, f"could not run: {type(exc).__name__}: {exc}"[:52], 1, 0, "")]
            figures.extend(found)
            print(f"{name}: {time.monotonic() - started:.1f} s", flush=True)
            for figure in found:
                print(figure.line(), flush=True)
    print("\nsummary")
    for figure in figures:
        print(figure.line())
    failed = [f for f in figures if not f.ok]
    print(f"\n{len(figures) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
