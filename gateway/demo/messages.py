"""The demo mailbox: a handful of realistic messages, byte-for-byte the same on every run.

Each message is a pair ``(unique_id, raw)``: the POP3 UIDL unique-id and the RFC 5322
message with CRLF line endings, 7-bit on the wire (non-ASCII text travels in RFC 2047
encoded words, RFC 2231 parameters, quoted-printable or base64). Dates, Message-IDs and
attachment bytes are fixed: nothing depends on the clock, the machine or a random source.

The unique-ids imitate what real servers send (Dovecot, Cyrus, Courier and Mailutils
formats), and two of them hold characters that must be escaped in a URL path.
"""

from __future__ import annotations

import base64
import quopri

__all__ = ["demo_messages"]

CRLF = b"\r\n"

# The welcome message points at these; keep them in step with the HTTP API
# (openapi/openapi.yaml): a message's id there is the base64url of its unique-id.
_BASE_URL = "http://127.0.0.1:8080"
_MAILBOX = "/v1/mailboxes/me"

# An 8x8 RGB gradient, a complete and valid PNG file (IHDR, IDAT, IEND; CRCs checked
# by the tests).
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAbUlEQVR42hXOQRUAUQhCUaMYhShE"
    "MQpRXhSizB+XXA86M+ygwcMNGRg6zCy7aPFySxaW7gOxQsLiRASiemDWyNicicHUD449dPi4IwdH"
    "70HYoOBwIYHQPPiPvdpX8FZf+E/fa1O2qLhcSf+45QP21WgBfQ5xkgAAAABJRU5ErkJggg=="
)


def _message_id(uid: str) -> str:
    """The API's name for a message: base64url of the unique-id, without padding."""
    return base64.urlsafe_b64encode(uid.encode("ascii")).rstrip(b"=").decode("ascii")


def _lines(text: str) -> bytes:
    """ASCII text with LF line endings as wire bytes with CRLF line endings."""
    return text.encode("ascii").replace(b"\n", CRLF)


def _message(headers: str, body: bytes) -> bytes:
    """Header block (ASCII, LF endings) + empty line + body (already CRLF, or empty)."""
    return _lines(headers.strip("\n") + "\n\n") + body


def _b64(data: bytes) -> bytes:
    """Base64 in 76-character lines with CRLF endings (RFC 2045 section 6.8)."""
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + CRLF for i in range(0, len(encoded), 76))


def _qp(text: str, charset: str) -> bytes:
    """Quoted-printable (RFC 2045 section 6.7) of `text` in `charset`, CRLF endings."""
    if not text.endswith("\n"):
        text += "\n"
    return quopri.encodestring(text.encode(charset)).replace(b"\n", CRLF)


def _plain(text: str) -> bytes:
    """A 7-bit text body with CRLF endings."""
    if not text.endswith("\n"):
        text += "\n"
    return _lines(text)


# --------------------------------------------------------------------------- 1. welcome

_WELCOME_UID = "000000016638a8d0"  # Dovecot: UIDVALIDITY and UID in hex


def _welcome() -> bytes:
    mailbox = _BASE_URL + _MAILBOX
    attachments_id = _message_id(_ATTACHMENTS_UID)
    body = f"""\
Hello, and welcome to pop3gw!

pop3gw makes any POP3 mailbox usable over HTTP/JSON: listings with headers,
whole messages (parsed or raw), attachments and deletes. Here it serves the
built-in demo mailbox (user "demo", password "demo"); nothing leaves your
machine.

Try these:

  curl -u demo:demo {mailbox}
  curl -u demo:demo {mailbox}/messages
  curl -u demo:demo {mailbox}/messages/{_message_id(_WELCOME_UID)}
  curl -u demo:demo {mailbox}/messages/{attachments_id}/raw

and the API documentation at {_BASE_URL}/docs.

A message's id in a URL is its POP3 unique-id (what UIDL reports) in base64url
without padding: the unique-id {_ATTACHMENTS_UID} is {attachments_id}.

The other messages are there to show real-world mail: non-ASCII names and
subjects, an HTML newsletter, attachments and a thread. Delete what you like:
the demo mailbox is back to these messages whenever the demo restarts.

The pop3gw demo
"""
    headers = """\
Return-Path: <welcome@pop3gw.example>
Received: from localhost (localhost [127.0.0.1])
	by demo.pop3gw.example (pop3gw-demo) with ESMTP id 4VZ0pQ1xKfz9sWq
	for <demo@pop3gw.example>; Mon, 06 May 2024 09:00:00 +0000 (UTC)
Message-ID: <welcome.20240506T090000Z@pop3gw.example>
Date: Mon, 06 May 2024 09:00:00 +0000
From: pop3gw <welcome@pop3gw.example>
To: Demo User <demo@pop3gw.example>
Subject: Welcome to pop3gw: your mailbox, over HTTP
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit
"""
    return _message(headers, _plain(body))


