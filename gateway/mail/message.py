"""Whole messages: decoded headers, the text and HTML bodies, attachments, defects.

`parse_message` walks the MIME tree of a RETR answer without ever raising: broken
boundaries, invalid base64, unknown charsets and bare line endings give a best-effort
reading plus a named defect. Work is linear in the input: multipart nesting is cut at
`MAX_NESTING_DEPTH` (the deeper structure becomes one opaque attachment) and at most
`MAX_PARTS` leaf parts are read.

Attachment ids are MIME part paths as IMAP numbers them (``"2"``, ``"1.2"``; ``"1"`` for a
single-part message): they depend only on the message's bytes, so they are stable.
"""

from __future__ import annotations

import binascii
import email.errors
import re
from dataclasses import dataclass, field
from typing import Literal

from ._headers import HeaderBlock, parse_params, split_headers, unfold
from ._text import clean_body, clean_header, decode_declared, decode_encoded_words
from .summary import (
    Address,
    HeaderSummary,
    content_type_of,
    message_ids,
    summary_from_block,
)

__all__ = [
    "MAX_NESTING_DEPTH",
    "MAX_PARTS",
    "Attachment",
    "AttachmentInfo",
    "ParsedMessage",
    "find_attachment",
    "parse_message",
]

MAX_NESTING_DEPTH = 20
"""Multipart levels that are split; a multipart nested deeper is one opaque attachment."""
MAX_PARTS = 1000
"""Leaf parts read per message; the rest are skipped with the defect ``too-many-parts``."""

Disposition = Literal["attachment", "inline"]

_NO_BOUNDARY = email.errors.NoBoundaryInMultipartDefect.__name__
_START_BOUNDARY = email.errors.StartBoundaryNotFoundDefect.__name__
_CLOSE_BOUNDARY = email.errors.CloseBoundaryNotFoundDefect.__name__
_NO_PARTS = email.errors.MultipartInvariantViolationDefect.__name__
_B64_PADDING = email.errors.InvalidBase64PaddingDefect.__name__
_B64_CHARACTERS = email.errors.InvalidBase64CharactersDefect.__name__
_B64_LENGTH = email.errors.InvalidBase64LengthDefect.__name__
_TOO_DEEP = "nesting-too-deep"
_TOO_MANY = "too-many-parts"

_ATTACHMENT_ID = re.compile(rf"[1-9][0-9]{{0,5}}(?:\.[1-9][0-9]{{0,5}}){{0,{MAX_NESTING_DEPTH}}}")
_PATH_SEPARATORS = re.compile(r"[/\\]")


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """One attachment: every leaf part that is not the chosen text or HTML body.

    `id` is the MIME part path; `filename` is decoded (RFC 2231 or RFC 2047) with any
    directory part removed; `size` counts decoded octets; `content_id` has no angle
    brackets (what an HTML ``cid:`` URL names).
    """

    id: str
    filename: str | None
    content_type: str
    size: int
    disposition: Disposition
    content_id: str | None


