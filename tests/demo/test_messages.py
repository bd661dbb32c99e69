"""The demo mailbox: valid, realistic, deterministic mail."""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import hashlib
import re
import struct
import subprocess
import sys
import urllib.parse
import zlib

import pytest

from gateway.demo import demo_messages

MESSAGES = demo_messages()
UIDS = [uid for uid, _ in MESSAGES]


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def by_subject(fragment: str, *, exact: bool = False) -> tuple[bytes, email.message.EmailMessage]:
    """The one message whose decoded Subject contains (or is) `fragment`: (raw, parsed)."""
    subjects = [(str(parse(raw)["Subject"]), raw) for _, raw in MESSAGES]
    found = [raw for s, raw in subjects if (s == fragment if exact else fragment in s)]
    assert len(found) == 1, fragment
    return found[0], parse(found[0])


def raw_of(uid: str) -> bytes:
    return dict(MESSAGES)[uid]


def test_at_least_five_messages_with_valid_distinct_unique_ids() -> None:
    assert len(MESSAGES) >= 5
    assert len(set(UIDS)) == len(UIDS)
    for uid in UIDS:
        assert re.fullmatch(r"[\x21-\x7e]{1,70}", uid), uid  # RFC 1939 section 7


def test_some_unique_ids_need_url_escaping() -> None:
    escaped = [uid for uid in UIDS if urllib.parse.quote(uid, safe="") != uid]
    assert "demo/2024+05?x" in escaped
    assert any(c in uid for uid in escaped for c in "#%&")


def test_a_new_list_of_the_same_bytes_on_every_call() -> None:
    again = demo_messages()
    assert again == MESSAGES
    assert again is not MESSAGES


def test_identical_in_a_fresh_interpreter() -> None:
    """No dependence on hash seeds, the clock or anything else of the process."""
    code = (
        "import hashlib, sys\n"
        "from gateway.demo import demo_messages\n"
        "h = hashlib.sha256()\n"
        "for uid, raw in demo_messages():\n"
        "    h.update(uid.encode() + b'\\0' + raw + b'\\0')\n"
        "sys.stdout.write(h.hexdigest())\n"
    )
    here = hashlib.sha256()
    for uid, raw in MESSAGES:
        here.update(uid.encode() + b"\0" + raw + b"\0")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "TZ": "Pacific/Kiritimati"},
        timeout=60,
    )
    assert result.stdout.decode() == here.hexdigest()


@pytest.mark.parametrize(("uid", "raw"), MESSAGES, ids=UIDS)
def test_wire_format(uid: str, raw: bytes) -> None:
    """CRLF only, 7-bit, lines within RFC 5322's 998, a header block then a body."""
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(raw) < 0x80
    assert b"\0" not in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\r\n\r\n" in raw


@pytest.mark.parametrize(("uid", "raw"), MESSAGES, ids=UIDS)
def test_parses_without_defects(uid: str, raw: bytes) -> None:
    message = parse(raw)
    for part in message.walk():
        assert not part.defects, (uid, part.get_content_type(), part.defects)
        for name, value in part.items():
            assert not getattr(value, "defects", ()), (uid, name, value.defects)
        if not part.is_multipart():
            part.get_content()  # decodes (charset, transfer encoding) without errors
    for name in ("Message-ID", "Date", "From", "Subject", "MIME-Version"):
        assert message[name], (uid, name)
    assert email.utils.parsedate_to_datetime(str(message["Date"])).year == 2024


def test_message_ids_are_distinct() -> None:
    ids = [str(parse(raw)["Message-ID"]) for _, raw in MESSAGES]
    assert len(set(ids)) == len(ids)