# --------------------------------------------------------------------------- 2. Chinese

_MINUTES_UID = "1715000400.2"  # Cyrus: UIDVALIDITY.UID


def _minutes() -> bytes:
    body = """\
各位好：

附上今天下午产品例会的纪要，要点如下：

1. 第二季度发布 REST 网关 1.0，支持 POP3 邮箱的列表、读取和删除。
2. 王芳负责性能测试，目标为每秒处理一千封邮件头。
3. 下次例会：5 月 14 日（周二）下午三点，3 号会议室。

如有遗漏，请直接回复补充。

张伟
"""
    headers = """\
Received: from mail.example.com (mail.example.com [198.51.100.7])
	by demo.pop3gw.example with ESMTPS id 4VZ3kT0nQxz1xpB
	for <demo@pop3gw.example>; Mon, 06 May 2024 21:00:00 +0800 (CST)
Message-ID: <20240506130000.51c9e2@mail.example.com>
Date: Mon, 06 May 2024 21:00:00 +0800
From: =?UTF-8?B?5byg5Lyf?= <zhang.wei@mail.example.com>
To: demo@pop3gw.example
Subject: =?UTF-8?B?5Lya6K6u57qq6KaB77ya?=
 =?UTF-8?B?56ys5LqM5a2j5bqm5Lqn5ZOB6Lev57q/5Zu+?=
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: base64
"""
    return _message(headers, _b64(body.replace("\n", "\r\n").encode("utf-8")))


# --------------------------------------------------------------------------- 3. French

_BOOKING_UID = "UID3-1715088600"  # Courier: UID<n>-<uidvalidity>


def _booking() -> bytes:
    body = """\
Bonjour,

Nous avons le plaisir de confirmer votre réservation :

  Arrivée :  mardi 14 mai 2024, à partir de 15 h
  Départ :   jeudi 16 mai 2024, avant 11 h
  Chambre :  double, vue sur le lac, petit-déjeuner compris

Le paiement se fera sur place. Pour toute modification, répondez
simplement à ce courriel.

Mit freundlichen Grüßen / Meilleures salutations,
François Müller
Hôtel Müller, Zürich
"""
    headers = """\
Received: from smtp.example.net (smtp.example.net [203.0.113.40])
	by demo.pop3gw.example with ESMTPS id 4VZQ7m2hW8z4wLd
	for <demo@pop3gw.example>; Tue, 07 May 2024 15:30:00 +0200 (CEST)
Message-ID: <a1b2c3d4.5e6f@smtp.example.net>
Date: Tue, 07 May 2024 15:30:00 +0200
From: =?ISO-8859-1?Q?Fran=E7ois_M=FCller?= <reservation@hotel-mueller.example.net>
To: Demo User <demo@pop3gw.example>
Subject: =?ISO-8859-1?Q?R=E9servation_confirm=E9e_:_H=F4tel_M=FCller_=E0_Z=FCrich?=
MIME-Version: 1.0
Content-Type: text/plain; charset=ISO-8859-1
Content-Transfer-Encoding: quoted-printable
"""
    return _message(headers, _qp(body, "iso-8859-1"))


# --------------------------------------------------------------------------- 4. newsletter

_NEWSLETTER_UID = "b6d767d2f8ed5d21a44b0e5886680cb9.1715176800.4"  # Mailutils: md5.time.n
_NEWSLETTER_BOUNDARY = "=_pop3gw_weekly_19_alt"


