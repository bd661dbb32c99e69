"""Soak test: a live gateway under mixed load for a bounded time, on the loopback only.

    python -m tests.soak.run            # SOAK_SECONDS (default 600) of load
    SOAK_SECONDS=120 python -m tests.soak.run

What runs: Dovecot (tests/support/dovecot.py) with SOAK_USERS users (default 50), each with
a fixed set of messages that are never deleted; ``python -m gateway serve`` with the Redis on
127.0.0.1:6379 (header cache and replica gate); SOAK_CLIENTS concurrent clients (default 32)
doing, for the whole time, a mix of

- ``list``: a page of the listing (limit 10 or 50, either order, sometimes the next page);
- ``message``: a parsed message (its subject and size checked);
- ``raw``: a message's bytes (compared with what Dovecot must send);
- ``delete``: a freshly delivered message, found with a fresh listing (``list_fresh``),
  deleted, and the delete checked in the Maildir.

A deliverer keeps new messages flowing into the Maildirs so that deletes always have targets.

Reported: requests and errors by kind (every error with its status and problem type), p50
and p99 latency by kind, the gateway's RSS and open file descriptors over time (sampled from
/proc every SOAK_SAMPLE_SECONDS, default 5). RSS drift is the mean of the last window over
the mean of the first window after the warm-up (SOAK_WARMUP_SECONDS, default 60), minus 1;
windows are min(60 s, half of what follows the warm-up). At the end every message that was
not deleted must still be in its Maildir.

Exit status 1 when there was any error, the RSS drift is above 10%, the descriptors grew
steadily (last window's mean above the first's by more than max(10, 25%)), a message was
lost, or the gateway did not stop cleanly; 0 otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis

from gateway.accounts import Account, Credential, Upstream
from gateway.mail import parse_message
from gateway.pop3 import TLSMode
from tests.support.corpus import (
    expected_list_size,
    expected_retr,
    generate_corpus,
    large_message,
    simple_message,
)
from tests.support.dovecot import Dovecot, DovecotUser, free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS = ("127.0.0.1", 6379)
MAX_DRIFT = 0.10
KINDS = ("list", "message", "raw", "list_fresh", "delete")
WEIGHTS = {"list": 35, "message": 25, "raw": 20, "delete": 20}
FRESH_PER_USER = 2  # unclaimed fresh messages kept in each Maildir


def env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


# -- the messages ------------------------------------------------------------------------------


def stable_messages() -> list[bytes]:
    corpus = [m.raw for m in generate_corpus(7) if not m.raw.startswith(b".")]
    return [
        *(simple_message(i) for i in range(4)),
        *corpus[:12],
        large_message(150_000, seed=7),
    ]


@dataclass(frozen=True)
class Expected:
    raw: bytes
    retr: bytes
    subject: str | None
    list_size: int


def fresh_message(token: str) -> bytes:
    return (
        f"From: Soak <soak@example.com>\r\nTo: someone@example.com\r\n"
        f"Subject: soak-fresh {token}\r\nMessage-ID: <{token}@soak.example>\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\nbody {token}\r\n"
    ).encode()


# -- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Mailbox:
    user: DovecotUser
    auth: str  # the Authorization header value
    ids: list[str] = field(default_factory=list)  # stable messages, in delivery order
    available: dict[str, str] = field(default_factory=dict)  # fresh token -> file base name
    claimed: int = 0
    delivered: dict[str, str] = field(default_factory=dict)
    delivered_at: dict[str, float] = field(default_factory=dict)  # token -> wall clock
    deleted: set[str] = field(default_factory=set)
    cursors: dict[str, str] = field(default_factory=dict)  # order -> a next_cursor seen


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[tuple[str, str, str, str]] = field(default_factory=list)

    def ok(self, kind: str, seconds: float) -> None:
        self.latencies[kind].append(seconds)

    def error(self, kind: str, status: str, problem: str, detail: str) -> None:
        self.errors.append((kind, status, problem, detail[:300]))
        print(f"  ERROR {kind}: {status} {problem} {detail[:200]}", flush=True)


class Failure(Exception):
    def __init__(self, status: str, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.problem, self.detail = status, problem, detail


# -- the gateway -----------------------------------------------------------------------------


def redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_gateway(
    dovecot: Dovecot, port: int, cache_secret: str, log_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "POP3GW_DEFAULT_UPSTREAM": f"pop3://127.0.0.1:{dovecot.port}",
        "POP3GW_LISTEN": f"127.0.0.1:{port}",
        "POP3GW_PRESETS": "false",
        "POP3GW_REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
        "POP3GW_CACHE_SECRET": cache_secret,
        "POP3GW_CACHE_TTL_SECONDS": "3600",
        "POP3GW_POOL__MAX_PER_UPSTREAM": "64",
        "POP3GW_POOL__MAX_TOTAL": "128",
        "POP3GW_LOG__LEVEL": "WARNING",
        "POP3GW_SHUTDOWN_DELAY_SECONDS": "0",
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )


async def wait_healthy(session: aiohttp.ClientSession, base: str, proc: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the gateway exited at start (see its log)")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not answer /healthz within 30 s")


def stop_gateway(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def process_sample(pid: int) -> tuple[int, int]:
    """(RSS in kB, open file descriptors) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# -- requests ----------------------------------------------------------------------------------


