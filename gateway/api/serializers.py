"""Wire shapes: how the service's results look as JSON (the OpenAPI contract's schemas).

The domain (``service``, ``mail``) returns plain values; only this module knows the names and
nesting the HTTP API uses. :class:`PageRenderings` keeps the rendered JSON of listing pages,
which are immutable and served again from the same snapshot, and of each listing entry,
whose header summary the service hands over as the same object page after page.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections import OrderedDict
from datetime import datetime
from typing import Any

import pydantic_core

from ..events import Event, Slice
from ..events import iso as unix_iso
from ..mail import Address, AttachmentInfo, HeaderSummary, ParsedMessage
from ..service import CheckResult, DeleteResult, Page, Stats, Summary, encode_id

#: Rendered pages kept at most.
MAX_RENDERINGS = 4096
#: Rendered listing entries kept at most, and what they may weigh together (bytes of JSON).
MAX_ITEM_RENDERINGS = 20_000
MAX_ITEM_BYTES = 16 * 1024 * 1024


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON (pydantic's serializer: the same text as ``json.dumps`` with
    ``ensure_ascii=False`` and compact separators, several times faster on listing pages)."""
    return pydantic_core.to_json(data)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def address(value: Address) -> dict[str, str | None]:
    return {"name": value.name, "address": value.address}


def header_fields(summary: HeaderSummary | ParsedMessage) -> dict[str, Any]:
    """The header fields of a listing entry (and of a parsed message)."""
    return {
        "subject": summary.subject,
        "from": None if summary.from_ is None else address(summary.from_),
        "to": [address(a) for a in summary.to],
        "cc": [address(a) for a in summary.cc],
        "reply_to": [address(a) for a in summary.reply_to],
        "date": summary.date,
        "message_id": summary.message_id,
        "in_reply_to": summary.in_reply_to,
        "content_type": summary.content_type,
    }


#: A listing entry whose headers the server would not give (TOP refused).
_NO_HEADERS = header_fields(HeaderSummary())


def summary(item: Summary) -> dict[str, Any]:
    data: dict[str, Any] = {"id": encode_id(item.uid), "uid": item.uid, "size": item.size}
    data.update(_NO_HEADERS if item.headers is None else header_fields(item.headers))
    return data


#: JSON string literal of a str, escaped as ``dumps`` escapes it (``"``, ``\\`` and the C0
#: controls, nothing else: the text stays UTF-8). The standard library's C encoder.
_quoted = json.encoder.encode_basestring


def _address_json(value: Address) -> str:
    name = value.name
    return (
        '{"name":'
        + ("null" if name is None else _quoted(name))
        + ',"address":'
        + _quoted(value.address)
        + "}"
    )


def _text_json(value: str | None) -> str:
    return "null" if value is None else _quoted(value)


def summary_json(item: Summary) -> bytes:
    """``dumps(summary(item))``, the same bytes, written directly: a cold listing renders
    every entry once, and building its dicts for the serializer cost more than the
    serializing (``tests/api/test_serializers.py`` holds the two together). Text that
    is no valid Unicode (a lone surrogate) goes the serializer's way, which refuses it as
    it always did."""
    headers = item.headers
    if headers is None:
        return dumps(summary(item))
    from_ = headers.from_
    text = "".join(
        (
            '{"id":"',
            encode_id(item.uid),
            '","uid":',
            _quoted(item.uid),
            ',"size":',
            str(int(item.size)),
            ',"subject":',
            _text_json(headers.subject),
            ',"from":',
            "null" if from_ is None else _address_json(from_),
            ',"to":[',
            ",".join([_address_json(a) for a in headers.to]),
            '],"cc":[',
            ",".join([_address_json(a) for a in headers.cc]),
            '],"reply_to":[',
            ",".join([_address_json(a) for a in headers.reply_to]),
            '],"date":',
            _text_json(headers.date),
            ',"message_id":',
            _text_json(headers.message_id),
            ',"in_reply_to":',
            _text_json(headers.in_reply_to),
            ',"content_type":',
            _quoted(headers.content_type),
            "}",
        )
    )
    try:
        return text.encode()
    except UnicodeEncodeError:
        return dumps(summary(item))


def event(value: Event) -> dict[str, Any]:
    """An event as the feed, the stream and webhooks send it."""
    return {
        "id": value.id,
        "type": value.kind,
        "mailbox": value.mailbox,
        "cursor": str(value.cursor),
        "timestamp": unix_iso(value.at),
        "data": value.data,
    }


def event_page(mailbox: str, value: Slice, durable: bool) -> dict[str, Any]:
    return {
        "mailbox": mailbox,
        "events": [event(e) for e in value.events],
        "next_cursor": str(value.last),
        "has_more": value.more,
        "durable": durable,
    }


def attachment_info(info: AttachmentInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "filename": info.filename,
        "content_type": info.content_type,
        "size": info.size,
        "disposition": info.disposition,
        "content_id": info.content_id,
    }


