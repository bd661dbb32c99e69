"""Public message ids and listing cursors.

An id is the base64url (no padding) of a UIDL unique-id's bytes, so every unique-id RFC 1939
allows is URL-safe. A cursor names the last item of a page (unique-id and message number)
and the listing's order, sealed for one mailbox (:class:`Cursors`); it is opaque to clients
and checked strictly when it comes back.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Literal

from .errors import InvalidInputError, MessageNotFoundError

Order = Literal["desc", "asc"]

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{2,100}$")
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_CURSOR_VERSION = 2
_ORDERS: tuple[Order, Order] = ("desc", "asc")
_MAC_SIZE = 16
#: Longest unique-id a cursor carries (longer ones: the page resumes by message number).
MAX_CURSOR_UID = 100
#: Longest cursor accepted (the API refuses longer ones before they get here).
MAX_CURSOR = 200


def encode_id(uid: str) -> str:
    """The URL-safe id of a unique-id: base64url of its bytes, without padding."""
    return base64.urlsafe_b64encode(uid.encode("latin-1")).rstrip(b"=").decode("ascii")


def decode_id(message_id: str) -> str:
    """The unique-id behind an id; :class:`InvalidInputError` unless it is canonical."""
    if not _ID_RE.fullmatch(message_id):
        raise InvalidInputError("a message id is 2-100 characters of A-Z a-z 0-9 - _")
    try:
        raw = base64.urlsafe_b64decode(message_id + "=" * (-len(message_id) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInputError("the message id is not valid base64url") from None
    uid = raw.decode("latin-1")
    if not raw or encode_id(uid) != message_id:
        # Well-formed but not an id this service hands out: no message has it.
        raise MessageNotFoundError("no message with that id in the mailbox")
    return uid


class Cursors:
    """Listing cursors, sealed with a MAC keyed by the server secret and bound to the
    mailbox they were made for: one from another mailbox (or made up) is refused.

    A cursor is base64url (no padding) of: a version octet, the order, the last item's
    message number (4 octets) and unique-id (left out when longer than
    :data:`MAX_CURSOR_UID`: the page then resumes after the number), and 16 octets of
    HMAC-SHA256 over the mailbox binding and all of that.
    """

    def __init__(self, key: bytes) -> None:
        # a key of its own, derived from the server secret
        self._key = hmac.new(key, b"pop3gw listing cursor v2", "sha256").digest()

    def _mac(self, mailbox: bytes, payload: bytes) -> bytes:
        return hmac.new(self._key, mailbox + b"\0" + payload, "sha256").digest()[:_MAC_SIZE]

    def encode(self, mailbox: bytes, order: Order, uid: str, number: int) -> str:
        """A cursor for the page after ``(uid, number)`` of ``mailbox`` (an opaque binding
        the caller derives from the account) in ``order``."""
        raw_uid = uid.encode("latin-1")
        if len(raw_uid) > MAX_CURSOR_UID:
            raw_uid = b""
        payload = bytes((_CURSOR_VERSION, _ORDERS.index(order))) + number.to_bytes(4, "big")
        payload += raw_uid
        sealed = payload + self._mac(mailbox, payload)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def decode(self, mailbox: bytes, cursor: str, order: Order) -> tuple[str | None, int]:
        """The (unique-id or None, message number) a cursor names; :class:`InvalidInputError`
        for a cursor this service did not issue for ``mailbox``, or one of a listing in the
        other order."""
        invalid = InvalidInputError("the cursor is not one this service issued for this mailbox")
        if not _CURSOR_RE.fullmatch(cursor):
            raise invalid
        try:
            sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise invalid from None
        payload, mac = sealed[:-_MAC_SIZE], sealed[-_MAC_SIZE:]
        if len(payload) < 6 or not hmac.compare_digest(mac, self._mac(mailbox, payload)):
            raise invalid
        if payload[0] != _CURSOR_VERSION or payload[1] >= len(_ORDERS):
            raise invalid
        if _ORDERS[payload[1]] != order:
            raise InvalidInputError("the cursor belongs to a listing in the other order")
        uid = payload[6:].decode("latin-1") or None
        return uid, int.from_bytes(payload[2:6], "big")