def _newsletter() -> bytes:
    text = """\
pop3gw Weekly, issue 19
-----------------------

* Pipelining: up to 75 times faster on high-latency links
  Sending TOP for a whole page of messages at once instead of one by one
  turns a 10 ms round trip per message into one per page.

* Unique-ids are the only stable name of a message
  Message numbers change with every session; the API never shows them.

Read online: https://pop3gw.example/weekly/19
Unsubscribe: https://pop3gw.example/unsubscribe?list=weekly
"""
    html = """\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>pop3gw Weekly, issue 19</title></head>
<body style="font-family: Helvetica, Arial, sans-serif; color: #222; max-width: 40em;">
<h1 style="font-size: 1.4em;">pop3gw Weekly &mdash; issue 19</h1>
<h2>Pipelining: up to 75&times; faster on high-latency links</h2>
<p>Sending <code>TOP</code> for a whole page of messages at once instead of one by
one turns a 10&nbsp;ms round trip per message into one per page.</p>
<h2>Unique-ids are the only stable name of a message</h2>
<p>Message numbers change with every session; the API never shows them.
“Quoted”, naïve, résumé — UTF-8 survives the trip.</p>
<p><a href="https://pop3gw.example/weekly/19">Read online</a> &middot;
<a href="https://pop3gw.example/unsubscribe?list=weekly">Unsubscribe</a></p>
</body>
</html>
"""
    b = _NEWSLETTER_BOUNDARY
    headers = f"""\
Received: from out.lists.example.org (out.lists.example.org [192.0.2.25])
	by demo.pop3gw.example with ESMTPS id 4VZs0b6YcHz2kLm
	for <demo@pop3gw.example>; Wed, 08 May 2024 14:00:00 +0000 (UTC)
Message-ID: <weekly-19.1715176800@lists.example.org>
Date: Wed, 08 May 2024 14:00:00 +0000
From: pop3gw Weekly <weekly@lists.example.org>
To: demo@pop3gw.example
Subject: pop3gw Weekly #19: pipelining, unique-ids
List-Id: pop3gw Weekly <weekly.lists.example.org>
List-Unsubscribe: <https://pop3gw.example/unsubscribe?list=weekly>,
 <mailto:weekly-unsubscribe@lists.example.org>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
Precedence: bulk
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="{b}"
"""
    body = (
        _plain("This is a multi-part message in MIME format.\n")
        + _lines(f"\n--{b}\n")
        + _lines("Content-Type: text/plain; charset=UTF-8\n")
        + _lines("Content-Transfer-Encoding: quoted-printable\n\n")
        + _qp(text, "utf-8")
        + _lines(f"\n--{b}\n")
        + _lines("Content-Type: text/html; charset=UTF-8\n")
        + _lines("Content-Transfer-Encoding: quoted-printable\n\n")
        + _qp(html, "utf-8")
        + _lines(f"\n--{b}--\n")
    )
    return _message(headers, body)


# --------------------------------------------------------------------------- 5. attachments

_ATTACHMENTS_UID = "demo/2024+05?x"  # needs escaping in a URL: / + ?
_ATTACHMENTS_BOUNDARY = "----=_Part_2024_0509.1715263200"


