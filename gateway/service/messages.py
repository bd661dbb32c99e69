"""Reading one message: parsed, as the raw bytes the server holds, or one attachment.

Invariant 1 (README, Invariants) is kept here: an id is resolved to a message number inside
the session that uses the number.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..accounts import Account
from ..mail import Attachment, ParsedMessage, find_attachment, parse_message
from ..pop3 import POP3ResponseTooLargeError
from .errors import InvalidInputError, MessageNotFoundError, MessageTooLargeError
from .ids import decode_id
from .listing import SnapshotCache
from .sessions import SessionSource

_ATTACHMENT_ID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: The attachment ids the parser can hand out: parts are numbered below 10,000, nested at
#: most 32 deep. A well-formed id beyond that names no attachment.
_KNOWN_ATTACHMENT_ID = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4}){0,31}")


def check_attachment_id(attachment_id: str) -> str:
    """``attachment_id`` if it can name an attachment (the one rule for it):
    :class:`InvalidInputError` if it is malformed, :class:`MessageNotFoundError` if no
    message can have it."""
    if not _ATTACHMENT_ID.fullmatch(attachment_id):
        raise InvalidInputError("an attachment id looks like 2 or 1.3")
    if not _KNOWN_ATTACHMENT_ID.fullmatch(attachment_id):
        raise MessageNotFoundError("no attachment with that id in the message")
    return attachment_id


@dataclass(frozen=True)
class FullMessage:
    uid: str
    size: int
    parsed: ParsedMessage


@dataclass(frozen=True)
class RawMessage:
    uid: str
    chunks: AsyncIterator[bytes]


class Messages:
    """One message at a time; parsing is capped at ``max_parse_bytes`` (larger messages are
    served raw only)."""

    def __init__(
        self, sessions: SessionSource, snapshots: SnapshotCache, *, max_parse_bytes: int
    ) -> None:
        self._sessions = sessions
        self._snapshots = snapshots
        self.max_parse_bytes = max_parse_bytes

    async def exists(self, account: Account, message_id: str) -> bool:
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await self._snapshots.snapshot(session)
            return uid in snap.by_uid

    async def get(self, account: Account, message_id: str) -> FullMessage:
        uid = decode_id(message_id)
        raw = await self._retr_capped(account, uid)
        return FullMessage(uid, len(raw), parse_message(raw))

    @contextlib.asynccontextmanager
    async def open_raw(self, account: Account, message_id: str) -> AsyncIterator[RawMessage]:
        """The message bytes as the server holds them, as a flow of chunks (flat memory)."""
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await self._snapshots.snapshot(session)
            number = snap.number_of(uid)
            async with session.client.retr_stream(number) as chunks:
                yield RawMessage(uid, chunks)

    async def attachment(self, account: Account, message_id: str, attachment_id: str) -> Attachment:
        uid = decode_id(message_id)
        check_attachment_id(attachment_id)
        found = find_attachment(await self._retr_capped(account, uid), attachment_id)
        if found is None:
            raise MessageNotFoundError("no attachment with that id in the message")
        return found

    async def _retr_capped(self, account: Account, uid: str) -> bytes:
        """RETR of ``uid``, refused before and during the transfer past the parse cap."""
        async with self._sessions.lease(account) as session:
            snap = await self._snapshots.snapshot(session)
            number = snap.number_of(uid)
            size = snap.sizes[number]
            if size > self.max_parse_bytes:
                raise MessageTooLargeError(size, self.max_parse_bytes)
            try:
                return await session.client.retr(number, max_bytes=self.max_parse_bytes)
            except POP3ResponseTooLargeError:
                raise MessageTooLargeError(None, self.max_parse_bytes) from None