async def request(
    session: aiohttp.ClientSession,
    stats: Stats,
    kind: str,
    method: str,
    url: str,
    auth: str,
    expect: int,
) -> tuple[bytes, Any]:
    started = time.perf_counter()
    try:
        async with session.request(method, url, headers={"Authorization": auth}) as resp:
            body = await resp.read()
            status = resp.status
            content_type = resp.headers.get("Content-Type", "")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Failure("exception", type(exc).__name__, str(exc)) from None
    if status != expect:
        problem, detail = "-", body[:200].decode("utf-8", "replace")
        if content_type.startswith("application/problem+json"):
            with contextlib.suppress(ValueError):
                data = json.loads(body)
                problem, detail = data.get("type", "-"), data.get("detail", "")
        raise Failure(str(status), problem, detail)
    stats.ok(kind, time.perf_counter() - started)
    data = json.loads(body) if content_type.startswith("application/json") else None
    return body, data


class Load:
    def __init__(
        self, base: str, boxes: list[Mailbox], expected: list[Expected], deadline: float
    ) -> None:
        self.base = base
        self.boxes = boxes
        self.expected = expected
        self.deadline = deadline
        self.stats = Stats()
        self.rng = random.Random(20261127)

    async def client(self, session: aiohttp.ClientSession) -> None:
        kinds, weights = zip(*WEIGHTS.items(), strict=True)
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "delete" and not any(box.available for box in self.boxes):
                kind = "list"  # nothing delivered yet to delete: list instead
            try:
                if kind == "delete":
                    await self.delete(session)
                    continue
                box = self.rng.choice(self.boxes)
                if kind == "message":
                    await self.message(session, box)
                elif kind == "raw":
                    await self.raw(session, box)
                else:
                    await self.listing(session, box)
            except Failure as failure:
                self.stats.error(kind, failure.status, failure.problem, failure.detail)

    def url(self, path: str) -> str:
        return f"{self.base}/v1/mailboxes/me{path}"

    async def listing(self, session: aiohttp.ClientSession, box: Mailbox) -> None:
        order = self.rng.choice(("desc", "asc"))
        query = f"?limit={self.rng.choice((10, 50))}&order={order}"
        cursor = box.cursors.pop(order, None)
        if cursor is not None and self.rng.random() < 0.5:
            query += f"&cursor={cursor}"
        _, page = await request(
            session, self.stats, "list", "GET", self.url("/messages" + query), box.auth, 200
        )
        if page["total"] < len(self.expected):
            raise Failure("200", "check", f"listing total {page['total']} < stable messages")
        if page["next_cursor"]:
            box.cursors[order] = page["next_cursor"]

    async def message(self, session: aiohttp.ClientSession, box: Mailbox) -> None:
        i = self.rng.randrange(len(box.ids))
        _, data = await request(
            session,
            self.stats,
            "message",
            "GET",
            self.url(f"/messages/{box.ids[i]}"),
            box.auth,
            200,
        )
        want = self.expected[i]
        if (data["subject"], data["size"]) != (want.subject, len(want.retr)):
            raise Failure("200", "check", f"message {i}: subject/size differ")

    async def raw(self, session: aiohttp.ClientSession, box: Mailbox) -> None:
        i = self.rng.randrange(len(box.ids))
        body, _ = await request(
            session,
            self.stats,
            "raw",
            "GET",
            self.url(f"/messages/{box.ids[i]}/raw"),
            box.auth,
            200,
        )
        if body != self.expected[i].retr:
            raise Failure("200", "check", f"raw message {i}: {len(body)} bytes differ")

    async def delete(self, session: aiohttp.ClientSession) -> None:
        """Find a fresh message with a fresh listing, delete it, check the Maildir."""
        box = self.rng.choice([box for box in self.boxes if box.available])
        token, name = box.available.popitem()
        box.claimed += 1
        try:
            # ?fresh=true is rationed per mailbox (POP3GW_POOL__MIN_FRESH_INTERVAL): within
            # the interval the newest snapshot is served, which may predate the delivery.
            # A snapshot taken in a later second than the delivery must show the message.
            must_show = math.ceil(box.delivered_at[token])
            for _ in range(20):
                _, page = await request(
                    session,
                    self.stats,
                    "list_fresh",
                    "GET",
                    self.url("/messages?limit=50&fresh=true"),
                    box.auth,
                    200,
                )
                found = [m["id"] for m in page["messages"] if m["subject"] == f"soak-fresh {token}"]
                taken = datetime.fromisoformat(page["snapshot_at"]).timestamp()
                if found or taken >= must_show:
                    break
                await asyncio.sleep(0.5)
            if len(found) != 1:
                raise Failure("200", "check", f"fresh message {token} listed {len(found)} times")
            await request(
                session,
                self.stats,
                "delete",
                "DELETE",
                self.url(f"/messages/{found[0]}"),
                box.auth,
                204,
            )
            if in_maildir(box.user, name):
                raise Failure("204", "check", f"deleted {token} is still in the Maildir")
            box.deleted.add(token)
        finally:
            box.claimed -= 1

    async def deliverer(self) -> None:
        while time.monotonic() < self.deadline:
            for box in self.boxes:
                while len(box.available) + box.claimed < FRESH_PER_USER:
                    token = secrets.token_hex(8)
                    path = box.user.deliver(fresh_message(token))
                    box.available[token] = path.name
                    box.delivered[token] = path.name
                    box.delivered_at[token] = time.time()
            await asyncio.sleep(0.1)