def test_welcome_explains_the_gateway_in_plain_text() -> None:
    uid, raw = MESSAGES[0]
    message = parse(raw)
    assert "Welcome to pop3gw" in str(message["Subject"])
    assert message.get_content_type() == "text/plain"
    text = message.get_content()
    assert "POP3" in text
    assert "HTTP" in text
    base = "curl -u demo:demo http://127.0.0.1:8080/v1/mailboxes/me"
    assert base + "/messages\r\n" in text
    # the example URLs name real messages: base64url of the unique-id, no padding
    for named in (uid, "demo/2024+05?x"):
        api_id = base64.urlsafe_b64encode(named.encode()).rstrip(b"=").decode()
        assert f"{base}/messages/{api_id}" in text
    assert "/docs" in text
    assert len(text.splitlines()) < 40


def test_chinese_subject_and_sender_in_utf8_b_encoded_words() -> None:
    raw, message = by_subject("会议纪要")
    assert b"From: =?UTF-8?B?" in raw
    assert b"Subject: =?UTF-8?B?" in raw
    assert str(message["Subject"]) == "会议纪要：第二季度产品路线图"
    assert message["From"].addresses[0].display_name == "张伟"
    assert "产品例会" in message.get_content()


def test_french_subject_and_sender_in_latin1_q_encoded_words() -> None:
    raw, message = by_subject("Réservation")
    assert b"From: =?ISO-8859-1?Q?" in raw
    assert b"Subject: =?ISO-8859-1?Q?" in raw
    assert str(message["Subject"]) == "Réservation confirmée : Hôtel Müller à Zürich"
    assert message["From"].addresses[0].display_name == "François Müller"
    assert message.get_content_charset() == "iso-8859-1"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Mit freundlichen Grüßen" in message.get_content()


def test_newsletter_is_multipart_alternative_text_and_html() -> None:
    _, message = by_subject("Weekly")
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert "Pipelining" in parts[0].get_content()
    html = parts[1].get_content()
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert "naïve, résumé — UTF-8" in html
    body = message.get_body(("html", "plain"))
    assert body is not None
    assert body.get_content_type() == "text/html"
    assert message["List-Unsubscribe"]


def _check_png(data: bytes) -> tuple[int, int]:
    """Validate a PNG's structure, CRCs and image data; return (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert binascii.crc32(kind + payload) == crc, kind
        chunks.append(kind)
        if kind == b"IDAT":
            idat += payload
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", payload[:10])
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0] == b"IHDR"
    assert chunks[-1] == b"IEND"
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


def test_attachments_png_and_rfc2231_filename() -> None:
    raw = raw_of("demo/2024+05?x")
    message = parse(raw)
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("plain",))
    assert body is not None
    assert "notes" in body.get_content()
    attachments = list(message.iter_attachments())
    assert [a.get_content_type() for a in attachments] == ["image/png", "text/plain"]
    png, notes = attachments
    assert png.get_filename() == "swatch.png"
    data = png.get_content()
    assert isinstance(data, bytes)
    assert _check_png(data) == (8, 8)
    assert png.get_param("size", header="content-disposition") == str(len(data))
    assert notes.get_filename() == "Besprechungsnotizen München.txt"
    assert b"filename*0*=UTF-8''" in raw  # RFC 2231 continuation and charset
    assert b"M%C3%BCnchen.txt" in raw
    assert "Größenangaben" in notes.get_content()


def test_a_reply_in_a_thread() -> None:
    _, question = by_subject("Which paths should the repo ignore?", exact=True)
    _, reply = by_subject("Re: Which paths")
    assert reply["In-Reply-To"] == question["Message-ID"]
    assert str(question["Message-ID"]) in str(reply["References"])
    assert reply["In-Reply-To"] != reply["Message-ID"]
    assert email.utils.parsedate_to_datetime(
        str(question["Date"])
    ) < email.utils.parsedate_to_datetime(str(reply["Date"]))


def test_the_reply_needs_dot_stuffing() -> None:
    _, reply = by_subject("Re: Which paths")
    lines = reply.get_content().splitlines()
    assert "." in lines  # a line that would end a POP3 reply if sent unstuffed
    assert ".venv/" in lines
    assert "..and-one-with-two-dots" in lines
