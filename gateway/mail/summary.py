"""Header summaries for message listings: the output of POP3 ``TOP n 0``, as data.

`summarize` reads only the header section (a whole message works too), takes bytes exactly
as the server sent them and never raises. `HeaderSummary.to_json` is the compact, versioned
shape that is cached; the HTTP API's shape is `gateway.api.serializers`'s.

Every field a summary keeps is capped, so that hostile or broken mail (a 1 MB subject or
display name, 10,000 recipients) cannot make a listing page, or a cache entry, large:

- subject, Message-ID, In-Reply-To: :data:`MAX_SUMMARY_TEXT` (2,000) characters, cut;
- display names: :data:`MAX_SUMMARY_NAME` (256) characters, cut; real ones are a few words;
- addresses: :data:`MAX_SUMMARY_ADDRESS` (320) characters, cut; RFC 5321 (section 4.5.3.1)
  allows a 64-octet local part and a 255-octet domain, so no deliverable address is cut;
- To, Cc, Reply-To: the first :data:`MAX_SUMMARY_ADDRESSES` (100) mailboxes each;
- content type: at most :data:`MAX_SUMMARY_CONTENT_TYPE` (255) characters (RFC 6838 section
  4.2: 127 for the type, 127 for the subtype), else unreadable (``text/plain``, as for any
  invalid type); the date is a parsed ISO 8601 string, bounded by its form.

Before any of that, each field's value is cut at ``MAX_FIELD_BYTES`` (64 KiB,
:mod:`gateway.mail._headers`), so the work of a summary is bounded too: a stranger's
12 MB ``To:`` costs what 64 KiB costs.

So one summary holds at most about 180,000 characters, whatever the message. The same caps
apply to summaries read back from the cache (`HeaderSummary.from_json`), which may have
been written before them. A parsed message's ``headers`` list still has every header in
full.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._headers import (
    MAX_FIELD_BYTES,
    HeaderBlock,
    parse_addresses,
    parse_date,
    parse_params,
    split_headers,
)
from ._text import clean_header, decode_encoded_words

__all__ = ["JSON_VERSION", "Address", "HeaderSummary", "summarize"]

JSON_VERSION = 1
"""The version of `HeaderSummary.to_json`'s shape; bump it (and the cache key) on change."""

_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_MSG_ID = re.compile(r"<[^<>]+>")
# Multipart types whose parts are alternatives of one body rather than extra content.
_SINGLE_BODY_MULTIPARTS = frozenset({"multipart/alternative"})


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: the decoded display name (None if absent) and the address."""

    name: str | None
    address: str


@dataclass(frozen=True, slots=True, weakref_slot=True)
class HeaderSummary:
    """What a message listing shows about one message, decoded and cleaned.

    `date` is ISO 8601 with the sender's offset (None if missing or unreadable);
    `content_type` is the lower-cased top-level type; `has_attachments_hint` says the
    top-level structure usually carries attachments (``multipart/mixed`` and the like, or a
    non-text single part); `size` is the octet count when the caller knows it.
    """

    subject: str | None = None
    from_: Address | None = None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    date: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    content_type: str = "text/plain"
    has_attachments_hint: bool = False
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A compact dict for the cache: short keys, defaults left out, ``"v"`` versioned.

        ``HeaderSummary.from_json(s.to_json()) == s`` for every summary.
        """
        out: dict[str, Any] = {"v": JSON_VERSION}
        if self.subject is not None:
            out["s"] = self.subject
        if self.from_ is not None:
            out["f"] = _address_to_json(self.from_)
        for key, addresses in (("t", self.to), ("c", self.cc), ("r", self.reply_to)):
            if addresses:
                out[key] = [_address_to_json(a) for a in addresses]
        if self.date is not None:
            out["d"] = self.date
        if self.message_id is not None:
            out["m"] = self.message_id
        if self.in_reply_to is not None:
            out["i"] = self.in_reply_to
        if self.content_type != "text/plain":
            out["ct"] = self.content_type
        if self.has_attachments_hint:
            out["a"] = 1
        if self.size is not None:
            out["z"] = self.size
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeaderSummary:
        """The inverse of `to_json`; `ValueError` for another version or a malformed dict.

        Read field by field with no intermediate objects: a listing served from the cache
        reads one per message."""
        if not isinstance(data, dict) or data.get("v") != JSON_VERSION:
            raise ValueError("not a version-1 header summary")
        get = data.get
        subject, date, message_id, in_reply_to, content_type = (
            get("s"),
            get("d"),
            get("m"),
            get("i"),
            get("ct"),
        )
        for key, text in (
            ("s", subject),
            ("d", date),
            ("m", message_id),
            ("i", in_reply_to),
            ("ct", content_type),
        ):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"header summary: bad {key!r}")
        size = get("z")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise ValueError("header summary: bad 'z'")
        from_ = get("f")
        to, cc, reply_to = get("t"), get("c"), get("r")
        return cls(
            subject=_cap(subject),
            from_=None if from_ is None else _address_from_json(from_),
            to=[] if to is None else _addresses_from_json(to),
            cc=[] if cc is None else _addresses_from_json(cc),
            reply_to=[] if reply_to is None else _addresses_from_json(reply_to),
            date=_cap(date),
            message_id=_cap(message_id),
            in_reply_to=_cap(in_reply_to),
            content_type="text/plain" if not content_type else _content_type(content_type),
            has_attachments_hint=get("a") == 1,
            size=size,
        )