def _attachments() -> bytes:
    text = """\
Hi,

as promised: the colour swatch from Thursday (tiny, I know) and my notes
from the meeting in Munich. The notes file has an umlaut in its name, to
see whether the gateway gets the filename right.

Ines
"""
    notes = """\
Besprechungsnotizen, Donnerstag 2. Mai 2024
-------------------------------------------

- Größenangaben in LIST sind nur Hinweise (RFC 1939, Abschnitt 11).
- Löschen wirkt erst nach QUIT; ein Verbindungsabbruch löscht nichts.
- Nächster Termin: Donnerstag, 16. Mai, 10 Uhr.
"""
    b = _ATTACHMENTS_BOUNDARY
    headers = f"""\
Received: from mail.example.org (mail.example.org [192.0.2.80])
	by demo.pop3gw.example with ESMTPS id 4Vb1Xr3nC9z7qTs
	for <demo@pop3gw.example>; Thu, 09 May 2024 16:00:00 +0200 (CEST)
Message-ID: <CAHx7Zq9yM2w0Ep4fB7nRk@mail.example.org>
Date: Thu, 09 May 2024 16:00:00 +0200
From: Ines Rossi <ines.rossi@example.org>
To: Demo User <demo@pop3gw.example>
Subject: Swatch and notes from Thursday
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="{b}"
"""
    body = (
        _lines(f"--{b}\n")
        + _lines("Content-Type: text/plain; charset=us-ascii\n")
        + _lines("Content-Transfer-Encoding: 7bit\n\n")
        + _plain(text)
        + _lines(f"\n--{b}\n")
        + _lines("Content-Type: image/png; name=swatch.png\n")
        + _lines(f"Content-Disposition: attachment; filename=swatch.png; size={len(_PNG)}\n")
        + _lines("Content-Transfer-Encoding: base64\n\n")
        + _b64(_PNG)
        + _lines(f"\n--{b}\n")
        + _lines(
            "Content-Type: text/plain; charset=UTF-8;\n"
            " name*=UTF-8''Besprechungsnotizen%20M%C3%BCnchen.txt\n"
        )
        + _lines(
            "Content-Disposition: attachment;\n"
            " filename*0*=UTF-8''Besprechungsnotizen%20;\n"
            " filename*1*=M%C3%BCnchen.txt\n"
        )
        + _lines("Content-Transfer-Encoding: quoted-printable\n\n")
        + _qp(notes, "utf-8")
        + _lines(f"\n--{b}--\n")
    )
    return _message(headers, body)


# --------------------------------------------------------------------------- 6./7. thread

_QUESTION_UID = "thread#1%25&a=b"  # needs escaping in a URL: # % &
_REPLY_UID = "000000026638a8d0"

_QUESTION_ID = "<CAK7x1fq3nVw8pL0e2+Zt5A@mail.example.com>"
_REPLY_ID = "<20240511083000.GA4117@build.example.net>"


def _question() -> bytes:
    body = """\
Hi Hiro,

before the first release: which paths should the repository ignore? I keep
committing caches by accident.

Thanks,
Grace
"""
    headers = f"""\
Message-ID: {_QUESTION_ID}
Date: Fri, 10 May 2024 17:45:00 +0100
From: Grace Okafor <grace.okafor@mail.example.com>
To: Hiro Tanaka <hiro@build.example.net>
Cc: demo@pop3gw.example
Subject: Which paths should the repo ignore?
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit
"""
    return _message(headers, _plain(body))


def _reply() -> bytes:
    # Lines starting with "." (and one that is only ".") must be dot-stuffed on the wire.
    body = """\
On Fri, May 10, 2024 at 17:45, Grace Okafor wrote:
> before the first release: which paths should the repository ignore? I keep
> committing caches by accident.

These, as they appear in the file:

.venv/
.mypy_cache/
.pytest_cache/
.ruff_cache/
..and-one-with-two-dots
.

The lone dot above is on purpose: it is how a POP3 server ends a reply, so
it travels as ".." and the client turns it back into ".". If you see a dot
here, dot-stuffing works.

...and the rest can wait until Monday.

Hiro
"""
    headers = f"""\
Message-ID: {_REPLY_ID}
In-Reply-To: {_QUESTION_ID}
References: {_QUESTION_ID}
Date: Sat, 11 May 2024 08:30:00 +0900
From: Hiro Tanaka <hiro@build.example.net>
To: Grace Okafor <grace.okafor@mail.example.com>
Cc: demo@pop3gw.example
Subject: Re: Which paths should the repo ignore?
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit
"""
    return _message(headers, _plain(body))


def demo_messages() -> list[tuple[str, bytes]]:
    """The demo mailbox, oldest first: ``[(unique_id, raw_message), ...]``.

    A new list (of the same bytes) on every call.
    """
    return [
        (_WELCOME_UID, _welcome()),
        (_MINUTES_UID, _minutes()),
        (_BOOKING_UID, _booking()),
        (_NEWSLETTER_UID, _newsletter()),
        (_ATTACHMENTS_UID, _attachments()),
        (_QUESTION_UID, _question()),
        (_REPLY_UID, _reply()),
    ]
