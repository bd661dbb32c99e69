"""Spooling a message to a bounded temporary file, so that its POP3 session is released at
upstream speed, whatever the speed of the client that asked for it.

A :class:`Spool` lends :class:`SpoolFile` reservations against one process-wide byte budget
(``max_bytes``). A reservation is sized before the transfer, from the size the server
listed plus a margin (servers count line ends their own way); a message that turns out
larger than its reservation is not spooled further (the caller streams the rest from the
session). When the budget cannot cover a reservation, :meth:`Spool.reserve` answers
``None``, and the caller streams straight from the session (bounded by its send timeout).

Up to ``memory_bytes`` of a file stay in memory; beyond, it rolls over to an unnamed file
in ``directory`` (the system's temporary directory by default), mode 0600, gone when it is
closed or the process ends. Memory and disk together never exceed the budget. Writes and
reads are plain file calls on the event loop: chunks of 64 KiB into the page cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from types import TracebackType

#: bytes read back per chunk
READ_CHUNK = 64 * 1024
#: what a file may hold beyond its listed size: 1/8 more (a server that counts LF where it
#: sends CRLF), and 64 KiB for the smallest
MARGIN_MIN = 64 * 1024


def spool_limit(listed_size: int) -> int:
    """The most bytes a message listed at ``listed_size`` may spool."""
    return max(0, listed_size) + max(0, listed_size) // 8 + MARGIN_MIN


class Spool:
    """A process-wide budget of bytes held in spool files (``max_bytes=0``: no spooling)."""

    def __init__(
        self,
        max_bytes: int,
        *,
        memory_bytes: int = 1024 * 1024,
        directory: str | None = None,
    ) -> None:
        if max_bytes < 0 or memory_bytes < 0:
            raise ValueError("spool sizes must not be negative")
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.directory = directory
        self._reserved = 0
        self._written = 0
        self._files = 0

    @property
    def reserved(self) -> int:
        """Bytes of the budget reserved by open spool files."""
        return self._reserved

    @property
    def written(self) -> int:
        """Bytes held in open spool files now."""
        return self._written

    @property
    def files(self) -> int:
        """Spool files open now."""
        return self._files

    def reserve(self, listed_size: int) -> SpoolFile | None:
        """A spool file for a message listed at ``listed_size`` bytes, or ``None`` when the
        budget cannot cover it now."""
        limit = spool_limit(listed_size)
        if self._reserved + limit > self.max_bytes:
            return None
        self._reserved += limit
        self._files += 1
        return SpoolFile(self, limit)

    def _freed(self, limit: int, written: int) -> None:
        self._reserved -= limit
        self._written -= written
        self._files -= 1


class SpoolFile:
    """One message's bytes, written once, then read back in chunks; closing it (a context
    manager) deletes the file and gives its reservation back."""

    def __init__(self, spool: Spool, limit: int) -> None:
        self._spool = spool
        self.limit = limit
        self.size = 0
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=spool.memory_bytes, dir=spool.directory
        )
        self._closed = False

    def write(self, chunk: bytes) -> bool:
        """Append ``chunk`` if it fits within the reservation; ``False`` (nothing written)
        if it does not."""
        if self.size + len(chunk) > self.limit:
            return False
        self._file.write(chunk)
        self.size += len(chunk)
        self._spool._written += len(chunk)
        return True

    async def chunks(self) -> AsyncIterator[bytes]:
        """What was written, from the start, in chunks of up to 64 KiB."""
        self._file.seek(0)
        while chunk := self._file.read(READ_CHUNK):
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()
        self._spool._freed(self.limit, self.size)

    def __enter__(self) -> SpoolFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