def in_maildir(user: DovecotUser, name: str) -> bool:
    for sub in ("new", "cur"):
        with os.scandir(user.maildir / sub) as entries:
            if any(entry.name.split(":", 1)[0].startswith(name) for entry in entries):
                return True
    return False


# -- sampling and the report -------------------------------------------------------------------


async def sampler(
    pid: int, started: float, deadline: float, every: float, samples: list[tuple[float, int, int]]
) -> None:
    while True:
        with contextlib.suppress(OSError):
            rss, fds = process_sample(pid)
            samples.append((time.monotonic() - started, rss, fds))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


def windows(duration: float, warmup: float) -> tuple[tuple[float, float], tuple[float, float]]:
    warmup = min(warmup, duration / 2)
    width = min(60.0, (duration - warmup) / 2)
    return (warmup, warmup + width), (duration - width, duration + 1e9)


def mean_in(samples: list[tuple[float, int, int]], span: tuple[float, float], col: int) -> float:
    values = [s[col] for s in samples if span[0] <= s[0] < span[1]]
    return statistics.fmean(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cleanup_redis(cache_secret: str, dovecot: Dovecot, boxes: list[Mailbox]) -> int:
    """Delete this run's keys from the shared Redis (cache entries, replica locks)."""
    key = hashlib.sha256(cache_secret.encode()).digest()
    upstream = Upstream(name="default", host="127.0.0.1", port=dovecot.port, tls=TLSMode.PLAIN)
    removed = 0
    with redis.Redis(host=REDIS[0], port=REDIS[1]) as client:
        for box in boxes:
            account = Account(
                mailbox_id="me",
                upstream=upstream,
                user=box.user.name,
                credential=Credential("pass", value=box.user.password),
                passthrough=True,
            )
            namespace = account.namespace(key)
            keys = list(client.scan_iter(match=f"pop3gw:v2:hdr:{namespace}:*", count=1000))
            keys += [f"pop3gw:v1:{kind}:{namespace}" for kind in ("lock", "want", "delay")]
            removed += client.delete(*keys)
    return removed


async def soak() -> int:
    duration = env_number("SOAK_SECONDS", 600)
    warmup = env_number("SOAK_WARMUP_SECONDS", 60)
    every = env_number("SOAK_SAMPLE_SECONDS", 5)
    users = int(env_number("SOAK_USERS", 50))
    clients = int(env_number("SOAK_CLIENTS", 32))
    if not redis_answers():
        print("no Redis on 127.0.0.1:6379 (scripts/bootstrap.sh installs one)", file=sys.stderr)
        return 2
    stable = stable_messages()
    expected = []
    for raw in stable:
        retr = expected_retr(raw)
        expected.append(Expected(raw, retr, parse_message(retr).subject, expected_list_size(raw)))
    cache_secret = secrets.token_hex(16)
    print(
        f"soak: {duration:g} s, {users} users x {len(stable)} stable messages, "
        f"{clients} clients, warm-up {min(warmup, duration / 2):g} s, sampling every {every:g} s",
        flush=True,
    )
    with (
        Dovecot(process_limit=1000) as dovecot,
        tempfile.TemporaryDirectory(prefix="pop3gw-soak-") as tmp,
    ):
        boxes = []
        for _ in range(users):
            user = dovecot.new_user("soak")
            user.deliver_many(stable)
            token = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
            boxes.append(Mailbox(user, "Basic " + token))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "gateway.log"
        proc = start_gateway(dovecot, port, cache_secret, log_path)
        exit_code: int | None = None
        samples: list[tuple[float, int, int]] = []
        try:
            timeout = aiohttp.ClientTimeout(total=60)
            connector = aiohttp.TCPConnector(limit=clients * 2)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                await wait_healthy(session, base, proc)
                setup = Stats()
                for box in boxes:
                    _, page = await request(
                        session,
                        setup,
                        "list",
                        "GET",
                        f"{base}/v1/mailboxes/me/messages?order=asc&limit=500&fresh=true",
                        box.auth,
                        200,
                    )
                    sizes = [m["size"] for m in page["messages"]]
                    if sizes != [e.list_size for e in expected]:
                        raise SystemExit(f"unexpected listing for {box.user.name}: {sizes}")
                    box.ids = [m["id"] for m in page["messages"]]
                started = time.monotonic()
                deadline = started + duration
                load = Load(base, boxes, expected, deadline)
                tasks = [asyncio.create_task(load.deliverer())]
                tasks.append(
                    asyncio.create_task(sampler(proc.pid, started, deadline, every, samples))
                )
                tasks += [asyncio.create_task(load.client(session)) for _ in range(clients)]
                progress = asyncio.create_task(report_progress(load, started, deadline, samples))
                await asyncio.gather(*tasks)
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
                elapsed = time.monotonic() - started
        finally:
            exit_code = stop_gateway(proc)
        log_lines = log_path.read_text(errors="replace").splitlines()
        lost = check_maildirs(boxes, stable)
        removed = cleanup_redis(cache_secret, dovecot, boxes)
    return report(load.stats, samples, elapsed, warmup, lost, exit_code, log_lines, removed)


async def report_progress(
    load: Load, started: float, deadline: float, samples: list[tuple[float, int, int]]
) -> None:
    while time.monotonic() < deadline:
        await asyncio.sleep(30)
        done = sum(len(v) for v in load.stats.latencies.values())
        rss = f"{samples[-1][1] / 1024:.1f} MiB, {samples[-1][2]} fds" if samples else "-"
        print(
            f"  t={time.monotonic() - started:5.0f}s requests={done:,} "
            f"errors={len(load.stats.errors)} gateway={rss}",
            flush=True,
        )


def check_maildirs(boxes: list[Mailbox], stable: list[bytes]) -> list[str]:
    lost: list[str] = []
    for box in boxes:
        stored = Counter(box.user.messages())
        for i, raw in enumerate(stable):
            if stored[raw] != 1:
                lost.append(f"{box.user.name}: stable message {i} found {stored[raw]} times")
        contents = list(stored.elements())
        for token in box.delivered:
            count = sum(1 for raw in contents if f"soak-fresh {token}".encode() in raw)
            want = 0 if token in box.deleted else 1
            if count != want:
                lost.append(f"{box.user.name}: fresh {token} found {count} times, expected {want}")
    return lost


def report(
    stats: Stats,
    samples: list[tuple[float, int, int]],
    elapsed: float,
    warmup: float,
    lost: list[str],
    exit_code: int | None,
    log_lines: list[str],
    removed_keys: int,
) -> int:
    print(f"\n== soak report ({elapsed:.0f} s of load)")
    errors_by_kind = Counter(kind for kind, *_ in stats.errors)
    total = sum(len(v) for v in stats.latencies.values())
    print(f"{'kind':<11} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for kind in KINDS:
        values = stats.latencies.get(kind, [])
        p50 = f"{percentile(values, 0.5) * 1000:8.1f}" if values else f"{'-':>8}"
        p99 = f"{percentile(values, 0.99) * 1000:8.1f}" if values else f"{'-':>8}"
        rate = len(values) / elapsed if elapsed else 0
        print(f"{kind:<11} {len(values):>9,} {errors_by_kind[kind]:>7} {p50} {p99} {rate:7.1f}")
    print(f"{'all':<11} {total:>9,} {len(stats.errors):>7}")
    if stats.errors:
        print("errors (kind, status, problem type: count):")
        grouped = Counter((kind, status, problem) for kind, status, problem, _ in stats.errors)
        for (kind, status, problem), count in grouped.most_common():
            print(f"  {kind} {status} {problem}: {count}")
        for kind, status, problem, detail in stats.errors:
            print(f"  - {kind} {status} {problem} {detail}")

    duration = samples[-1][0] if samples else elapsed
    first, last = windows(duration, warmup)
    rss_first, rss_last = mean_in(samples, first, 1), mean_in(samples, last, 1)
    fds_first, fds_last = mean_in(samples, first, 2), mean_in(samples, last, 2)
    drift = rss_last / rss_first - 1
    fd_growth = fds_last - fds_first
    fd_limit = max(10.0, 0.25 * fds_first)
    print("gateway RSS (MiB) and open fds over time:")
    step = max(1, len(samples) // 40)
    shown = sorted({*range(0, len(samples), step), len(samples) - 1})
    for t, rss, fds in (samples[i] for i in shown):
        print(f"  t={t:6.0f}s  rss={rss / 1024:7.1f}  fds={fds:4d}")
    print(
        f"RSS: first window {first[0]:.0f}-{first[1]:.0f}s mean {rss_first / 1024:.1f} MiB, "
        f"last window from {last[0]:.0f}s mean {rss_last / 1024:.1f} MiB, "
        f"drift {drift * 100:+.1f}% (goal <= {MAX_DRIFT * 100:.0f}%); "
        f"max {max(s[1] for s in samples) / 1024:.1f} MiB"
    )
    print(
        f"fds: first window mean {fds_first:.1f}, last window mean {fds_last:.1f}, "
        f"growth {fd_growth:+.1f} (limit {fd_limit:.1f}); min {min(s[2] for s in samples)}, "
        f"max {max(s[2] for s in samples)}"
    )
    print(f"messages lost or left behind: {len(lost)}")
    for line in lost[:50]:
        print(f"  - {line}")
    warnings = [line for line in log_lines if '"level": "warning"' in line]
    errors = [line for line in log_lines if '"level": "error"' in line]
    print(f"gateway log: {len(warnings)} warning(s), {len(errors)} error(s); exit {exit_code}")
    for line in (errors + warnings)[:20]:
        print(f"  {line[:300]}")
    print(f"redis keys of this run removed: {removed_keys}")
    verdicts = {
        "errors": not stats.errors,
        "rss drift": drift <= MAX_DRIFT,
        "fds flat": fd_growth <= fd_limit,
        "nothing lost": not lost,
        "clean stop": exit_code == 0,
    }
    print("verdict: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdicts.items()))
    summary = {
        "seconds": round(elapsed),
        "requests": {k: len(stats.latencies.get(k, [])) for k in KINDS},
        "errors": len(stats.errors),
        "p50_ms": {k: round(percentile(v, 0.5) * 1000, 1) for k, v in stats.latencies.items() if v},
        "p99_ms": {
            k: round(percentile(v, 0.99) * 1000, 1) for k, v in stats.latencies.items() if v
        },
        "rss_drift": round(drift, 4),
        "fd_growth": round(fd_growth, 1),
        "lost": len(lost),
    }
    print("summary: " + json.dumps(summary))
    return 0 if all(verdicts.values()) else 1


def main() -> int:
    return asyncio.run(soak())


if __name__ == "__main__":
    sys.exit(main())