def parsed_message(message: ParsedMessage) -> dict[str, Any]:
    """A parsed message's fields (the caller adds ``id``, ``uid`` and ``size``)."""
    out = header_fields(message)
    out.update(
        references=list(message.references),
        headers=[{"name": name, "value": value} for name, value in message.headers],
        text=message.text,
        html=message.html,
        attachments=[attachment_info(a) for a in message.attachments],
        defects=list(message.defects),
    )
    return out


def stats(mailbox: str, value: Stats) -> dict[str, Any]:
    return {
        "mailbox": mailbox,
        "messages": value.messages,
        "octets": value.octets,
        "snapshot_at": iso(value.snapshot_at),
        "capabilities": value.capabilities,
    }


def page(value: Page) -> dict[str, Any]:
    return {
        "messages": [summary(item) for item in value.items],
        "total": value.total,
        "next_cursor": value.next_cursor,
        "snapshot_at": iso(value.snapshot_at),
    }


def page_etag(value: Page) -> str:
    digest = hashlib.sha256(
        "".join([f"{item.uid}\0{item.size}\0" for item in value.items]).encode("latin-1")
    )
    digest.update(f"{value.total}\0{value.next_cursor}".encode())
    return f'"{digest.hexdigest()[:32]}"'


def delete_result(result: DeleteResult) -> dict[str, Any]:
    return {
        "deleted": [encode_id(uid) for uid in result.deleted],
        "not_found": [encode_id(uid) for uid in result.not_found],
    }


def check_result(result: CheckResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "steps": [
            {"name": s.name, "ok": s.ok, "ms": s.ms, "detail": s.detail} for s in result.steps
        ],
        "capabilities": result.capabilities,
        "messages": result.messages,
        "octets": result.octets,
    }


class ItemRenderings:
    """The JSON of listing entries, each rendered once for as long as its header summary
    lives (the service keeps recent summaries as objects and hands the same one over for
    every page that shows it), and at most ``max_entries`` entries of ``max_bytes`` in
    all, least recently used first out."""

    def __init__(
        self, max_entries: int = MAX_ITEM_RENDERINGS, max_bytes: int = MAX_ITEM_BYTES
    ) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        #: id(headers) -> (a weak reference to them, uid, size, JSON)
        self._done: OrderedDict[int, tuple[weakref.ref[HeaderSummary], str, int, bytes]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._done)

    @property
    def weight(self) -> int:
        """Bytes of JSON kept now."""
        return self._bytes

    def render(self, item: Summary) -> bytes:
        """``dumps(summary(item))``, from what was rendered before when it can be."""
        headers = item.headers
        if headers is None:
            return summary_json(item)
        key = id(headers)
        done = self._done
        found = done.get(key)
        if (
            found is not None
            and found[0]() is headers
            and found[1] == item.uid
            and found[2] == item.size
        ):
            done.move_to_end(key)
            return found[3]
        body = summary_json(item)
        if found is not None:
            self._forget(key)
        ref = weakref.ref(headers, lambda dead: self._collected(key, dead))
        done[key] = (ref, item.uid, item.size, body)
        self._bytes += len(body)
        while len(done) > self._max or self._bytes > self._max_bytes:
            self._forget(next(iter(done)))
        return body

    def _forget(self, key: int) -> None:
        found = self._done.pop(key, None)
        if found is not None:
            self._bytes -= len(found[3])

    def _collected(self, key: int, dead: weakref.ref[HeaderSummary]) -> None:
        found = self._done.get(key)
        if found is not None and found[0] is dead:
            self._forget(key)


class PageRenderings:
    """ETag and JSON body of pages already rendered, for as long as the service keeps the
    page and at most ``max_entries`` of them: an entry goes when its page is collected (a
    page the service did not keep is rendered for its one answer and forgotten), so the
    renderings never hold more than the pages themselves do. A page's body is put together
    from the JSON of its entries (:class:`ItemRenderings`): the same text as
    ``dumps(page(value))``."""

    def __init__(
        self, max_entries: int = MAX_RENDERINGS, items: ItemRenderings | None = None
    ) -> None:
        self._max = max_entries
        self._done: OrderedDict[int, tuple[weakref.ref[Page], str, bytes]] = OrderedDict()
        self.items = ItemRenderings() if items is None else items

    def __len__(self) -> int:
        return len(self._done)

    def render(self, value: Page) -> tuple[str, bytes]:
        key = id(value)
        found = self._done.get(key)
        if found is not None and found[0]() is value:
            self._done.move_to_end(key)
            return found[1], found[2]
        etag, body = page_etag(value), self._body(value)
        ref = weakref.ref(value, lambda dead: self._collected(key, dead))
        self._done[key] = (ref, etag, body)
        self._done.move_to_end(key)
        while len(self._done) > self._max:
            self._done.popitem(last=False)
        return etag, body

    def _body(self, value: Page) -> bytes:
        render = self.items.render
        rest = dumps(
            {
                "total": value.total,
                "next_cursor": value.next_cursor,
                "snapshot_at": iso(value.snapshot_at),
            }
        )
        return b"".join(
            (b'{"messages":[', b",".join([render(item) for item in value.items]), b"],", rest[1:])
        )

    def _collected(self, key: int, dead: weakref.ref[Page]) -> None:
        found = self._done.get(key)
        if found is not None and found[0] is dead:
            del self._done[key]
