"""The checks run against one server: the client's view of the mailbox against what is stored.

Every step uses :class:`gateway.pop3.POP3Client` as the gateway does (USER/PASS step by step,
pipelined TRANSACTION commands), except the probes, which speak raw POP3 to observe server
behaviour that the client deliberately avoids (pipelining after PASS, long lines, ...).

A *failure* is a mismatch that would be the client's problem or lose mail: pipelined and
lockstep answers differ, RETR differs from what is stored (after the server's own, known,
transformations), a DELE is applied without QUIT or not applied with it, a client exception.
A *deviation* is server behaviour that departs from the RFCs (or from Dovecot) and that the
client copes with; each says how.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gateway.pop3 import (
    Capabilities,
    POP3AuthError,
    POP3Client,
    POP3Error,
    POP3InUseError,
    POP3LoginDelayError,
    POP3ResponseError,
    Timeouts,
    TLSMode,
)
from tests.compat.servers import (
    HOST,
    PASSWORD,
    SEQ_HEADER,
    USER,
    CompatServer,
    Courier,
    Cyrus,
    Mailutils,
    seq_of,
    with_seq,
)
from tests.support.corpus import generate_corpus, simple_message

#: RFC 2449 section 6 and later RFCs: the CAPA tags a client may meet.
KNOWN_CAPA = frozenset(
    {
        "TOP",
        "USER",
        "SASL",
        "RESP-CODES",
        "LOGIN-DELAY",
        "PIPELINING",
        "EXPIRE",
        "UIDL",
        "IMPLEMENTATION",
        "STLS",
        "AUTH-RESP-CODE",
        "UTF8",
        "LANG",
    }
)
_UID = re.compile(r"[\x21-\x7e]{1,70}")
_COURIER_BOUNDARY = re.compile(rb"=_\d+-\d+")
TIMEOUTS = Timeouts(connect=10, command=60, idle=60)


def header_part(message: bytes) -> bytes:
    """The header block and the empty line after it (what TOP n 0 should give)."""
    end = message.find(b"\r\n\r\n")
    return message[: end + 4] if end >= 0 else message


def first_difference(a: bytes, b: bytes) -> str:
    """Where two byte strings first differ, with some context from each."""
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    around = slice(max(0, n - 20), n + 40)
    return f"at byte {n} (lengths {len(a)} / {len(b)}): {a[around]!r} vs {b[around]!r}"


def _same_answers(
    a: Sequence[bytes | POP3ResponseError],
    b: Sequence[bytes | POP3ResponseError],
    boundaries: bool = False,
) -> bool:
    """Same replies; with `boundaries`, Courier's per-session MIME boundaries aside."""
    return len(a) == len(b) and all(
        (x == y or (boundaries and _same_but_boundary(x, y)))
        if isinstance(x, bytes)
        else str(x) == str(y)
        for x, y in zip(a, b, strict=True)
    )


def _same_but_boundary(a: bytes | POP3Error, b: bytes | POP3Error) -> bool:
    """Equal once Courier's per-session MIME boundaries (``=_<pid>-<time>``) are removed."""
    if not isinstance(a, bytes) or not isinstance(b, bytes):
        return False
    return _COURIER_BOUNDARY.sub(b"", a) == _COURIER_BOUNDARY.sub(b"", b)


def _capa_text(capa: Capabilities) -> str:
    if not capa.supported:
        return "-ERR"
    return ", ".join(" ".join((tag, *args)) for tag, args in capa.items.items())


def _cyrus_delivery_changes(delivered: bytes, body: bytes) -> str | None:
    """The changes Cyrus lmtpd makes to a message, if they explain `body` (else None):
    8-bit header bytes become "X" (munge8bit), a CR before CRLF goes, and a missing Date or
    Message-ID header is added."""
    steps = []
    end = delivered.find(b"\r\n\r\n")
    head, rest = (delivered[:end], delivered[end:]) if end >= 0 else (delivered, b"")
    munged = re.sub(rb"[\x80-\xff]", b"X", head)
    if munged != head:
        steps.append("8-bit header bytes made X")
    want = re.sub(rb"\r+\r\n", b"\r\n", munged + rest)
    if want != munged + rest:
        steps.append("CR before CRLF removed")
    for name, added in (
        (b"Date", rb"(?m)^Date: [^\r\n]*\r\n"),
        (b"Message-ID", rb"(?m)^Message-ID: <cmu-lmtpd-[^\r\n]*\r\n"),
    ):
        if not re.search(rb"(?mi)^" + name + rb":", delivered) and re.search(added, body):
            body = re.sub(added, b"", body, count=1)
            steps.append(f"{name.decode()} header added")
    return ", ".join(steps) if steps and body == want else None