def _address_to_json(address: Address) -> list[str]:
    if address.name is None:
        return [address.address]
    return [address.address, address.name]


def _address_from_json(value: object) -> Address:
    """One cached mailbox, capped."""
    if isinstance(value, list):
        if len(value) == 2:
            mailbox, name = value
            if isinstance(mailbox, str) and isinstance(name, str):
                if len(mailbox) <= MAX_SUMMARY_ADDRESS and len(name) <= MAX_SUMMARY_NAME:
                    return Address(name, mailbox)
                return Address(name[:MAX_SUMMARY_NAME], mailbox[:MAX_SUMMARY_ADDRESS])
        elif len(value) == 1:
            mailbox = value[0]
            if isinstance(mailbox, str):
                return Address(None, mailbox[:MAX_SUMMARY_ADDRESS])
    raise ValueError("header summary: bad address")


def _addresses_from_json(value: object) -> list[Address]:
    """A cached address list: its first :data:`MAX_SUMMARY_ADDRESSES` mailboxes, capped
    (the rest is still checked: a malformed entry anywhere is a malformed summary)."""
    if not isinstance(value, list):
        raise ValueError("header summary: bad address list")
    addresses = [_address_from_json(v) for v in value]
    return (
        addresses if len(addresses) <= MAX_SUMMARY_ADDRESSES else addresses[:MAX_SUMMARY_ADDRESSES]
    )


# -- building summaries ----------------------------------------------------------------------


def summarize(header_bytes: bytes, *, size: int | None = None) -> HeaderSummary:
    """Summarise a header section (``TOP n 0`` output) or a whole message. Never raises."""
    raw = bytes(header_bytes)
    summary = _plain_summary(raw, size)
    if summary is None:
        summary = summary_from_block(split_headers(raw), size=size)
    return summary


# -- the common case, read directly ----------------------------------------------------------
#
# Nearly all mail a listing meets has an ASCII header section in which every line is a field
# or a continuation. For those, only the ten fields a summary shows are looked at, with one
# pattern search, instead of splitting every field (Received, DKIM-Signature, ...) first.
# The result is the same summary `summary_from_block` makes (a property test holds the two
# together); anything else goes the general way.

# A field's first line: a name of printable ASCII except ":", optional blanks, ":".
_FIELD_START = re.compile(r"[!-9;-~]+[ \t]*:", re.ASCII)
# A line that is neither a field's first line nor a continuation (preceded by its LF). The
# lookahead on the first character lets continuation lines go at once; possessive repeats
# never backtrack into a name. (Counted with callgrind: a fifth fewer instructions per
# message than the plain spelling.)
_STRAY_LINE = re.compile(r"\n(?=[^ \t])(?![!-9;-~]++[ \t]*+:)", re.ASCII)
# The fields a summary reads, with their continuation lines (each preceded by an LF). The
# lookahead skips, with one test, the lines whose first letter starts none of the names:
# most of a header section (Received, DKIM-Signature, X-...).
_SUMMARY_FIELD = re.compile(
    r"\n(?=[SsFfTtCcRrDdMmIi])(subject|from|to|cc|reply-to|date|message-id|in-reply-to|"
    r"content-type|content-disposition)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
    re.ASCII | re.IGNORECASE,
)


