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
from ..mail import Attachment, ParsedMessage
from ..pop3 import POP3ResponseTooLargeError
from .errors import InvalidInputError, MessageNotFoundError, MessageTooLargeError
from .ids import decode_id
from .listing import SnapshotCache
from .parsing import MessageParser, ParsedCache
from .sessions import Session, SessionObserver, SessionSource
from .spool import Spool, SpoolFile

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
    #: whether the whole message is in a spool file (its session is back in the pool);
    #: if not, ``chunks`` reads from a session held until the block ends
    spooled: bool = False


class Messages:
    """One message at a time; parsing is capped at ``max_parse_bytes`` (larger messages are
    served raw only), done by ``parser`` (off the event loop when it has workers) and kept
    by mailbox namespace + unique-id (``key`` makes the namespace)."""

    def __init__(
        self,
        sessions: SessionSource,
        snapshots: SnapshotCache,
        *,
        key: bytes,
        max_parse_bytes: int,
        parser: MessageParser | None = None,
        spool: Spool | None = None,
        observer: SessionObserver | None = None,
    ) -> None:
        self._sessions = sessions
        self._snapshots = snapshots
        self._key = key
        self.max_parse_bytes = max_parse_bytes
        self.parser = parser or MessageParser(None, ParsedCache(0, 0))
        self._spool = spool
        self._observer = observer

    async def exists(self, account: Account, message_id: str) -> bool:
        uid = decode_id(message_id)
        async with self._sessions.lease(account) as session:
            snap = await self._snapshots.snapshot(session)
            return uid in snap.by_uid

    async def get(self, account: Account, message_id: str) -> FullMessage:
        """The message parsed: from the parsed cache, from a parse of it under way for
        another request, or fetched and parsed now (in that order; the message's presence
        is checked in a session every time, so a deleted message is never served)."""
        uid = decode_id(message_id)
        key = (account.namespace(self._key), uid)
        parser = self.parser
        for _ in range(2):
            async with self._sessions.lease(account) as session:
                snap = await self._snapshots.snapshot(session)
                number = snap.number_of(uid)
                found = parser.cached(key)
                if found is not None:
                    return FullMessage(uid, found.size or snap.sizes[number], found)
                raw = None
                if not parser.in_flight(key):
                    raw = await self._retr_number(session, number, snap.sizes[number])
            if raw is not None:
                return FullMessage(uid, len(raw), await parser.parse(key, raw))
            found = await parser.join(key)
            if found is not None:
                return FullMessage(uid, found.size or 0, found)
            # that parse ended before it could be joined: fetch it here (once more)
        raise MessageNotFoundError("the message changed while it was read; try again")

    @contextlib.asynccontextmanager
    async def open_raw(self, account: Account, message_id: str) -> AsyncIterator[RawMessage]:
        """The message bytes as the server holds them, as a flow of chunks (flat memory).

        With a spool, the message is read at upstream speed into a spool file and the
        session goes back to the pool before the block starts: a client that stops reading
        holds a file, never a session. A failure of the RETR is then raised on entering.
        When the spool's budget is spent (or the server sends more than it listed, beyond
        the margin), the chunks come from the session, held until the block ends."""
        uid = decode_id(message_id)
        with contextlib.ExitStack() as files:
            async with self._sessions.lease(account) as session:
                snap = await self._snapshots.snapshot(session)
                number = snap.number_of(uid)
                spooled = None
                if self._spool is not None:
                    spooled = self._spool.reserve(snap.sizes[number])
                    if spooled is None:
                        self._limited("spool-full")
                    else:
                        # Freed however the RETR below ends (-ERR, timeout, cancellation).
                        files.enter_context(spooled)
                async with session.client.retr_stream(number) as chunks:
                    if spooled is None:
                        yield RawMessage(uid, chunks)
                        return
                    rest = await _fill(spooled, chunks)
                    if rest is not None:
                        self._limited("spool-overflow")
                        yield RawMessage(uid, _chain(spooled, rest, chunks))
                        return
            # The session is back in the pool: the client reads the file at its own pace.
            yield RawMessage(uid, spooled.chunks(), spooled=True)

    def _limited(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.limited(reason)

    async def attachment(self, account: Account, message_id: str, attachment_id: str) -> Attachment:
        uid = decode_id(message_id)
        check_attachment_id(attachment_id)
        found = await self.parser.attachment(await self._retr_capped(account, uid), attachment_id)
        if found is None:
            raise MessageNotFoundError("no attachment with that id in the message")
        return found

    async def _retr_capped(self, account: Account, uid: str) -> bytes:
        """RETR of ``uid``, refused before and during the transfer past the parse cap."""
        async with self._sessions.lease(account) as session:
            snap = await self._snapshots.snapshot(session)
            number = snap.number_of(uid)
            return await self._retr_number(session, number, snap.sizes[number])

    async def _retr_number(self, session: Session, number: int, size: int) -> bytes:
        if size > self.max_parse_bytes:
            raise MessageTooLargeError(size, self.max_parse_bytes)
        try:
            return await session.client.retr(number, max_bytes=self.max_parse_bytes)
        except POP3ResponseTooLargeError:
            raise MessageTooLargeError(None, self.max_parse_bytes) from None


async def _fill(file: SpoolFile, chunks: AsyncIterator[bytes]) -> bytes | None:
    """Write ``chunks`` to ``file`` to the end; the first chunk that does not fit, if any
    (the rest stays unread in ``chunks``)."""
    async for chunk in chunks:
        if not file.write(chunk):
            return chunk
    return None


async def _chain(
    file: SpoolFile, rest: bytes, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """What ``file`` holds, then ``rest``, then what is left of ``chunks``."""
    async for chunk in file.chunks():
        yield chunk
    yield rest
    async for chunk in chunks:
        yield chunk