@dataclass
class Message:
    seq: int
    name: str
    raw: bytes  # as built, with the X-Compat-Seq header
    delivered: bytes = b""  # as handed to the server (its stored form)
    refused: str | None = None


@dataclass
class SessionA:
    """What the first (pipelined) session saw; the later checks compare against it."""

    capa_before: Capabilities = field(default_factory=Capabilities)
    capa_after: Capabilities = field(default_factory=Capabilities)
    count: int = 0
    total: int = 0
    uids: dict[int, str] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    tops: list[bytes | POP3ResponseError] = field(default_factory=list)
    retr: list[bytes] = field(default_factory=list)
    seq_of_number: dict[int, int] = field(default_factory=dict)


def build_messages(total: int, corpus: bool) -> list[Message]:
    """`total` messages: simple_message(i), with the whole messy corpus spread among them."""
    extra = generate_corpus() if corpus else []
    step = max(1, total // len(extra)) if extra else 1
    slots = {step // 2 + 1 + step * k: m for k, m in enumerate(extra)}
    messages = []
    for seq in range(1, total + 1):
        if seq in slots:
            messages.append(Message(seq, slots[seq].name, with_seq(seq, slots[seq].raw)))
        else:
            messages.append(Message(seq, f"simple-{seq}", with_seq(seq, simple_message(seq))))
    return messages


@dataclass
class Result:
    server: str
    title: str
    version: str
    rows: dict[str, str] = field(default_factory=dict)
    status: dict[str, bool | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def row(self, check: str, value: str, ok: bool | None = None) -> None:
        self.rows[check] = value
        self.status[check] = ok

    def fail(self, what: str) -> None:
        self.failures.append(what)

    @property
    def ok(self) -> bool:
        return not self.failures and all(v is not False for v in self.status.values())


class _Wire(logging.Handler):
    """Keeps the last lines of the client's wire log (commands and status lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=40)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Checker:
    def __init__(self, server: CompatServer, messages: list[Message], title: str, version: str):
        self.server = server
        self.messages = messages
        self.by_seq = {m.seq: m for m in messages}
        self.r = Result(server.spec.name, title, version)
        self.wire = _Wire()
        self._wire_logger = logging.getLogger("gateway.pop3.wire")
        self.login_retries = 0
        self.logins: list[float] = []
        self.kept: list[Message] = []
        self.a = SessionA()

    # -- helpers -------------------------------------------------------------------------
    def _trace(self, on: bool) -> None:
        self._wire_logger.setLevel(logging.DEBUG if on else logging.WARNING)

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        self.wire.lines.clear()
        self._trace(True)
        try:
            yield
        except Exception as exc:
            exchange = "\n      ".join(self.wire.lines) or "(nothing on the wire)"
            where = traceback.format_exception(exc)[-1].strip()
            self.r.fail(f"{name}: {where}\n    last exchange:\n      {exchange}")
            self.r.row(name, f"error: {type(exc).__name__}", False)

    async def connect(self, *, pipelining: bool = True) -> POP3Client:
        return await POP3Client.connect(
            HOST, self.server.port, tls=TLSMode.PLAIN, pipelining=pipelining, timeouts=TIMEOUTS
        )

    async def session(
        self, *, pipelining: bool = True, how: str = "user", utf8: bool = False
    ) -> POP3Client:
        """A logged-in session; [IN-USE] and [LOGIN-DELAY] right after a previous session
        are retried (and counted: they are server behaviour worth reporting)."""
        for attempt in range(40):
            client = await self.connect(pipelining=pipelining)
            try:
                if utf8:
                    await client.utf8()
                if how == "plain":
                    await client.auth_plain(USER, PASSWORD)
                elif how == "login":
                    await client.auth_login(USER, PASSWORD)
                else:
                    await client.login(USER, PASSWORD)
            except (POP3InUseError, POP3LoginDelayError):
                client.abort()
                self.login_retries += 1
                await asyncio.sleep(0.25 if attempt < 20 else 1.0)
                continue
            except BaseException:
                client.abort()
                raise
            self.logins.append(time.monotonic())
            return client
        raise RuntimeError("the mailbox stayed locked for 25 s")

    def check(self, name: str, ok: bool, value: str) -> bool:
        self.r.row(name, value, ok)
        if not ok:
            self.r.fail(f"{name}: {value}")
        return ok

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> Result:
        logging.getLogger("gateway.pop3").addHandler(self.wire)
        try:
            await self._run()
        finally:
            logging.getLogger("gateway.pop3").removeHandler(self.wire)
            self._trace(False)
        return self.r

    async def _run(self) -> None:
        r = self.r
        r.row("greeting", self.server.greeting[:60])
        refusals = self.server.deliver([m.raw for m in self.messages])
        for m, refused in zip(self.messages, refusals, strict=True):
            m.delivered = self.server.stored_form(m.raw)
            m.refused = refused
        kept = [m for m in self.messages if m.refused is None]
        for m in self.messages:
            if m.refused:
                r.deviations.append(f"delivery refused {m.name} (#{m.seq}): {m.refused}")
        r.row("messages stored", f"{len(kept)}/{len(self.messages)}", None)
        self.kept = kept

        async with self.step("session A (pipelined)"):
            await self.session_a()
        if not self.a.retr:
            return
        async with self.step("session B (lockstep)"):
            await self.session_b()
        async with self.step("RETR vs stored"):
            self.compare_retr()
        async with self.step("sizes and UIDL"):
            self.compare_sizes()
        async with self.step("AUTH"):
            await self.auth()
        async with self.step("UTF8"):
            await self.utf8()
        async with self.step("DELE + abort"):
            await self.dele_abort()
        async with self.step("DELE + QUIT"):
            await self.dele_quit()
        async with self.step("probes"):
            await self.probes()
        delay = self.a.capa_before.login_delay or self.a.capa_after.login_delay
        gaps = [b - a for a, b in zip(self.logins, self.logins[1:], strict=False)]
        if delay and gaps and min(gaps) < delay:
            r.deviations.append(
                f"LOGIN-DELAY {delay} is advertised but was not enforced: {len(self.logins)} "
                f"logins, the closest {min(gaps):.2f} s apart (the client does not wait for the "
                "capability; only a [LOGIN-DELAY] reply makes the pool back off)"
            )
        if self.login_retries:
            r.deviations.append(
                f"a login right after the previous session's QUIT was refused with [IN-USE] "
                f"or [LOGIN-DELAY] {self.login_retries} time(s) (retried)"
            )

    async def session_a(self) -> None:
        r, a = self.r, self.a
        client = await self.connect()
        capa_before = await client.capa()
        await client.login(USER, PASSWORD)
        capa_after = await client.capa()
        a.capa_before, a.capa_after = capa_before, capa_after
        r.row("CAPA before login", _capa_text(capa_before))
        r.row("CAPA after login", _capa_text(capa_after))
        self.capa_deviations(capa_before, "before login")
        self.capa_deviations(capa_after, "after login")
        gone = sorted(set(capa_before.items) - set(capa_after.items))
        new = sorted(set(capa_after.items) - set(capa_before.items))
        if gone:
            r.deviations.append(
                f"CAPA after login drops {', '.join(gone)}: RFC 2449 section 5 wants what is "
                "available in AUTHORIZATION announced in both states (Dovecot drops them too); "
                "harmless here: the gateway logs in with the configured method, and the client "
                "asks CAPA again after login only for PIPELINING"
            )
        if new:
            r.deviations.append(
                f"CAPA after login adds {', '.join(new)} (allowed; the client asks again after "
                "login)"
            )
        self.check("PIPELINING after login", client.pipelining_active, str(capa_after.pipelining))
        count, total = await client.stat()
        a.count, a.total = count, total
        self.check("STAT count", count == len(self.kept), f"{count} {total}")
        uids, sizes = await client.uidl_and_list()
        a.uids, a.sizes = uids, sizes
        numbers = sorted(uids)
        self.check(
            "UIDL+LIST",
            numbers == list(range(1, count + 1)) and sorted(sizes) == numbers,
            f"{len(uids)} uids, {len(sizes)} sizes",
        )
        self._trace(False)
        # Three pipelined rounds (the median is shown); they must agree with each other.
        rounds: list[tuple[float, list[bytes | POP3ResponseError]]] = []
        for _ in range(3):
            t0 = time.perf_counter()
            tops = await client.top_many(numbers, 0)
            rounds.append((time.perf_counter() - t0, tops))
        r.timings["top_pipelined"] = sorted(t for t, _ in rounds)[1]
        self.check(
            "TOP pipelined x3 agree",
            all(
                _same_answers(tops, other, isinstance(self.server, Courier)) for _, other in rounds
            ),
            "3 rounds",
        )
        t0 = time.perf_counter()
        retr = [await client.retr(n) for n in numbers]
        r.timings["retr_lockstep"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        retr_many = await client.retr_many(numbers)
        r.timings["retr_pipelined"] = time.perf_counter() - t0
        self._trace(True)
        a.tops, a.retr = tops, retr
        bad = [n for n, (a, b) in enumerate(zip(retr, retr_many, strict=True), 1) if a != b]
        self.check("retr == retr_many", not bad, f"{len(numbers) - len(bad)}/{len(numbers)}")
        streamed = numbers[:3] + [n for n in numbers if self._name(retr[n - 1]) != "simple"]
        bad = []
        for n in streamed:
            async with client.retr_stream(n) as chunks:
                body = b"".join([c async for c in chunks])
            if body != retr[n - 1]:
                bad.append(n)
        self.check("retr_stream == retr", not bad, f"{len(streamed) - len(bad)}/{len(streamed)}")
        quit_result = await client.quit()
        r.row("QUIT after RETR", quit_result.text[:40] or "+OK")

    def _name(self, retr: bytes) -> str:
        seq = seq_of(retr)
        m = self.by_seq.get(seq) if seq is not None else None
        return "simple" if m is None or m.name.startswith("simple-") else m.name

    async def session_b(self) -> None:
        client = await self.session(pipelining=False)
        numbers = sorted(self.a.uids)
        self._trace(False)
        t0 = time.perf_counter()
        tops = await client.top_many(numbers, 0)
        self.r.timings["top_lockstep"] = time.perf_counter() - t0
        self._trace(True)
        await client.quit()
        before = self.a.tops
        differ = [
            n for n, (a, b) in enumerate(zip(before, tops, strict=True), 1) if str(a) != str(b)
        ]
        explained = [
            n
            for n in differ
            if isinstance(self.server, Courier) and _same_but_boundary(before[n - 1], tops[n - 1])
        ]
        self.check(
            "TOP pipelined == lockstep",
            len(differ) == len(explained),
            f"{len(tops) - len(differ)}/{len(tops)} identical"
            + (f", {len(explained)} differ only in a MIME boundary" if explained else ""),
        )
        if explained:
            self.r.deviations.append(
                f"the notice that replaces 8-bit mail (TOP #{', #'.join(map(str, explained))}) "
                "has a MIME boundary made of the server's pid and time: it differs per session"
            )
        for n in differ:
            if n not in explained:
                a, b = before[n - 1], tops[n - 1]
                shown = (
                    first_difference(a, b)
                    if isinstance(a, bytes) and isinstance(b, bytes)
                    else f"{a!r} vs {b!r}"
                )
                self.r.fail(f"TOP #{n} pipelined vs lockstep: {shown}")
        errors = [t for t in tops if not isinstance(t, bytes)]
        if errors:
            self.r.fail(f"TOP refused: {errors[:3]}")

    # -- comparisons ---------------------------------------------------------------------
    def expected_retr(self, stored: bytes) -> bytes:
        """What RETR should give for a message stored as `stored` on this server."""
        if isinstance(self.server, Cyrus):
            return stored  # LMTP delivery stored it with CRLF line endings
        # Mailutils and Courier read Maildir files as LF-terminated: every LF becomes CRLF,
        # also one after a CR ("\r\n" in a file is sent as "\r\r\n"; Dovecot keeps it), and a
        # message that does not end with LF gets CRLF appended.
        out = stored.replace(b"\n", b"\r\n")
        return out if out.endswith(b"\n") else out + b"\r\n"

    def known_change(self, m: Message, body: bytes, utf8: bool = False) -> str | None:
        """A documented server transformation that explains `body` for message `m`."""
        if (
            isinstance(self.server, Courier)
            and not utf8
            and any(b >= 0x80 for b in m.delivered)
            and body.startswith(b"From: Mail Delivery Subsystem")
        ):
            return "8-bit mail replaced by a notice (session without UTF8)"
        return None

    def compare_retr(self) -> None:
        r = self.r
        retr, uids = self.a.retr, self.a.uids
        stored = self.server.stored()
        seen: dict[int, int] = {}
        unmatched: list[int] = []
        mismatches: list[str] = []
        vs_delivered: collections.defaultdict[str, list[str]] = collections.defaultdict(list)
        for n, body in enumerate(retr, 1):
            seq = seq_of(body)
            if seq is None or seq not in self.by_seq:
                unmatched.append(n)
                continue
            if seq in seen:
                mismatches.append(f"#{n} and #{seen[seq]} are both message seq {seq}")
            seen[seq] = n
            m = self.by_seq[seq]
            if seq not in stored:
                mismatches.append(f"#{n} ({m.name}) has no stored file")
                continue
            want = self.expected_retr(stored[seq])
            if body != want and not self.known_change(m, body):
                mismatches.append(f"#{n} ({m.name}) RETR != stored {first_difference(body, want)}")
            vs_delivered[self.classify(m, body, uids[n])].append(m.name)
        self.a.seq_of_number = {n: s for s, n in seen.items()}
        missing = sorted({m.seq for m in self.kept} - set(seen))
        lost = self.known_losses(unmatched, missing, retr, uids)
        if lost:
            vs_delivered["lost by the server"] += [self.by_seq[seq].name for seq in lost]
            unmatched = [n for n in unmatched if n not in lost.values()]
            missing = [seq for seq in missing if seq not in lost]
        for n in unmatched:
            mismatches.append(f"#{n}: no X-Compat-Seq in RETR: {retr[n - 1][:120]!r}")
        if missing:
            mismatches.append(f"stored but not listed: seq {missing[:10]}")
        self.check(
            "RETR == stored",
            not mismatches,
            f"{len(retr) - len(mismatches) - len(lost)}/{len(retr)}"
            + (f" (+{len(lost)} lost)" if lost else ""),
        )
        for line in mismatches[:15]:
            r.fail(f"RETR: {line}")
        r.row(
            "RETR vs delivered",
            ", ".join(f"{k}: {len(v)}" for k, v in sorted(vs_delivered.items())),
        )
        for label, names in sorted(vs_delivered.items()):
            if label != "identical":
                shown = ", ".join(names[:8]) + (
                    f" and {len(names) - 8} more" if len(names) > 8 else ""
                )
                r.deviations.append(f"RETR vs what was delivered: {label}: {len(names)} ({shown})")
        tops = self.a.tops
        top_bad = [
            f"#{n} ({self._name(b)})"
            for n, (t, b) in enumerate(zip(tops, retr, strict=True), 1)
            if t != header_part(b)
        ]
        r.row("TOP 0 == header of RETR", f"{len(retr) - len(top_bad)}/{len(retr)}")
        if top_bad:
            r.deviations.append(
                f"TOP n 0 differs from the header part of RETR for {', '.join(top_bad[:8])}"
            )

    def known_losses(
        self, unmatched: list[int], missing: list[int], retr: list[bytes], uids: dict[int, str]
    ) -> dict[int, int]:
        """Messages a server is known to destroy: seq -> message number.

        Mailutils 3.15 finds no header end in a Maildir file without an empty line ("\n\n"):
        it lists the message as 2 octets and, once UIDL made it add X-UIDL, rewrites the file
        to that header alone. Such RETR replies are matched, by elimination, with the
        delivered messages that have no empty line.
        """
        if not isinstance(self.server, Mailutils):
            return {}
        only_uidl = [n for n in unmatched if retr[n - 1] == f"X-UIDL: {uids[n]}\r\n\r\n".encode()]
        no_body = [seq for seq in missing if b"\n\n" not in self.by_seq[seq].delivered]
        if not only_uidl or len(only_uidl) != len(no_body):
            return {}
        lost = dict(zip(no_body, only_uidl, strict=True))
        names = ", ".join(f"{self.by_seq[seq].name} (#{n})" for seq, n in lost.items())
        self.r.deviations.append(
            f"Maildir files without an empty line after the header are read as empty messages "
            f"and, after UIDL, rewritten to their X-UIDL header alone: {names}. The content is "
            "lost on the server (a Mailutils bug, not a client issue)"
        )
        return lost

    def classify(self, m: Message, body: bytes, uid: str) -> str:
        """How RETR differs from what was handed to the server (informational)."""
        delivered = self.expected_retr(m.delivered)
        if body == delivered:
            return "identical"
        if isinstance(self.server, Mailutils):
            line = f"X-UIDL: {uid}\r\n".encode()
            if line in body and body.replace(line, b"", 1) == delivered:
                return "X-UIDL header added"
        if isinstance(self.server, Cyrus):
            start = body.find(SEQ_HEADER + b":")
            without = re.sub(rb"(?m)^Return-Path:[^\n]*\n", b"", delivered, count=1)
            if start > 0 and body[start:] == without:
                return "Return-Path replaced and trace headers prepended by LMTP delivery"
            explained = _cyrus_delivery_changes(without, body[start:]) if start > 0 else None
            if explained:
                return (
                    "Return-Path replaced and trace headers prepended by LMTP delivery; "
                    + explained
                )
            if start > 0:
                delivered, body = without, body[start:]
        known = self.known_change(m, body)
        if known:
            return known
        self.r.deviations.append(f"RETR of {m.name}: {first_difference(body, delivered)}")
        return "other change"

    def compare_sizes(self) -> None:
        r = self.r
        retr, sizes, uids, total = self.a.retr, self.a.sizes, self.a.uids, self.a.total
        off = [(n, sizes[n], len(b)) for n, b in enumerate(retr, 1) if sizes[n] != len(b)]
        r.row("LIST size == RETR octets", f"{len(retr) - len(off)}/{len(retr)}")
        if off:
            names = ", ".join(f"#{n} {self._name(retr[n - 1])} {a}/{b}" for n, a, b in off[:6])
            r.deviations.append(
                f"LIST size != RETR length for {len(off)} message(s) (LIST/RETR: {names}); "
                "RFC 1939 sizes are hints, the client never relies on them"
            )
        if sum(sizes.values()) != total:
            r.deviations.append(
                f"STAT total {total} != sum of LIST sizes {sum(sizes.values())} in the same session"
            )
        values = list(uids.values())
        bad = [u for u in values if not _UID.fullmatch(u)]
        self.check(
            "UIDL unique, RFC syntax",
            len(set(values)) == len(values) and not bad,
            f"e.g. {values[0] if values else '-'}",
        )

    # -- other logins --------------------------------------------------------------------
    async def auth(self) -> None:
        capa = self.a.capa_before
        for mechanism, how in (("PLAIN", "plain"), ("LOGIN", "login")):
            name = f"AUTH {mechanism}"
            if mechanism not in capa.sasl:
                self.r.row(name, "not offered", None)
                continue
            client = await self.session(how=how)
            count, _ = await client.stat()
            await client.quit()
            self.check(name, count == len(self.kept), f"ok, STAT {count}")
        # A login that assumes what an earlier session's CAPA listed (the gateway remembers
        # servers): AUTH PLAIN right after the greeting, then CAPA + UIDL + LIST in one
        # write. A server without PLAIN must still let the password in (CAPA, USER, PASS).
        offered = "PLAIN" in capa.sasl
        name = "login, PLAIN assumed" if offered else "login, PLAIN wrongly assumed"
        assume = capa if offered else Capabilities.parse(["SASL PLAIN", "PIPELINING"])
        for attempt in range(40):
            client = await self.connect()
            try:
                await client.login(USER, PASSWORD, assume=assume)
            except (POP3InUseError, POP3LoginDelayError):
                client.abort()
                self.login_retries += 1
                await asyncio.sleep(0.25 if attempt < 20 else 1.0)
                continue
            break
        else:
            raise RuntimeError("the mailbox stayed locked for 25 s")
        try:
            uids, sizes = await client.uidl_and_list()
            learnt = client.authorization_capabilities
            await client.quit()
        finally:
            client.abort()
        fell_back = learnt is not None
        self.check(
            name,
            len(uids) == len(sizes) == len(self.kept) and fell_back != offered,
            f"ok, UIDL {len(uids)}" + (", after CAPA, USER, PASS" if fell_back else ""),
        )

    async def utf8(self) -> None:
        capa = self.a.capa_before
        if "UTF8" not in capa:
            self.r.row("UTF8 + RETR 8-bit", "not offered", None)
            return
        eight = [
            n
            for n, s in self.a.seq_of_number.items()
            if any(b >= 0x80 for b in self.by_seq[s].delivered)
        ]
        client = await self.session(utf8=True)
        stored = self.server.stored()
        bad = []
        for n in sorted(eight):
            body = await client.retr(n)
            seq = self.a.seq_of_number[n]
            want = self.expected_retr(stored[seq])
            if body != want:
                bad.append(f"#{n} {first_difference(body, want)}")
        await client.quit()
        self.check("UTF8 + RETR 8-bit", not bad, f"{len(eight) - len(bad)}/{len(eight)} exact")
        for line in bad[:5]:
            self.r.fail(f"UTF8 RETR: {line}")

    # -- deletion ------------------------------------------------------------------------
    async def dele_abort(self) -> None:
        client = await self.session()
        uids_before = await client.uidl()
        marks = sorted(uids_before)[:5]
        errors = await client.dele_many(marks)
        if any(errors):
            raise RuntimeError(f"DELE refused: {errors}")
        # A deleted message inside a pipelined batch: its -ERR must not disturb the others.
        batch = await client.top_many([marks[0], marks[-1] + 1, marks[1], marks[-1] + 2], 0)
        kinds = ["-ERR" if isinstance(b, POP3ResponseError) else "+OK" for b in batch]
        first_error = next((b for b in batch if isinstance(b, POP3ResponseError)), None)
        self.check(
            "TOP deleted msgs in a batch",
            kinds == ["-ERR", "+OK", "-ERR", "+OK"] and client.state.value == "transaction",
            " ".join(kinds)
            + (f" ({first_error.server_text[:30]})" if first_error is not None else ""),
        )
        client.abort()
        await asyncio.sleep(0.2)
        client = await self.session()
        count, _ = await client.stat()
        uids_after = await client.uidl()
        await client.quit()
        self.check(
            "DELE + abort keeps all",
            count == len(uids_before) and uids_after == uids_before,
            f"STAT {count} of {len(uids_before)}",
        )

    async def dele_quit(self) -> None:
        client = await self.session()
        uids_before = await client.uidl()
        seq_of_number: dict[int, int] = {}
        for n in sorted(uids_before)[:5]:
            seq = seq_of(await client.top(n, 0))
            if seq is not None:
                seq_of_number[n] = seq
        errors = await client.dele_many(sorted(seq_of_number))
        if any(errors):
            raise RuntimeError(f"DELE refused: {errors}")
        result = await client.quit()
        await asyncio.sleep(0.2)
        client = await self.session()
        count, _ = await client.stat()
        uids_after = await client.uidl()
        await client.quit()
        gone = {uids_before[n] for n in seq_of_number}
        want = set(uids_before.values()) - gone
        if isinstance(self.server, Cyrus):
            # expunge_mode: delayed (the default): files stay until cyr_expire runs.
            still: list[int] | str = "not checked (Cyrus delayed expunge)"
        else:
            stored = self.server.stored()
            still = sorted(s for s in seq_of_number.values() if s in stored)
        self.check(
            "DELE + QUIT removes",
            result.updated
            and len(gone) == 5
            and count == len(uids_before) - len(gone)
            and set(uids_after.values()) == want
            and not (isinstance(still, list) and still),
            f"STAT {count} of {len(uids_before)}; files left: {still or 'none'}",
        )

    # -- probes --------------------------------------------------------------------------
    def capa_deviations(self, capa: Capabilities, when: str) -> None:
        for tag, args in capa.items.items():
            if tag not in KNOWN_CAPA:
                self.r.deviations.append(
                    f"CAPA {when}: unknown tag {tag!r} (kept as an unknown capability; the "
                    "client ignores it)"
                    + ("; RFC 2449 spells it 'EXPIRE NEVER'" if tag == "EXPIRENEVER" else "")
                )
            if tag == "LOGIN-DELAY" and not (args and args[0].isdigit()):
                self.r.deviations.append(f"CAPA {when}: LOGIN-DELAY without a number: {args}")

    async def raw(
        self, lines: Sequence[bytes], *, together: bool = False, wait: float = 3.0
    ) -> tuple[list[bytes], float]:
        """Speak raw POP3: send `lines` (one write when `together`, else one at a time
        after each status line); return the reply lines seen and the seconds taken."""
        reader, writer = await asyncio.open_connection(HOST, self.server.port)
        seen: list[bytes] = []
        t0 = time.perf_counter()
        try:
            seen.append(await asyncio.wait_for(reader.readline(), 10))
            if together:
                writer.write(b"".join(lines))
                with contextlib.suppress(TimeoutError, ConnectionError):
                    while line := await asyncio.wait_for(reader.readline(), wait):
                        seen.append(line)
            else:
                for data in lines:
                    writer.write(data)
                    try:
                        line = await asyncio.wait_for(reader.readline(), wait + 10)
                    except (TimeoutError, ConnectionError):
                        break
                    if not line:
                        break
                    seen.append(line)
            return seen, time.perf_counter() - t0
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def probes(self) -> None:
        r = self.r
        user, password = USER.encode(), PASSWORD.encode()
        # A TRANSACTION command in AUTHORIZATION.
        seen, _ = await self.raw([b"STAT\r\n", b"QUIT\r\n"])
        r.row("STAT before login", seen[1].decode("latin-1").strip()[:50] if len(seen) > 1 else "?")
        # USER, PASS and STAT in one write: what the client never does.
        seen, _ = await self.raw(
            [b"USER " + user + b"\r\n", b"PASS " + password + b"\r\n", b"STAT\r\n", b"QUIT\r\n"],
            together=True,
        )
        statuses = [s for s in seen[1:] if s.startswith((b"+OK", b"-ERR"))]
        answered = f"{len(statuses)}/4 answered"
        r.row("USER+PASS+STAT+QUIT in one write", answered)
        if len(statuses) < 4:
            r.deviations.append(
                f"commands pipelined with USER/PASS get no answer ({answered}: "
                f"{[s.strip().decode('latin-1')[:40] for s in statuses]}) although PIPELINING "
                "is advertised; the client never pipelines authentication"
            )
        await asyncio.sleep(0.3)
        # A wrong password, through the client.
        client = await self.connect()
        t0 = time.perf_counter()
        try:
            await client.login(USER, PASSWORD + "-wrong")
        except POP3AuthError as exc:
            took = time.perf_counter() - t0
            r.row("bad password", f"POP3AuthError [{exc.code or '-'}] after {took:.1f} s")
            if exc.code is None:
                r.deviations.append(
                    f"bad password answered without [AUTH] ({exc.server_text!r}); the client "
                    "still raises POP3AuthError for a code-less -ERR to PASS"
                )
        except POP3Error as exc:
            self.check("bad password", False, f"{type(exc).__name__}: {exc}")
        else:
            self.check("bad password", False, "accepted")
        finally:
            client.abort()
        # Two sessions at once.
        first = await self.session()
        second = await self.connect()
        try:
            await second.login(USER, PASSWORD)
        except POP3ResponseError as exc:
            r.row("2nd concurrent login", f"{type(exc).__name__} [{exc.code or '-'}]")
        else:
            r.row("2nd concurrent login", "allowed")
            await second.quit()
        finally:
            second.abort()
        await first.quit()
        # A command line longer than RFC 2449's 255 octets.
        seen, _ = await self.raw([b"NOOP " + b"x" * 600 + b"\r\n", b"QUIT\r\n"], together=True)
        replies = [line.rstrip(b"\r\n") for line in seen[1:]]
        shown = " | ".join(
            f"{x[:8].decode('latin-1')}...{x[-24:].decode('latin-1')} ({len(x)} octets)"
            if len(x) > 40
            else x.decode("latin-1")
            for x in replies
        )
        r.row("600-octet command", shown or "(no reply)")
        if any(not x.startswith((b"+OK", b"-ERR")) for x in replies):
            r.deviations.append(
                f"a 600-octet command line gets a reply that is not a status line: {shown}; the "
                "client never sends lines over 255 octets (POP3ArgumentError)"
            )
        if isinstance(self.server, Mailutils | Courier):
            await self.probe_crlf_maildir()

    async def probe_crlf_maildir(self) -> None:
        """A Maildir file with CRLF line endings (runs last: Mailutils destroys it)."""
        raw = with_seq(99999, simple_message(99999))
        maildir = self.server.maildir
        client = await self.session()
        before = set((await client.uidl()).values())
        await client.quit()
        path = maildir / "new" / "1.M1P1.crlf-probe"
        path.write_bytes(raw)
        os.chown(path, self.server.mail_uid, self.server.mail_gid)
        client = await self.session()
        sizes = await client.list()
        uids = await client.uidl()
        n = next(n for n, uid in uids.items() if uid not in before)
        body = await client.retr(n)
        await client.quit()
        after = [p.read_bytes() for sub in ("new", "cur") for p in (maildir / sub).glob("1.M1P1.*")]
        left = after[0] if after else b""
        endings = "CR CR LF" if b"\r\r\n" in body else "CRLF"
        self.r.row(
            "CRLF Maildir file",
            f"LIST {sizes[n]}, RETR {len(body)} ({endings}); file {len(raw)} -> {len(left)}",
        )
        if seq_of(left) is None:
            self.r.deviations.append(
                f"a Maildir file with CRLF line endings ({len(raw)} octets) is listed as "
                f"{sizes[n]} octets with an empty header; after UIDL and QUIT the file holds "
                f"{left!r}: the message is lost (a Mailutils bug, not a client issue; Dovecot "
                "and Courier read such files)"
            )
        elif endings == "CR CR LF":
            self.r.deviations.append(
                f"a Maildir file with CRLF line endings is sent with CR CR LF line endings "
                f"(every LF becomes CRLF): LIST {sizes[n]}, RETR {len(body)} octets; the "
                "client returns the lines as sent (Dovecot sends such files unchanged)"
            )