def _plain_summary(raw: bytes, size: int | None) -> HeaderSummary | None:
    """The summary of an ASCII header section whose lines are all fields or continuations,
    or None for any other input (the caller then takes the general way)."""
    if not raw.isascii():
        return None
    text = raw.decode("ascii")
    if not _FIELD_START.match(text):
        return None
    # The first line that is neither a field nor a continuation must be the empty line that
    # ends the section (or the end of the input, after its last LF).
    stray = _STRAY_LINE.search(text)
    if stray is not None:
        end = stray.start() + 1
        if not (end == len(text) or text.startswith(("\n", "\r\n"), end)):
            return None
        text = text[:end]
    found: dict[str, list[str]] = {}
    for name, value in _SUMMARY_FIELD.findall("\n" + text):
        if "\n" in value:
            value = value.replace("\r\n", "").replace("\n", "")
        value = value.strip(" \t\r")
        found.setdefault(name.lower(), []).append(value[:MAX_FIELD_BYTES])  # as unfold() does
    return _summary_of_fields(found, size)


def _summary_of_fields(found: dict[str, list[str]], size: int | None) -> HeaderSummary:
    """`summary_from_block`'s rules on unfolded ASCII field values (first value wins, every
    value of an address field counts)."""
    content_type = "text/plain"
    if "content-type" in found:
        value = found["content-type"][0]
        if len(value) <= _MAX_REMEMBERED_CONTENT_TYPE:
            content_type = _remembered_content_type(value)
        else:
            content_type = _plain_content_type(value)
    subject = found.get("subject")
    senders = _plain_addresses(found["from"][:1]) if "from" in found else []
    date = found.get("date")
    message_id = found.get("message-id")
    in_reply_to = found.get("in-reply-to")
    hint = content_type.startswith("multipart/") and (content_type not in _SINGLE_BODY_MULTIPARTS)
    if not content_type.startswith(("multipart/", "text/")):
        hint = True
    disposition = found.get("content-disposition")
    if disposition is not None and disposition[0].partition(";")[0].strip().lower() == "attachment":
        hint = True
    return HeaderSummary(
        subject=None if subject is None else _cap(clean_header(decode_encoded_words(subject[0]))),
        from_=_capped_address(senders[0]) if senders else None,
        to=_capped(_plain_addresses(found.get("to", ()))),
        cc=_capped(_plain_addresses(found.get("cc", ()))),
        reply_to=_capped(_plain_addresses(found.get("reply-to", ()))),
        date=None if date is None else parse_date(clean_header(date[0])),
        message_id=None if message_id is None else _cap(first_message_id(message_id[0])),
        in_reply_to=None if in_reply_to is None else _cap(first_message_id(in_reply_to[0])),
        content_type=content_type,
        has_attachments_hint=hint,
        size=size,
    )


def _plain_content_type(value: str) -> str:
    """The lower-cased ``type/subtype`` of a Content-Type value (``text/plain`` if
    invalid)."""
    main = "".join(value.partition(";")[0].strip().lower().split())
    return _content_type(main) if _MIME_TYPE.fullmatch(main) else "text/plain"


#: Content-Type values up to this length are remembered (mail of a mailbox has a few).
_MAX_REMEMBERED_CONTENT_TYPE = 256
_remembered_content_type = functools.lru_cache(maxsize=1024)(_plain_content_type)


def _plain_addresses(values: Iterable[str]) -> list[Address]:
    out: list[Address] = []
    for value in values:
        out.extend(addresses_of(value))
    return out


def addresses_of(value: str) -> tuple[Address, ...]:
    """The mailboxes of one address field's text; short values are remembered (the same
    To and From come back in message after message of a mailbox)."""
    if len(value) > _MAX_REMEMBERED_ADDRESS:
        return _parsed_addresses(value)
    return _remembered_addresses(value)


_MAX_REMEMBERED_ADDRESS = 512


def _parsed_addresses(value: str) -> tuple[Address, ...]:
    return tuple(Address(name, address) for name, address in parse_addresses(value))


_remembered_addresses = functools.lru_cache(maxsize=4096)(_parsed_addresses)


