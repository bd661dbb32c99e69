"""The maildrop the POP3 server serves: messages in memory, removed only by UPDATE."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import ConnectionRecord

__all__ = ["Mailbox", "Message"]


@dataclass(eq=False)
class Message:
    """One message. Compared by identity, so identical messages and duplicate uids coexist,
    and a session deletes exactly the messages it saw."""

    uid: str
    data: bytes
    list_size: int | None = None
    """What LIST and STAT report; None means the real size (what RETR sends)."""

    def lines(self) -> list[bytes]:
        """The message as lines without their endings (LF or CRLF both end a line)."""
        lines = self.data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return [line.removesuffix(b"\r") for line in lines]

    @property
    def size(self) -> int:
        """Octets RETR transmits with CRLF line endings, before dot-stuffing."""
        return sum(len(line) + 2 for line in self.lines())

    @property
    def crlf_data(self) -> bytes:
        """The message as RETR transmits it (CRLF line endings), before dot-stuffing."""
        return b"".join(line + b"\r\n" for line in self.lines())


class Mailbox:
    """A maildrop shared by all sessions of a server (or by every server given it).

    Only QUIT from the TRANSACTION state removes messages (`update`); `removed` lists what
    was removed, in order. `locked_by` is the session holding the mailbox when the server
    locks mailboxes.
    """

    def __init__(self, messages: Iterable[tuple[str, bytes] | Message] = ()) -> None:
        self.messages: list[Message] = [
            m if isinstance(m, Message) else Message(m[0], m[1]) for m in messages
        ]
        self.removed: list[Message] = []
        self.locked_by: ConnectionRecord | None = None

    def add(self, uid: str, data: bytes, *, list_size: int | None = None) -> Message:
        message = Message(uid, data, list_size)
        self.messages.append(message)
        return message

    def uids(self) -> list[str]:
        return [m.uid for m in self.messages]

    def items(self) -> list[tuple[str, bytes]]:
        return [(m.uid, m.data) for m in self.messages]

    def update(self, deleted: Iterable[Message]) -> int:
        """The UPDATE state: remove `deleted` (those still here); returns how many are left."""
        doomed = {id(m) for m in deleted}
        kept: list[Message] = []
        for message in self.messages:
            (self.removed if id(message) in doomed else kept).append(message)
        self.messages[:] = kept
        return len(kept)

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uids()!r})"