@dataclass(frozen=True, slots=True)
class Attachment(AttachmentInfo):
    """An attachment with its decoded octets, and the charset its part declares (as
    written, unchecked; None when it declares none)."""

    payload: bytes = field(repr=False)
    charset: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A whole message, decoded: the `HeaderSummary` fields plus bodies and attachments."""

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
    references: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[AttachmentInfo] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @property
    def summary(self) -> HeaderSummary:
        """The listing view of this message."""
        return HeaderSummary(
            subject=self.subject,
            from_=self.from_,
            to=self.to,
            cc=self.cc,
            reply_to=self.reply_to,
            date=self.date,
            message_id=self.message_id,
            in_reply_to=self.in_reply_to,
            content_type=self.content_type,
            has_attachments_hint=self.has_attachments_hint,
            size=self.size,
        )


# -- the MIME walk ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Leaf:
    path: str
    block: HeaderBlock
    end: int
    content_type: str
    params: dict[str, str]
    disposition: str
    filename: str | None
    content_id: str | None
    opaque: bool

    def transfer_encoding(self) -> str:
        raw = self.block.raw(b"content-transfer-encoding")
        return "" if raw is None else parse_params(self.block.text(raw))[0]

    def is_body(self) -> bool:
        return (
            not self.opaque
            and self.content_type in ("text/plain", "text/html")
            and self.disposition != "attachment"
            and (self.filename is None or self.disposition == "inline")
        )

    def info(self, size: int) -> AttachmentInfo:
        return AttachmentInfo(
            id=self.path,
            filename=self.filename,
            content_type=self.content_type,
            size=size,
            disposition=self.api_disposition(),
            content_id=self.content_id,
        )

    def api_disposition(self) -> Disposition:
        if self.disposition == "inline":
            return "inline"
        if not self.disposition and self.content_id is not None:
            return "inline"
        return "attachment"


# The end of a boundary delimiter line: "--" when it closes, blanks, the line break.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\r?\Z)")


def _split_multipart(
    raw: bytes, start: int, end: int, boundary: bytes, limit: int
) -> tuple[list[tuple[int, int]], bool, bool]:
    """Spans of the body parts in ``raw[start:end]``: (spans, opened, closed).

    The line break before a delimiter belongs to the delimiter (RFC 2046). At most
    ``limit + 1`` spans are returned.
    """
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while len(spans) <= limit:
        found = raw.find(delimiter, pos, end)
        if found < 0:
            break
        pos = found + 1
        if found != start and raw[found - 1] != 0x0A:
            continue
        tail = _DELIMITER_TAIL.match(raw, found + len(delimiter), end)
        if tail is None:
            continue
        if part_start >= 0:
            part_end = found - 1
            if part_end > part_start and raw[part_end - 1] == 0x0D:
                part_end -= 1
            spans.append((part_start, max(part_start, part_end)))
        part_start = pos = tail.end()
        if tail.group(1):
            return spans, True, True
    if part_start >= 0 and len(spans) <= limit:
        spans.append((part_start, end))
    return spans, part_start >= 0, False


class _Walker:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.leaves: list[_Leaf] = []
        self.defects: set[str] = set()

    def walk(
        self,
        block: HeaderBlock,
        end: int,
        path: str,
        depth: int,
        default_type: str,
    ) -> None:
        self.defects.update(block.defects)
        content_type, params = content_type_of(block)
        if block.raw(b"content-type") is None:
            content_type = default_type
        if "charset" in params:
            block.hint = params["charset"]
        opaque = False
        if content_type.startswith("multipart/"):
            boundary = params.get("boundary", "")
            if not boundary:
                self.defects.add(_NO_BOUNDARY)
                content_type = "text/plain"
            elif depth >= MAX_NESTING_DEPTH:
                self.defects.add(_TOO_DEEP)
                opaque = True
            else:
                limit = MAX_PARTS - len(self.leaves)
                spans, opened, closed = _split_multipart(
                    self.raw,
                    block.body_start,
                    end,
                    boundary.encode("utf-8", "replace"),
                    limit,
                )
                if opened:
                    if not closed and len(spans) <= limit:
                        self.defects.add(_CLOSE_BOUNDARY)
                    if not spans:
                        self.defects.add(_NO_PARTS)
                    child_type = (
                        "message/rfc822" if content_type == "multipart/digest" else "text/plain"
                    )
                    for number, (part_start, part_end) in enumerate(spans, 1):
                        if len(self.leaves) >= MAX_PARTS:
                            self.defects.add(_TOO_MANY)
                            break
                        child = split_headers(self.raw, part_start, part_end)
                        child.hint = block.hint
                        child_path = f"{path}.{number}" if path else str(number)
                        self.walk(child, part_end, child_path, depth + 1, child_type)
                    return
                self.defects.add(_START_BOUNDARY)
                content_type = "text/plain"
        if len(self.leaves) >= MAX_PARTS:
            self.defects.add(_TOO_MANY)
            return
        disposition_raw = block.raw(b"content-disposition")
        disposition, disposition_params = (
            ("", {}) if disposition_raw is None else parse_params(block.text(disposition_raw))
        )
        content_id_raw = block.raw(b"content-id")
        content_id = None
        if content_id_raw is not None:
            content_id = clean_header(block.text(content_id_raw)).strip("<> ") or None
        self.leaves.append(
            _Leaf(
                path=path or "1",
                block=block,
                end=end,
                content_type=content_type,
                params=params,
                disposition=disposition,
                filename=_filename(disposition_params.get("filename") or params.get("name")),
                content_id=content_id,
                opaque=opaque,
            )
        )


def _filename(value: str | None) -> str | None:
    if value is None:
        return None
    name = clean_header(decode_encoded_words(value))
    name = _PATH_SEPARATORS.split(name)[-1].strip()
    return None if name in ("", ".", "..") else name


def _walk(raw: bytes) -> tuple[HeaderBlock, _Walker, _Leaf | None, _Leaf | None, list[_Leaf]]:
    """The top-level header block, the walk, the text and HTML leaves and the others."""
    top = split_headers(raw)
    walker = _Walker(raw)
    walker.walk(top, len(raw), "", 0, "text/plain")
    text_leaf: _Leaf | None = None
    html_leaf: _Leaf | None = None
    others: list[_Leaf] = []
    for leaf in walker.leaves:
        if leaf.is_body():
            if leaf.content_type == "text/plain" and text_leaf is None:
                text_leaf = leaf
                continue
            if leaf.content_type == "text/html" and html_leaf is None:
                html_leaf = leaf
                continue
        others.append(leaf)
    return top, walker, text_leaf, html_leaf, others


# -- transfer encodings ----------------------------------------------------------------------

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALL_BYTES = bytes(range(256))
_NOT_B64 = bytes(b for b in _ALL_BYTES if b not in _B64_ALPHABET + b"=")
_B64_OR_SPACE = _B64_ALPHABET + b"= \t\r\n"
_PADDING_RUN = re.compile(rb"=+")


def _decode_base64_chunk(chunk: bytes, defects: set[str]) -> bytes:
    if len(chunk) % 4 == 1:
        defects.add(_B64_LENGTH)
        chunk = chunk[:-1]
    try:
        return binascii.a2b_base64(chunk + b"=" * (-len(chunk) % 4))
    except binascii.Error:  # not reachable with alphabet-only input; kept as a guard
        return b""


def _decode_base64(data: bytes, defects: set[str]) -> bytes:
    """Base64 decoded as far as it goes: junk skipped, padding repaired, defects named."""
    if data.translate(None, _B64_OR_SPACE):
        defects.add(_B64_CHARACTERS)
    cleaned = data.translate(None, _NOT_B64)
    body = cleaned.rstrip(b"=")
    if b"=" not in body:
        padding = len(cleaned) - len(body)
        if padding != -len(body) % 4 and len(body) % 4 != 1:
            defects.add(_B64_PADDING)
        return _decode_base64_chunk(body, defects)
    # Padding inside the data: several encoded runs glued together; decode each.
    defects.add(_B64_PADDING)
    return b"".join(
        _decode_base64_chunk(chunk, defects) for chunk in _PADDING_RUN.split(body) if chunk
    )


def _payload(raw: bytes, leaf: _Leaf, defects: set[str]) -> bytes:
    data = raw[leaf.block.body_start : leaf.end]
    if leaf.opaque:
        return data
    encoding = leaf.transfer_encoding()
    if encoding == "base64":
        return _decode_base64(data, defects)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


# -- public functions --------------------------------------------------------------------------


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a whole message (a RETR answer). Never raises."""
    raw = bytes(raw)
    top, walker, text_leaf, html_leaf, others = _walk(raw)
    defects = walker.defects
    summary = summary_from_block(top, size=len(raw))

    def body(leaf: _Leaf | None) -> str | None:
        if leaf is None:
            return None
        data = _payload(raw, leaf, defects)
        return clean_body(decode_declared(data, leaf.params.get("charset")))

    text, html = body(text_leaf), body(html_leaf)
    attachments = [leaf.info(len(_payload(raw, leaf, defects))) for leaf in others]

    date_raw = top.raw(b"date")
    if date_raw is None:
        defects.add("missing-date")
    elif summary.date is None:
        defects.add("invalid-date")
    if top.raw(b"message-id") is None:
        defects.add("missing-message-id")
    if top.raw(b"from") is None:
        defects.add("missing-from")

    references = [
        ref for raw_ref in top.raw_all(b"references") for ref in message_ids(top.text(raw_ref))
    ]
    headers = [(name.decode("ascii"), top.decoded(unfold(value))) for name, value in top.fields]
    return ParsedMessage(
        subject=summary.subject,
        from_=summary.from_,
        to=summary.to,
        cc=summary.cc,
        reply_to=summary.reply_to,
        date=summary.date,
        message_id=summary.message_id,
        in_reply_to=summary.in_reply_to,
        content_type=summary.content_type,
        has_attachments_hint=summary.has_attachments_hint,
        size=summary.size,
        references=references,
        headers=headers,
        text=text,
        html=html,
        attachments=attachments,
        defects=sorted(defects),
    )


def find_attachment(raw: bytes, attachment_id: str) -> Attachment | None:
    """The attachment `attachment_id` of a message with its decoded octets, or None."""
    if not isinstance(attachment_id, str) or not _ATTACHMENT_ID.fullmatch(attachment_id):
        return None
    raw = bytes(raw)
    _top, _walker, _text, _html, others = _walk(raw)
    for leaf in others:
        if leaf.path == attachment_id:
            payload = _payload(raw, leaf, set())
            info = leaf.info(len(payload))
            return Attachment(
                id=info.id,
                filename=info.filename,
                content_type=info.content_type,
                size=info.size,
                disposition=info.disposition,
                content_id=info.content_id,
                payload=payload,
                charset=leaf.params.get("charset"),
            )
    return None