def content_type_of(block: HeaderBlock) -> tuple[str, dict[str, str]]:
    """The block's lower-cased ``type/subtype`` (``text/plain`` if absent or invalid)."""
    raw = block.raw(b"content-type")
    if raw is None:
        return "text/plain", {}
    main, params = parse_params(block.text(raw))
    main = "".join(main.split())
    if not _MIME_TYPE.fullmatch(main):
        return "text/plain", params
    return main, params


def first_message_id(text: str) -> str | None:
    """The first ``<...>`` token of a Message-ID-like field, else its cleaned text."""
    found = _MSG_ID.search(text)
    value = clean_header(found.group() if found else text)
    return value or None


def message_ids(text: str) -> list[str]:
    """Every ``<...>`` token of a References-like field (else its words), cleaned."""
    found = _MSG_ID.findall(text) or text.split()
    return [value for value in (clean_header(v) for v in found) if value]


#: A listing item is a summary: hostile or broken mail (a 1 MB Subject, 50,000 recipients)
#: must not make every page, and every cache entry, that large (see the module's docstring).
#: A parsed message's ``headers`` list still has every header in full.
MAX_SUMMARY_TEXT = 2000
MAX_SUMMARY_ADDRESSES = 100
MAX_SUMMARY_NAME = 256
MAX_SUMMARY_ADDRESS = 320
MAX_SUMMARY_CONTENT_TYPE = 255


def _cap(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_SUMMARY_TEXT else text[:MAX_SUMMARY_TEXT]


def _capped_address(address: Address) -> Address:
    """The mailbox with its display name and address cut to their caps."""
    name, mailbox = address.name, address.address
    if len(mailbox) <= MAX_SUMMARY_ADDRESS and (name is None or len(name) <= MAX_SUMMARY_NAME):
        return address
    return Address(
        name=None if name is None else name[:MAX_SUMMARY_NAME],
        address=mailbox[:MAX_SUMMARY_ADDRESS],
    )


def _capped(addresses: list[Address]) -> list[Address]:
    """The first :data:`MAX_SUMMARY_ADDRESSES` mailboxes of a field, each capped."""
    return [_capped_address(a) for a in addresses[:MAX_SUMMARY_ADDRESSES]]


def _content_type(main: str) -> str:
    """A ``type/subtype`` longer than RFC 6838 allows reads as an invalid one."""
    return main if len(main) <= MAX_SUMMARY_CONTENT_TYPE else "text/plain"


def summary_from_block(block: HeaderBlock, *, size: int | None = None) -> HeaderSummary:
    """Build a `HeaderSummary` from a split header block, every field capped (see the
    module's docstring)."""
    content_type, params = content_type_of(block)
    content_type = _content_type(content_type)
    block.hint = params.get("charset")

    subject_raw = block.raw(b"subject")
    subject = None if subject_raw is None else block.decoded(subject_raw)

    from_raw = block.raw(b"from")
    senders = [] if from_raw is None else _addresses(block, [from_raw])

    date_raw = block.raw(b"date")
    date = None if date_raw is None else parse_date(clean_header(block.text(date_raw)))

    message_id_raw = block.raw(b"message-id")
    in_reply_to_raw = block.raw(b"in-reply-to")

    hint = content_type.startswith("multipart/") and (content_type not in _SINGLE_BODY_MULTIPARTS)
    if not content_type.startswith(("multipart/", "text/")):
        hint = True
    disposition = block.raw(b"content-disposition")
    if disposition is not None and parse_params(block.text(disposition))[0] == "attachment":
        hint = True

    return HeaderSummary(
        subject=_cap(subject),
        from_=_capped_address(senders[0]) if senders else None,
        to=_capped(_addresses(block, block.raw_all(b"to"))),
        cc=_capped(_addresses(block, block.raw_all(b"cc"))),
        reply_to=_capped(_addresses(block, block.raw_all(b"reply-to"))),
        date=date,
        message_id=None
        if message_id_raw is None
        else _cap(first_message_id(block.text(message_id_raw))),
        in_reply_to=None
        if in_reply_to_raw is None
        else _cap(first_message_id(block.text(in_reply_to_raw))),
        content_type=content_type,
        has_attachments_hint=hint,
        size=size,
    )


def _addresses(block: HeaderBlock, values: list[bytes]) -> list[Address]:
    return _plain_addresses(block.text(value) for value in values)
