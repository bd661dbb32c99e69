"""Seeded test mail: a corpus of messy real-world messages, plus plain and large ones.

Everything here is deterministic: the same seed (or message number, or size) gives the
same bytes on every run and every machine. The randomness only varies names, dates,
identifiers, words and attachment bytes; the structure of each corpus message is fixed, so
its traits hold for every seed.

Line endings are part of what is tested: most messages use CRLF, some are stored with bare
LF (as many Maildir deliverers write them) or a mix. `expected_retr` says what a POP3
client receives from Dovecot for stored bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import quopri
import random
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import format_datetime
from typing import TypedDict

__all__ = [
    "CorpusMessage",
    "ExpectedHeaders",
    "expected_headers",
    "expected_list_size",
    "expected_retr",
    "expected_retr_wire",
    "generate_corpus",
    "large_message",
    "png_blob",
    "simple_message",
]

CRLF = b"\r\n"
LF = b"\n"

_FIRST_NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Erika", "Farid", "Grace", "Hiro", "Ines"]
_LAST_NAMES = ["Martin", "Nakamura", "Okafor", "Petrov", "Quinn", "Rossi", "Schmidt", "Tan"]
_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.test"]
_WORD_TEXT = (
    "the quarterly report is attached please review before friday meeting agenda budget "
    "invoice shipment delayed warehouse customer feedback release notes server migration "
    "weekend schedule lunch tomorrow thanks regards update draft contract signature"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True)
class CorpusMessage:
    """One stored message: `raw` is the exact byte content of the Maildir file."""

    name: str
    raw: bytes
    traits: frozenset[str]


# -- what Dovecot's RETR returns -------------------------------------------------------

_BARE_LF = re.compile(rb"(?<!\r)\n")


def expected_list_size(raw: bytes) -> int:
    """The size Dovecot reports in LIST/STAT (and in ``+OK n octets``) for stored `raw`.

    It counts every bare LF as CRLF, but not the CRLF that RETR appends to a message that
    does not end in LF: for those, RETR sends two octets more than LIST announced.
    """
    return len(_BARE_LF.sub(b"\r\n", raw))


def expected_retr(raw: bytes) -> bytes:
    """The message a POP3 client gets from Dovecot's RETR for a Maildir file holding `raw`.

    That is the reply's lines after the ``+OK`` line and before the terminating ``.``
    line, dot-unstuffed, with their line endings. Dovecot 2.3 (observed on 2.3.19, in
    pop3's fetch loop) transforms the stored bytes like this:

    - a LF not preceded by CR becomes CRLF; CRLF stays as it is;
    - a bare CR (not followed by LF) is sent unchanged, also in ``CR CR LF`` and at the
      very end of the message (``...x\\r`` arrives as ``...x\\r\\r\\n``);
    - a message that does not end in LF, including the empty message, gets CRLF appended
      (the empty message arrives as one empty line);
    - NUL, 8-bit and other control bytes are sent unchanged;
    - lines starting with ``.`` are dot-stuffed, which the client undoes; except for the
      first line of the message, which Dovecot never stuffs. A message starting with ``.``
      therefore loses that dot on the client, and one starting with a lone ``.`` line ends
      the reply early and desynchronises the session. No real mail starts with a dot;
      this function raises `ValueError` for such input (see `expected_retr_wire`).
    """
    if raw.startswith(b"."):
        raise ValueError("Dovecot does not dot-stuff a leading '.'; see expected_retr_wire()")
    out = _BARE_LF.sub(b"\r\n", raw)
    if not out.endswith(b"\n"):
        out += b"\r\n"
    return out


def expected_retr_wire(raw: bytes) -> bytes:
    """The exact bytes Dovecot sends after RETR's ``+OK`` line, terminator included.

    Unlike `expected_retr` this also models the unstuffed first line (see there).
    """
    out = _BARE_LF.sub(b"\r\n", raw)
    if not out.endswith(b"\n"):
        out += b"\r\n"
    return out.replace(b"\n.", b"\n..") + b".\r\n"


# -- encoding helpers --------------------------------------------------------------------


def encoded_word_b(text: str, charset: str) -> str:
    """An RFC 2047 "B" encoded word."""
    payload = base64.b64encode(text.encode(charset)).decode("ascii")
    return f"=?{charset}?B?{payload}?="


def encoded_word_q(text: str, charset: str) -> str:
    """An RFC 2047 "Q" encoded word (spaces as ``_``, anything unsafe as ``=XX``)."""
    out: list[str] = []
    for byte in text.encode(charset):
        ch = chr(byte)
        if ch == " ":
            out.append("_")
        elif ch.isascii() and (ch.isalnum() or ch in "!*+-/"):
            out.append(ch)
        else:
            out.append(f"={byte:02X}")
    return f"=?{charset}?Q?{''.join(out)}?="


def _b64_lines(data: bytes, width: int = 76) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width)) + b"\n"


def png_blob(rng: random.Random, size: int = 300) -> bytes:
    """Bytes that look like a small PNG: signature, IHDR chunk, then noise."""
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes([0, 0, 0, 16, 0, 0, 0, 16])
    return header + b"\x08\x06\x00\x00\x00" + rng.randbytes(max(0, size - 33))


def _finish(text: bytes, eol: bytes) -> bytes:
    """Turn a message written with ``\\n`` into one with `eol` line endings."""
    return text if eol == LF else text.replace(LF, eol)


# -- realistic header blocks -------------------------------------------------------------


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    return f"{first} {last}", f"{first.lower()}.{last.lower()}@{rng.choice(_DOMAINS)}"


def _date(rng: random.Random) -> dt.datetime:
    base = dt.datetime(2023, 1, 2, 8, 0, 0, tzinfo=dt.UTC)
    offset = dt.timedelta(minutes=rng.randrange(0, 600 * 24 * 60))
    tz = dt.timezone(dt.timedelta(hours=rng.choice([-7, -5, 0, 1, 2, 8, 9])))
    return (base + offset).astimezone(tz)


def _date_header(when: dt.datetime) -> bytes:
    return f"Date: {format_datetime(when)}\n".encode()


def _message_id(rng: random.Random, domain: str = "mail.example.test") -> str:
    return f"<{rng.getrandbits(64):016x}.{rng.randrange(10**6):06d}@{domain}>"


def _received(rng: random.Random, when: dt.datetime, hops: int = 3) -> bytes:
    lines: list[str] = []
    for hop in range(hops):
        stamp = format_datetime(when + dt.timedelta(seconds=hops - hop))
        relay = f"mx{rng.randrange(1, 9)}.relay{hop}.example.net"
        ip = f"192.0.2.{rng.randrange(1, 255)}"
        queue = f"{rng.getrandbits(40):010X}"
        lines.append(
            f"Received: from {relay} ({relay} [{ip}])\n"
            f"\tby mail.example.test (Postfix) with ESMTPS id {queue}\n"
            f"\tfor <inbox@example.test>; {stamp}\n"
        )
    return "".join(lines).encode()


def _dkim(rng: random.Random, domain: str) -> bytes:
    sig = base64.b64encode(rng.randbytes(160)).decode()
    body_hash = base64.b64encode(rng.randbytes(32)).decode()
    folded = "\n\t ".join(sig[i : i + 70] for i in range(0, len(sig), 70))
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\n"
        f"\ts=selector1; t={rng.randrange(1_600_000_000, 1_750_000_000)};\n"
        f"\th=from:to:subject:date:message-id:mime-version:content-type;\n"
        f"\tbh={body_hash};\n"
        f"\tb={folded}\n"
    ).encode()


def _trace_headers(rng: random.Random, when: dt.datetime, domain: str) -> bytes:
    """Return-Path, Delivered-To, Received and authentication headers of a delivered mail."""
    auth = (
        "Authentication-Results: mail.example.test;\n"
        f"\tdkim=pass header.d={domain} header.s=selector1 header.b={rng.getrandbits(32):08x};\n"
        f"\tspf=pass (mail.example.test: domain of bounce@{domain} designates 192.0.2.7"
        " as permitted sender)\n"
        f"\tsmtp.mailfrom=bounce@{domain};\n"
        f"\tdmarc=pass (p=NONE sp=NONE dis=NONE) header.from={domain}\n"
    ).encode()
    return (
        f"Return-Path: <bounce@{domain}>\n".encode()
        + b"Delivered-To: inbox@example.test\n"
        + _received(rng, when)
        + auth
        + _dkim(rng, domain)
    )


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _paragraphs(rng: random.Random, lines: int) -> bytes:
    return "".join(_words(rng, rng.randrange(6, 12)) + "\n" for _ in range(lines)).encode()


# -- public generators -------------------------------------------------------------------


def simple_message(i: int, *, body_lines: int = 20, eol: bytes = CRLF) -> bytes:
    """A plain, well-formed message number `i`, like one a real MTA delivered.

    Subject, Message-ID and Date differ for every `i` (Date is one minute per number after
    a fixed instant); the header block is about 1.5-2 KB with Received, authentication and
    DKIM headers; the body has `body_lines` lines of text. Line endings are `eol` (CRLF by
    default, so a POP3 RETR returns exactly these bytes).
    """
    rng = random.Random(f"simple-{i}")
    name, addr = _person(rng)
    domain = addr.rsplit("@", 1)[1]
    when = dt.datetime(2024, 1, 1, 9, 0, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    headers = (
        _trace_headers(rng, when, domain)
        + f"From: {name} <{addr}>\n".encode()
        + b"To: Inbox <inbox@example.test>\n"
        + f"Subject: Test message {i}: {_words(rng, 4)}\n".encode()
        + _date_header(when)
        + f"Message-ID: <msg-{i:08d}.{rng.getrandbits(32):08x}@{domain}>\n".encode()
        + b"MIME-Version: 1.0\n"
        + b"Content-Type: text/plain; charset=us-ascii\n"
        + b"Content-Transfer-Encoding: 7bit\n"
        + b"X-Mailer: pop3gw-corpus 1.0\n"
        + f"List-Unsubscribe: <mailto:unsubscribe+{i}@{domain}>\n".encode()
    )
    body = f"Message number {i}.\n".encode() + _paragraphs(rng, max(0, body_lines - 1))
    return _finish(headers + b"\n" + body, eol)


def large_message(size_bytes: int, *, seed: int = 0, eol: bytes = CRLF) -> bytes:
    """A multipart message of about `size_bytes` octets, mostly one base64 attachment.

    The total length is within about 100 octets of `size_bytes` (for sizes above ~1 KB);
    generating 50 MB takes well under a second.
    """
    rng = random.Random(f"large-{seed}-{size_bytes}")
    boundary = f"=_large_{rng.getrandbits(48):012x}"
    when = _date(rng)
    head = (
        b"From: Archive Bot <archive@example.org>\n"
        b"To: Inbox <inbox@example.test>\n"
        + f"Subject: Large attachment ({size_bytes} bytes)\n".encode()
        + _date_header(when)
        + f"Message-ID: {_message_id(rng)}\n".encode()
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=us-ascii\n\n"
        + b"The archive is attached.\n\n"
        + f"--{boundary}\n".encode()
        + b"Content-Type: application/octet-stream; name=archive.bin\n"
        + b"Content-Transfer-Encoding: base64\n"
        + b"Content-Disposition: attachment; filename=archive.bin\n\n"
    )
    tail = f"\n--{boundary}--\n".encode()
    eol_extra = len(eol) - 1
    overhead = len(head) + len(tail) + eol_extra * (head.count(LF) + tail.count(LF))
    budget = max(0, size_bytes - overhead)
    # 57 raw octets become one 76-character base64 line plus its line ending.
    line_len = 76 + len(eol)
    raw_len = (budget // line_len) * 57 + max(0, (budget % line_len) - len(eol)) * 3 // 4
    payload = base64.encodebytes(rng.randbytes(raw_len))  # 76-char lines ending in \n
    if eol != LF:
        payload = payload.replace(LF, eol)
    return _finish(head, eol) + payload + _finish(tail[1:], eol)


def generate_corpus(seed: int = 1) -> list[CorpusMessage]:
    """The messy corpus: one message per kind of real-world trouble (see each `traits`).

    Deterministic for a seed; every seed has the same names, structure and traits.
    """
    rng = random.Random(seed)
    builders = [
        _plain_crlf,
        _gb2312_encoded_words,
        _utf8_encoded_words,
        _latin1_encoded_words,
        _broken_encoded_words,
        _raw_utf8_headers,
        _raw_latin1_headers,
        _bare_lf,
        _mixed_line_endings,
        _bare_cr,
        _missing_date,
        _missing_message_id,
        _long_header_line,
        _boundary_never_appears,
        _boundary_not_closed,
        _invalid_base64,
        _dot_lines,
        _alternative,
        _mixed_attachments,
        _nested_multipart,
        _rfc822_attachment,
        _empty_body,
        _header_only,
        _header_only_no_final_newline,
        _no_final_newline,
        _ends_with_bare_cr,
        _long_body_line,
        _rfc2231_filename,
        _nul_byte,
    ]
    corpus = [build(random.Random(rng.getrandbits(64))) for build in builders]
    names = [message.name for message in corpus]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return corpus


# -- texts the corpus encodes (what a decoder must get back; see `expected_headers`) --------

_GB2312_SUBJECT = "关于下周会议的通知"
_GB2312_SENDER = "张伟"
_GB2312_RECIPIENT = "李娜"
_GB2312_FILENAME = "会议纪要.doc"
# Three encoded words; the first ends in a space of its own, and the whitespace between
# encoded words is not part of the text (RFC 2047, section 6.2).
_UTF8_SUBJECT_WORDS = ("Résumé für Jürgen ", "– Grüße, Øystein", "café")
_UTF8_SENDER = "Zoë Ångström"
_UTF8_RECIPIENT = "Jürgen Müller"
_UTF8_FILENAMES = ("Lebenslauf – Jürgen.pdf", "Zeugnisse Übersicht.txt")
_LATIN1_SUBJECT = "Réunion à Montréal: ordre du jour"
_LATIN1_SENDER = "François Lefèvre"
_LATIN1_RECIPIENT = "Hélène Çelik"
_LATIN1_FILENAME = "Ordre du jour - réunion.txt"
_RAW_UTF8_FROM = "山田 太郎 <taro@example.jp>"
_RAW_UTF8_TO = "Zoë <zoe@example.de>, 李娜 <li.na@example.cn>"
_RAW_UTF8_SUBJECT = "請求書のご案内 — Rechnung für März 🧾"
_RAW_LATIN1_FROM = "José Núñez <jose@example.es>"
_RAW_LATIN1_TO = "Señora Peña <pena@example.es>"
_RAW_LATIN1_SUBJECT = "Café y año nuevo - ¿mañana?"
_RFC2231_FILENAMES = (
    "中文报告 2024年.pdf",
    "Übersicht der Änderungen für das Geschäftsjahr - endgültige Fassung.txt",
)


# -- what a MIME decoder must read back ------------------------------------------------------


@dataclass(frozen=True)
class ExpectedHeaders:
    """The decoded header values and attachment filenames of one corpus message.

    `sender` and `recipients` are ``(display name or None, address)``; `filenames` are the
    decoded attachment filenames in MIME order (attachments without one are left out).
    """

    subject: str
    sender: tuple[str | None, str]
    recipients: tuple[tuple[str | None, str], ...]
    filenames: tuple[str, ...]


_PLAIN_FIELD = re.compile(rb"^(From|To|Subject): ([\x20-\x7e]*?)\r?$", re.M)
_MAILBOX = re.compile(r"(?:(.*?) )?<([^<>]*)>|([^\s<>]+)")

# The broken subject of "broken-encoded-words", word by word: a word with its padding missing
# still decodes; an unterminated word and one whose base64 has invalid characters stay as
# text; an unknown charset falls back to the unlabelled rules (UTF-8, GB18030, Latin-1); an
# invalid "=ZZ" escape stays literal inside a word that otherwise decodes; and a word glued
# to surrounding text is decoded, as mail clients do.
_BROKEN_SUBJECT = (
    "Hello World =?utf-8?q?unterminated café =?UTF-8?B?!!not*base64!!?= bad=ZZescape "
    "prefixgluedsuffix"
)


def _mailbox(text: str) -> tuple[str | None, str]:
    found = _MAILBOX.fullmatch(text.strip())
    assert found is not None, text
    if found.group(3) is not None:
        return None, found.group(3)
    return found.group(1) or None, found.group(2)


def _mailboxes(text: str) -> tuple[tuple[str | None, str], ...]:
    return tuple(_mailbox(part) for part in text.split(","))


class _Known(TypedDict, total=False):
    subject: str
    sender: tuple[str | None, str]
    recipients: tuple[tuple[str | None, str], ...]
    filenames: tuple[str, ...]


_DECODED: dict[str, _Known] = {
    "gb2312-encoded-words": {
        "subject": _GB2312_SUBJECT,
        "sender": (_GB2312_SENDER, "zhang.wei@example.cn"),
        "recipients": ((_GB2312_RECIPIENT, "li.na@example.cn"),),
        "filenames": (_GB2312_FILENAME,),
    },
    "utf8-encoded-words": {
        "subject": "".join(_UTF8_SUBJECT_WORDS),
        "sender": (_UTF8_SENDER, "zoe@example.de"),
        "recipients": ((_UTF8_RECIPIENT, "juergen@example.de"),),
        "filenames": _UTF8_FILENAMES,
    },
    "latin1-encoded-words": {
        "subject": _LATIN1_SUBJECT,
        "sender": (_LATIN1_SENDER, "francois@example.fr"),
        "recipients": ((_LATIN1_RECIPIENT, "helene@example.fr"),),
        "filenames": (_LATIN1_FILENAME,),
    },
    "broken-encoded-words": {"subject": _BROKEN_SUBJECT},
    "raw-utf8-headers": {
        "subject": _RAW_UTF8_SUBJECT,
        "sender": _mailbox(_RAW_UTF8_FROM),
        "recipients": _mailboxes(_RAW_UTF8_TO),
    },
    "raw-latin1-headers": {
        "subject": _RAW_LATIN1_SUBJECT,
        "sender": _mailbox(_RAW_LATIN1_FROM),
        "recipients": _mailboxes(_RAW_LATIN1_TO),
    },
    "boundary-not-closed": {"filenames": ("cut.bin",)},
    "invalid-base64": {"filenames": ("broken.png",)},
    "mixed-attachments": {"filenames": ("chart.png", "data export.bin", "figures.csv")},
    "nested-multipart": {"filenames": ("logo.png", "report.pdf")},
    "rfc822-attachment": {"filenames": ("original.eml",)},
    "rfc2231-filename": {"filenames": _RFC2231_FILENAMES},
}


def expected_headers(message: CorpusMessage) -> ExpectedHeaders:
    """What a correct decoder reads from `message` (any seed).

    Encoded and 8-bit values come from the texts the generator encoded; the plain ASCII
    From/To/Subject lines that `_basic_headers` writes are read back from the header section.
    """
    header_section = re.split(rb"\r?\n\r?\n", message.raw, maxsplit=1)[0]
    plain: dict[str, str] = {}
    for name, value in _PLAIN_FIELD.findall(header_section):
        plain.setdefault(name.decode(), value.decode("ascii"))
    known = _DECODED.get(message.name, _Known())
    return ExpectedHeaders(
        subject=known["subject"] if "subject" in known else plain["Subject"],
        sender=known["sender"] if "sender" in known else _mailbox(plain["From"]),
        recipients=known["recipients"] if "recipients" in known else _mailboxes(plain["To"]),
        filenames=known.get("filenames", ()),
    )


# -- the corpus messages -----------------------------------------------------------------


def _msg(name: str, raw: bytes, traits: Iterable[str]) -> CorpusMessage:
    return CorpusMessage(name=name, raw=raw, traits=frozenset(traits))


def _basic_headers(
    rng: random.Random,
    *,
    subject: bytes | None = None,
    date: bool = True,
    message_id: bool = True,
    trace: bool = True,
) -> bytes:
    """From/To/Subject/Date/Message-ID (+ trace headers), each ending in ``\\n``."""
    name, addr = _person(rng)
    _to_name, to_addr = _person(rng)
    domain = addr.rsplit("@", 1)[1]
    when = _date(rng)
    out = _trace_headers(rng, when, domain) if trace else b""
    out += f"From: {name} <{addr}>\n".encode()
    out += f"To: {to_addr}\n".encode()
    out += b"Subject: " + (subject or _words(rng, 5).capitalize().encode()) + b"\n"
    if date:
        out += _date_header(when)
    if message_id:
        out += f"Message-ID: {_message_id(rng, domain)}\n".encode()
    return out


def _plain_crlf(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
        + _paragraphs(rng, 12)
    )
    return _msg("plain-crlf", _finish(raw, CRLF), {"crlf", "text-plain", "well-formed"})


def _attachment_part(boundary: str, filename_params: str, data: bytes, ctype: str) -> bytes:
    return (
        f"--{boundary}\n"
        f"Content-Type: {ctype};\n\t{filename_params.replace('filename', 'name', 1)}\n"
        "Content-Transfer-Encoding: base64\n"
        f"Content-Disposition: attachment;\n\t{filename_params}\n\n"
    ).encode() + _b64_lines(data)


def _gb2312_encoded_words(rng: random.Random) -> CorpusMessage:
    boundary = f"----=_NextPart_{rng.getrandbits(48):012X}"
    subject = encoded_word_b(_GB2312_SUBJECT, "GB2312")
    sender = encoded_word_b(_GB2312_SENDER, "GB2312")
    recipient = encoded_word_q(_GB2312_RECIPIENT, "GB2312")
    filename = encoded_word_b(_GB2312_FILENAME, "GB2312")
    body = "各位同事：\n\n下周一上午十点在三楼会议室开会，请准时参加。\n\n谢谢！\n"
    raw = (
        _trace_headers(rng, _date(rng), "example.cn")
        + f"From: {sender} <zhang.wei@example.cn>\n".encode()
        + f"To: {recipient} <li.na@example.cn>\n".encode()
        + f"Subject: {subject}\n".encode()
        + _date_header(_date(rng))
        + f"Message-ID: {_message_id(rng, 'example.cn')}\n".encode()
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed;\n\tboundary="{boundary}"\n\n'.encode()
        + b"This is a multi-part message in MIME format.\n\n"
        + f"--{boundary}\n".encode()
        + b'Content-Type: text/plain;\n\tcharset="gb2312"\n'
        + b"Content-Transfer-Encoding: base64\n\n"
        + _b64_lines(body.encode("gb2312"))
        + b"\n"
        + _attachment_part(
            boundary, f'filename="{filename}"', rng.randbytes(700), "application/msword"
        )
        + f"\n--{boundary}--\n".encode()
    )
    traits = {
        "rfc2047",
        "rfc2047-b",
        "rfc2047-q",
        "charset-gb2312",
        "encoded-filename",
        "multipart-mixed",
        "attachment",
        "crlf",
    }
    return _msg("gb2312-encoded-words", _finish(raw, CRLF), traits)


def _utf8_encoded_words(rng: random.Random) -> CorpusMessage:
    boundary = f"b1_{rng.getrandbits(64):016x}"
    # A subject split over two encoded words (the space between them is not part of it),
    # one UTF-8 and one ISO-8859-1, folded onto a continuation line.
    subject = (
        encoded_word_q(_UTF8_SUBJECT_WORDS[0], "UTF-8")
        + "\n\t"
        + encoded_word_q(_UTF8_SUBJECT_WORDS[1], "UTF-8")
        + " "
        + encoded_word_b(_UTF8_SUBJECT_WORDS[2], "ISO-8859-1")
    )
    sender = encoded_word_b(_UTF8_SENDER, "UTF-8")
    recipient = encoded_word_q(_UTF8_RECIPIENT, "UTF-8")
    filename = encoded_word_b(_UTF8_FILENAMES[0], "UTF-8")
    filename_q = encoded_word_q(_UTF8_FILENAMES[1], "UTF-8")
    text = "Hallo Jürgen,\n\nanbei mein Lebenslauf. Grüße aus Köln — Zoë ☕\n".encode()
    qp = quopri.encodestring(text)
    raw = (
        _trace_headers(rng, _date(rng), "example.de")
        + f"From: {sender} <zoe@example.de>\n".encode()
        + f"To: {recipient} <juergen@example.de>\n".encode()
        + f"Subject: {subject}\n".encode()
        + _date_header(_date(rng))
        + f"Message-ID: {_message_id(rng, 'example.de')}\n".encode()
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=UTF-8\n"
        + b"Content-Transfer-Encoding: quoted-printable\n\n"
        + qp
        + b"\n"
        + _attachment_part(
            boundary,
            f'filename="{filename}"',
            b"%PDF-1.4\n" + rng.randbytes(400),
            "application/pdf",
        )
        + _attachment_part(
            boundary, f'filename="{filename_q}"', "Zeugnis – sehr gut\n".encode(), "text/plain"
        )
        + f"--{boundary}--\n".encode()
    )
    traits = {
        "rfc2047",
        "rfc2047-b",
        "rfc2047-q",
        "charset-utf-8",
        "charset-iso-8859-1",
        "folded-header",
        "quoted-printable",
        "encoded-filename",
        "multipart-mixed",
        "attachment",
        "crlf",
    }
    return _msg("utf8-encoded-words", _finish(raw, CRLF), traits)


def _latin1_encoded_words(rng: random.Random) -> CorpusMessage:
    boundary = f"=_latin1_{rng.getrandbits(40):010x}"
    subject = encoded_word_q(_LATIN1_SUBJECT, "ISO-8859-1")
    sender = encoded_word_b(_LATIN1_SENDER, "ISO-8859-1")
    recipient = encoded_word_q(_LATIN1_RECIPIENT, "iso-8859-1")
    filename = encoded_word_q(_LATIN1_FILENAME, "ISO-8859-1")
    raw = (
        _trace_headers(rng, _date(rng), "example.fr")
        + f"From: {sender} <francois@example.fr>\n".encode()
        + f"To: {recipient} <helene@example.fr>\n".encode()
        + f"Subject: {subject}\n".encode()
        + _date_header(_date(rng))
        + f"Message-ID: {_message_id(rng, 'example.fr')}\n".encode()
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=ISO-8859-1\n"
        + b"Content-Transfer-Encoding: quoted-printable\n\n"
        + quopri.encodestring("Voilà l'ordre du jour. À bientôt, François\n".encode("latin-1"))
        + b"\n"
        # Outlook style: an encoded word inside a quoted parameter, which RFC 2047 does not
        # allow but every mail client reads.
        + f"--{boundary}\n".encode()
        + f'Content-Type: text/plain; charset=ISO-8859-1; name="{filename}"\n'.encode()
        + b"Content-Transfer-Encoding: base64\n"
        + f'Content-Disposition: attachment; filename="{filename}"\n\n'.encode()
        + _b64_lines("1. Accueil\n2. Budget 2024\n3. Questions diverses\n".encode("latin-1"))
        + f"--{boundary}--\n".encode()
    )
    traits = {
        "rfc2047",
        "rfc2047-b",
        "rfc2047-q",
        "charset-iso-8859-1",
        "encoded-filename",
        "quoted-printable",
        "multipart-mixed",
        "attachment",
        "crlf",
    }
    return _msg("latin1-encoded-words", _finish(raw, CRLF), traits)


def _broken_encoded_words(rng: random.Random) -> CorpusMessage:
    subject = (
        "=?UTF-8?B?SGVsbG8gV29ybGQ?= "  # missing padding
        "=?utf-8?q?unterminated "  # no closing ?=
        "=?x-unknown-charset?Q?caf=E9?= "
        "=?UTF-8?B?!!not*base64!!?= "
        "=?UTF-8?Q?bad=ZZescape?= "
        "prefix=?UTF-8?Q?glued?=suffix"
    )
    raw = (
        _basic_headers(rng, subject=subject.encode())
        + b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        + b"The subject has encoded words that no decoder can read fully.\n"
    )
    return _msg("broken-encoded-words", _finish(raw, CRLF), {"rfc2047", "broken-rfc2047", "crlf"})


def _raw_utf8_headers(rng: random.Random) -> CorpusMessage:
    raw = (
        _trace_headers(rng, _date(rng), "example.jp")
        + f"From: {_RAW_UTF8_FROM}\n".encode()
        + f"To: {_RAW_UTF8_TO}\n".encode()
        + f"Subject: {_RAW_UTF8_SUBJECT}\n".encode()
        + _date_header(_date(rng))
        + f"Message-ID: {_message_id(rng, 'example.jp')}\n".encode()
        + b"MIME-Version: 1.0\n"
        + b"Content-Type: text/plain; charset=utf-8\n"
        + b"Content-Transfer-Encoding: 8bit\n\n"
        + "いつもお世話になっております。\n請求書を添付いたします。\n".encode()
        + "Überweisung bis Freitag.\n".encode()
    )
    traits = {"8bit-headers", "raw-utf8", "8bit-body", "crlf"}
    return _msg("raw-utf8-headers", _finish(raw, CRLF), traits)


def _raw_latin1_headers(rng: random.Random) -> CorpusMessage:
    raw = (
        _trace_headers(rng, _date(rng), "example.es")
        + f"From: {_RAW_LATIN1_FROM}\n".encode("latin-1")
        + f"To: {_RAW_LATIN1_TO}\n".encode("latin-1")
        + f"Subject: {_RAW_LATIN1_SUBJECT}\n".encode("latin-1")
        + _date_header(_date(rng))
        + f"Message-ID: {_message_id(rng, 'example.es')}\n".encode()
        + b"MIME-Version: 1.0\n"
        + b"Content-Type: text/plain; charset=iso-8859-1\n"
        + b"Content-Transfer-Encoding: 8bit\n\n"
        + "¡Hola! Nos vemos mañana en el café. Saludos, José\n".encode("latin-1")
    )
    traits = {"8bit-headers", "raw-latin1", "8bit-body", "bare-lf"}
    return _msg("raw-latin1-headers", raw, traits)


def _bare_lf(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
        + _paragraphs(rng, 15)
    )
    return _msg("bare-lf", raw, {"bare-lf", "text-plain"})


def _mixed_line_endings(rng: random.Random) -> CorpusMessage:
    head = _finish(_basic_headers(rng) + b"MIME-Version: 1.0\nContent-Type: text/plain\n\n", CRLF)
    body = (
        b"This body was pasted together from several sources.\n"
        b"Some lines end in CRLF\r\n"
        b"and some in a bare LF\n"
        b"\r\n"
        b"\n"
        b"last line with CRLF\r\n"
    )
    return _msg("mixed-line-endings", head + body, {"bare-lf", "mixed-line-endings", "crlf"})


def _bare_cr(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"X-Mailer: Legacy\rMailer 2.0\n"
        + b"MIME-Version: 1.0\nContent-Type: text/plain\n\n"
        + b"progress: 10%\r20%\r30%\r100%\n"
        + b"a line ending in CR CR LF\r\r\n"
        + b"old Mac line\rnext old Mac line\r\n"
        + b"done\n"
    )
    return _msg("bare-cr", raw, {"bare-cr", "bare-lf"})


def _missing_date(rng: random.Random) -> CorpusMessage:
    raw = _basic_headers(rng, date=False) + b"\n" + _paragraphs(rng, 4)
    return _msg("missing-date", _finish(raw, CRLF), {"missing-date", "crlf"})


def _missing_message_id(rng: random.Random) -> CorpusMessage:
    raw = _basic_headers(rng, message_id=False) + b"\n" + _paragraphs(rng, 4)
    return _msg("missing-message-id", _finish(raw, CRLF), {"missing-message-id", "crlf"})


def _long_header_line(rng: random.Random) -> CorpusMessage:
    references = " ".join(_message_id(rng) for _ in range(40))
    assert len(references) > 1500
    raw = (
        _basic_headers(rng)
        + f"References: {references}\n".encode()
        + f"X-Campaign-Data: {'k' * 1600}\n".encode()
        + b"\n"
        + _paragraphs(rng, 3)
    )
    return _msg("long-header-line", _finish(raw, CRLF), {"long-header-line", "crlf"})


def _boundary_never_appears(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + b'Content-Type: multipart/mixed; boundary="declared-but-never-used"\n\n'
        + b"--some-other-boundary\n"
        + b"Content-Type: text/plain\n\n"
        + _paragraphs(rng, 3)
        + b"--some-other-boundary--\n"
    )
    traits = {"broken-mime", "boundary-missing", "multipart-mixed", "crlf"}
    return _msg("boundary-never-appears", _finish(raw, CRLF), traits)


def _boundary_not_closed(rng: random.Random) -> CorpusMessage:
    boundary = f"unclosed-{rng.getrandbits(32):08x}"
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f"Content-Type: multipart/mixed; boundary={boundary}\n\n".encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain\n\n"
        + _paragraphs(rng, 3)
        + f"--{boundary}\n".encode()
        + b"Content-Type: application/octet-stream; name=cut.bin\n"
        + b"Content-Transfer-Encoding: base64\n\n"
        + _b64_lines(rng.randbytes(120))
    )
    traits = {"broken-mime", "unterminated-multipart", "multipart-mixed", "attachment", "crlf"}
    return _msg("boundary-not-closed", _finish(raw, CRLF), traits)


def _invalid_base64(rng: random.Random) -> CorpusMessage:
    boundary = f"b64-{rng.getrandbits(32):08x}"
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain\n\nSee the broken attachment.\n\n"
        + f"--{boundary}\n".encode()
        + b"Content-Type: image/png; name=broken.png\n"
        + b"Content-Transfer-Encoding: base64\n"
        + b"Content-Disposition: attachment; filename=broken.png\n\n"
        + b"iVBORw0KGgoAAAANSUhEUgAAABAAAAAQ!!!@@@ this is not base64 ###\n"
        + b"AAAA=AAAA==\n"
        + b"QUJD\xff\xfeREVG\n"
        + b"QUJDRA\n"
        + f"--{boundary}--\n".encode()
    )
    traits = {"broken-mime", "invalid-base64", "multipart-mixed", "attachment", "crlf"}
    return _msg("invalid-base64", _finish(raw, CRLF), traits)


def _dot_lines(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\nContent-Type: text/plain\n\n"
        + b".\n"
        + b"A body whose first line is a lone dot.\n"
        + b"..\n"
        + b"...\n"
        + b".hidden line\n"
        + b"..double dotted\n"
        + b" .space then dot\n"
        + b"From the mbox days\n"
        + b">From quoted\n"
        + b".\r\n"
        + b". \n"
        + b"the last line is a lone dot:\n"
        + b".\n"
    )
    return _msg("dot-lines", raw, {"dot-lines", "bare-lf", "mixed-line-endings"})


def _alternative(rng: random.Random) -> CorpusMessage:
    boundary = f"alt-{rng.getrandbits(48):012x}"
    text = _paragraphs(rng, 5)
    html_lines = b"".join(b"<p>" + line + b"</p>\n" for line in text.splitlines())
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
        + text
        + f"\n--{boundary}\n".encode()
        + b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        + quopri.encodestring(
            b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="font-family:'
            b'Arial,sans-serif">\n' + html_lines + b"</body></html>\n"
        )
        + f"\n--{boundary}--\n".encode()
    )
    traits = {"multipart-alternative", "html", "quoted-printable", "crlf"}
    return _msg("alternative", _finish(raw, CRLF), traits)


def _mixed_attachments(rng: random.Random) -> CorpusMessage:
    boundary = f"mixed-{rng.getrandbits(48):012x}"
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=us-ascii\n\n"
        + _paragraphs(rng, 3)
        + b"\n"
        + _attachment_part(boundary, "filename=chart.png", png_blob(rng), "image/png")
        + _attachment_part(
            boundary, 'filename="data export.bin"', rng.randbytes(512), "application/octet-stream"
        )
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/csv; name=figures.csv\n"
        + b"Content-Disposition: attachment; filename=figures.csv\n\n"
        + b"month,revenue\njan,100\nfeb,120\n"
        + f"--{boundary}--\n".encode()
    )
    traits = {"multipart-mixed", "attachment", "binary-attachment", "base64", "crlf"}
    return _msg("mixed-attachments", _finish(raw, CRLF), traits)


def _nested_multipart(rng: random.Random) -> CorpusMessage:
    outer = f"outer-{rng.getrandbits(32):08x}"
    alt = f"alt-{rng.getrandbits(32):08x}"
    rel = f"rel-{rng.getrandbits(32):08x}"
    cid = f"logo.{rng.getrandbits(32):08x}@example.org"
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{outer}"\n\n'.encode()
        + f"--{outer}\n".encode()
        + f'Content-Type: multipart/alternative; boundary="{alt}"\n\n'.encode()
        + f"--{alt}\n".encode()
        + b"Content-Type: text/plain; charset=us-ascii\n\n"
        + _paragraphs(rng, 2)
        + f"--{alt}\n".encode()
        + f'Content-Type: multipart/related; boundary="{rel}"; type="text/html"\n\n'.encode()
        + f"--{rel}\n".encode()
        + b"Content-Type: text/html; charset=us-ascii\n\n"
        + f'<html><body><img src="cid:{cid}"><p>See attached.</p></body></html>\n'.encode()
        + f"--{rel}\n".encode()
        + b"Content-Type: image/png\n"
        + b"Content-Transfer-Encoding: base64\n"
        + f"Content-ID: <{cid}>\n".encode()
        + b"Content-Disposition: inline; filename=logo.png\n\n"
        + _b64_lines(png_blob(rng, 200))
        + f"--{rel}--\n".encode()
        + f"--{alt}--\n".encode()
        + _attachment_part(
            outer, "filename=report.pdf", b"%PDF-1.7\n" + rng.randbytes(300), "application/pdf"
        )
        + f"--{outer}--\n".encode()
    )
    traits = {
        "nested-multipart",
        "multipart-mixed",
        "multipart-alternative",
        "multipart-related",
        "inline-image",
        "attachment",
        "html",
        "crlf",
    }
    return _msg("nested-multipart", _finish(raw, CRLF), traits)


def _rfc822_attachment(rng: random.Random) -> CorpusMessage:
    outer = f"fwd-{rng.getrandbits(32):08x}"
    inner = f"inner-{rng.getrandbits(32):08x}"
    inner_message = (
        _basic_headers(rng, trace=False)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{inner}"\n\n'.encode()
        + f"--{inner}\n".encode()
        + b"Content-Type: text/plain\n\nThe original message.\n\n"
        + _attachment_part(inner, "filename=original.png", png_blob(rng, 120), "image/png")
        + f"--{inner}--\n".encode()
    )
    raw = (
        _basic_headers(rng, subject=b"Fwd: the original message")
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{outer}"\n\n'.encode()
        + f"--{outer}\n".encode()
        + b"Content-Type: text/plain\n\nForwarding this as an attachment.\n\n"
        + f"--{outer}\n".encode()
        + b"Content-Type: message/rfc822\n"
        + b'Content-Disposition: attachment; filename="original.eml"\n\n'
        + inner_message
        + f"\n--{outer}--\n".encode()
    )
    traits = {"message-rfc822", "nested-multipart", "multipart-mixed", "attachment", "crlf"}
    return _msg("rfc822-attachment", _finish(raw, CRLF), traits)


def _empty_body(rng: random.Random) -> CorpusMessage:
    raw = _basic_headers(rng) + b"\n"
    return _msg("empty-body", _finish(raw, CRLF), {"empty-body", "crlf"})


def _header_only(rng: random.Random) -> CorpusMessage:
    return _msg("header-only", _finish(_basic_headers(rng), CRLF), {"header-only", "crlf"})


def _header_only_no_final_newline(rng: random.Random) -> CorpusMessage:
    raw = _finish(_basic_headers(rng), CRLF)[:-2]
    traits = {"header-only", "no-final-newline", "crlf"}
    return _msg("header-only-no-final-newline", raw, traits)


def _no_final_newline(rng: random.Random) -> CorpusMessage:
    raw = _finish(_basic_headers(rng) + b"\n" + _paragraphs(rng, 3), CRLF)
    raw += b"Sent from my phone"
    return _msg("no-final-newline", raw, {"no-final-newline", "crlf"})


def _ends_with_bare_cr(rng: random.Random) -> CorpusMessage:
    raw = _finish(_basic_headers(rng) + b"\n" + _paragraphs(rng, 2), CRLF) + b"truncated\r"
    return _msg("ends-with-bare-cr", raw, {"bare-cr", "no-final-newline", "crlf"})


def _long_body_line(rng: random.Random) -> CorpusMessage:
    # One 10,000-octet line: a minified HTML blob as some bulk senders send it.
    cells = "".join(f"<td>{rng.randrange(10**6):06d}</td>" for _ in range(800))
    line = ("<table><tr>" + cells)[:10_000].encode()
    assert len(line) == 10_000
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\nContent-Type: text/html; charset=us-ascii\n\n"
        + line
        + b"\n"
        + b"short line after it\n"
    )
    return _msg("long-body-line", _finish(raw, CRLF), {"long-body-line", "html", "crlf"})


def _rfc2231_filename(rng: random.Random) -> CorpusMessage:
    boundary = f"r2231-{rng.getrandbits(32):08x}"
    name_one, name_two = _RFC2231_FILENAMES
    quoted_one = urllib.parse.quote(name_one.encode("utf-8"), safe="")
    quoted_two = urllib.parse.quote(name_two.encode("iso-8859-1"), safe="")
    half = len(quoted_two) // 2
    while "%" in quoted_two[half - 2 : half]:  # never split a %XX escape between segments
        half += 1
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\n"
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode()
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain\n\nTwo attachments with RFC 2231 names.\n\n"
        + f"--{boundary}\n".encode()
        + f"Content-Type: application/pdf; name*=UTF-8''{quoted_one}\n".encode()
        + b"Content-Transfer-Encoding: base64\n"
        + f"Content-Disposition: attachment;\n\tfilename*=UTF-8''{quoted_one}\n\n".encode()
        + _b64_lines(b"%PDF-1.5\n" + rng.randbytes(250))
        + f"--{boundary}\n".encode()
        + b"Content-Type: text/plain; charset=iso-8859-1\n"
        + b"Content-Transfer-Encoding: base64\n"
        + b"Content-Disposition: attachment;\n"
        + f"\tfilename*0*=iso-8859-1'de'{quoted_two[:half]};\n".encode()
        + f"\tfilename*1*={quoted_two[half:]}\n\n".encode()
        + _b64_lines("Änderungen: keine.\n".encode("latin-1"))
        + f"--{boundary}--\n".encode()
    )
    traits = {
        "rfc2231",
        "rfc2231-continuation",
        "encoded-filename",
        "multipart-mixed",
        "attachment",
        "crlf",
    }
    return _msg("rfc2231-filename", _finish(raw, CRLF), traits)


def _nul_byte(rng: random.Random) -> CorpusMessage:
    raw = (
        _basic_headers(rng)
        + b"MIME-Version: 1.0\nContent-Type: text/plain\n\n"
        + b"a NUL byte follows: \x00 (sent by a broken client)\n"
        + b"and a DEL \x7f and other controls \x01\x02\x1b[0m\n"
    )
    return _msg("nul-byte", _finish(raw, CRLF), {"nul-byte", "control-characters", "crlf"})
