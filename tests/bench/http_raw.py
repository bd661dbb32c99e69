"""Benchmark: ``/raw`` of a 20 MB message through the gateway, against poplib's ``retr()``.

A Dovecot mailbox holds one ``large_message(20_000_000)`` (a 20 MB multipart message,
mostly base64). The gateway (``python -m gateway serve``, its own process) streams it from
``GET /v1/mailboxes/me/messages/{id}/raw``; an aiohttp client in this process reads the body
as it comes and throws it away. The baseline is CPython's poplib in this process:
``retr(1)`` on a logged-in session, only the RETR timed (connect and login are not).

- Speed: MB/s (10^6 octets per second) of the whole HTTP request (first byte sent to last
  byte received) against poplib's RETR; medians of several runs, alternating which goes
  first. Target: the gateway at least as fast.
- Memory: the gateway's peak RSS growth during one download. Before each timed download
  the peak is reset to the current RSS (``echo 5 > /proc/<pid>/clear_refs``); after it,
  ``VmHWM`` minus the RSS at the reset is the growth. VmRSS is also sampled every 10 ms as a
  cross-check. Target: at most 32 MiB, in every run.

The gateway is warm before anything is timed: one listing (login, UIDL+LIST, TOP) and one
full download whose bytes are checked against the message delivered. poplib's result is
checked too.
"""

from __future__ import annotations

import asyncio
import hashlib
import poplib
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import aiohttp

from tests.bench import report
from tests.bench.processes import Gateway, basic_auth, proc_status, reset_peak_rss
from tests.support.corpus import large_message
from tests.support.dovecot import Dovecot, DovecotUser

NAME = "http_raw"
SIZE = 20_000_000
RUNS = 5
RSS_CAP_KIB = 32 * 1024
SAMPLE_EVERY = 0.010
READ_CHUNK = 1 << 16
HTTP_TIMEOUT = 120.0


@dataclass
class Download:
    seconds: float
    octets: int
    digest: str | None
    hwm_growth_kib: int = 0
    sampled_growth_kib: int = 0


class RssSampler:
    """VmRSS of ``pid`` every ``SAMPLE_EVERY`` seconds, in a thread; the peak in kB."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self._pid)["VmRSS"])
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> RssSampler:
        self.peak = proc_status(self._pid)["VmRSS"]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, proc_status(self._pid)["VmRSS"])


async def _message_id(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/v1/mailboxes/me/messages", params={"limit": "1"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"listing answered {resp.status}")
        page = await resp.json()
    if page["total"] != 1:
        raise RuntimeError(f"expected one message, the gateway lists {page['total']}")
    message_id: str = page["messages"][0]["id"]
    return message_id


async def _download(session: aiohttp.ClientSession, url: str, *, check: bool) -> Download:
    digest = hashlib.sha256() if check else None
    octets = 0
    began = time.perf_counter()
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/raw answered {resp.status}: {await resp.text()}")
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            octets += len(chunk)
            if digest is not None:
                digest.update(chunk)
    seconds = time.perf_counter() - began
    return Download(seconds, octets, digest.hexdigest() if digest else None)


def _poplib_retr(port: int, user: DovecotUser, expected: bytes | None) -> float:
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user.name)
        pop.pass_(user.password)
        started = time.perf_counter()
        _, lines, _ = pop.retr(1)
        seconds = time.perf_counter() - started
    finally:
        pop.quit()
    if expected is not None and b"\r\n".join(lines) + b"\r\n" != expected:
        raise RuntimeError("poplib's RETR does not match the message delivered")
    return seconds


async def _gateway_runs(gateway: Gateway, user: DovecotUser, raw: bytes) -> list[Download]:
    headers = {"Authorization": basic_auth(user.name, user.password)}
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        url = f"{gateway.base}/v1/mailboxes/me/messages/{await _message_id(session, gateway.base)}"
        url += "/raw"
        first = await _download(session, url, check=True)
        if first.octets != len(raw) or first.digest != hashlib.sha256(raw).hexdigest():
            raise RuntimeError("the gateway's /raw does not match the message delivered")
        runs = []
        for _ in range(RUNS):
            reset_peak_rss(gateway.pid)
            at_reset = proc_status(gateway.pid)["VmRSS"]
            with RssSampler(gateway.pid) as sampler:
                got = await _download(session, url, check=False)
            got.hwm_growth_kib = proc_status(gateway.pid)["VmHWM"] - at_reset
            got.sampled_growth_kib = sampler.peak - at_reset
            if got.octets != len(raw):
                raise RuntimeError(f"/raw sent {got.octets} octets instead of {len(raw)}")
            runs.append(got)
            await asyncio.sleep(0)
        return runs


def run() -> bool:
    raw = large_message(SIZE)
    with Dovecot() as dovecot:
        user = dovecot.new_user("raw")
        user.deliver(raw)
        _poplib_retr(dovecot.port, user, raw)  # checks poplib, warms Dovecot and the page cache
        with Gateway(dovecot.port) as gateway:
            rss_before = proc_status(gateway.pid)["VmRSS"]
            ours = asyncio.run(_gateway_runs(gateway, user, raw))
            baseline = [_poplib_retr(dovecot.port, user, None) for _ in range(RUNS)]
            # A second round in the other order: poplib first, then the gateway.
            baseline += [_poplib_retr(dovecot.port, user, None) for _ in range(RUNS)]
            ours += asyncio.run(_gateway_runs(gateway, user, raw))
    mb = len(raw) / 1e6
    gw = statistics.median(d.seconds for d in ours)
    pop = statistics.median(baseline)
    print(f"\n/raw of a {len(raw):,}-octet message, loopback ({len(ours)} runs each)")
    print(f"  {'way':<34} {'median s':>9} {'MB/s':>7}")
    print(f"  {'poplib retr()':<34} {pop:9.3f} {mb / pop:7.0f}")
    print(f"  {'gateway /raw (aiohttp client)':<34} {gw:9.3f} {mb / gw:7.0f}")
    print(f"  runs: gateway {', '.join(f'{d.seconds:.3f}' for d in ours)} s")
    print(f"        poplib {', '.join(f'{s:.3f}' for s in baseline)} s")
    hwm = max(d.hwm_growth_kib for d in ours)
    sampled = max(d.sampled_growth_kib for d in ours)
    print(
        f"  gateway RSS at start {rss_before / 1024:.1f} MiB; peak growth per download "
        f"(VmHWM after clear_refs): {', '.join(f'{d.hwm_growth_kib / 1024:.1f}' for d in ours)}"
        f" MiB; VmRSS sampled every {SAMPLE_EVERY * 1000:g} ms: max {sampled / 1024:.1f} MiB"
    )
    ok = report.target(
        NAME,
        "/raw 20 MB: gateway MB/s >= poplib retr()'s",
        f"{mb / gw:.0f} vs {mb / pop:.0f} MB/s ({pop / gw:.1f}x)",
        gw <= pop,
    )
    return (
        report.target(
            NAME,
            "/raw 20 MB: gateway peak RSS growth <= 32 MiB (VmHWM, worst run)",
            f"{hwm / 1024:.1f} MiB",
            hwm <= RSS_CAP_KIB,
        )
        and ok
    )


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
