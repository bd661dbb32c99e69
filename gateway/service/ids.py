"""Public message ids and listing cursors.

An id is the base64url (no padding) of a UIDL unique-id's bytes, so every unique-id RFC 1939
allows is URL-safe. A cursor names the last item of a page (unique-id and message number)
and the listing's order; it is opaque to clients and checked strictly when it comes back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Literal

from .errors import InvalidInputError, MessageNotFoundError

Order = Literal["desc", "asc"]

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{2,100}$")
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_CURSOR_VERSION = 1
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


def encode_cursor(order: Order, uid: str, number: int) -> str:
    data = json.dumps({"v": _CURSOR_VERSION, "o": order, "u": uid, "n": number}).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, order: Order) -> tuple[str, int]:
    """The (unique-id, message number) a cursor names; :class:`InvalidInputError` for a
    cursor this service did not issue, or one of a listing in the other order."""
    invalid = InvalidInputError("the cursor is not one this service issued")
    if not _CURSOR_RE.fullmatch(cursor):
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _CURSOR_VERSION
        or not isinstance(data.get("u"), str)
        or not isinstance(data.get("n"), int)
        or isinstance(data.get("n"), bool)
        # A unique-id comes from a whitespace-split UIDL line: never a control character.
        or not data["u"]
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in data["u"])
    ):
        raise invalid
    if data.get("o") != order:
        raise InvalidInputError("the cursor belongs to a listing in the other order")
    return data["u"], data["n"]
