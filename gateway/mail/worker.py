"""Parsing in a separate process: ``python -m gateway.mail.worker``.

A message is untrusted input; however careful the parser, its work is only bounded, not
small, and under the GIL any work on the event loop stalls every other request. The
service therefore parses whole messages in worker processes that it starts, feeds through
their standard input and output, and kills when a parse takes too long or nobody waits
for it any more (:mod:`gateway.service.parsing`).

The wire format, one job at a time, both ways length-prefixed:

- job: ``op`` (1 byte: ``P`` parse, ``A`` one attachment), the attachment id's length (4
  bytes, big endian), the message's length (8 bytes), the attachment id (ASCII), the
  message;
- answer: ``O`` and a pickle of the result (``ParsedMessage``, or ``Attachment`` / ``None``)
  or ``E`` and a short reason in ASCII (the exception's class name: never message content),
  preceded by the payload's length (8 bytes).

The parent unpickles only what this module wrote from the classes of :mod:`gateway.mail`
(a restricted unpickler, :func:`loads`): a worker that was made to misbehave by a message
can crash or lie about a message, not run code in the gateway.

A worker may be given an address-space limit (``--memory-limit BYTES``): a message that
makes the parser allocate beyond it ends that worker with ``MemoryError`` (answered as
``E``) or kills it, never the gateway. Its OOM score is raised, so that under a container's
memory limit the kernel ends a parser before the gateway.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import resource
import struct
import sys
from typing import BinaryIO

from .message import Attachment, AttachmentInfo, ParsedMessage, find_attachment, parse_message
from .summary import Address

__all__ = ["ANSWER_HEAD", "JOB_HEAD", "OP_ATTACHMENT", "OP_PARSE", "job", "loads", "serve"]

OP_PARSE = b"P"
OP_ATTACHMENT = b"A"
#: op, attachment-id length, message length
JOB_HEAD = struct.Struct(">cIQ")
#: status, payload length
ANSWER_HEAD = struct.Struct(">cQ")

_ALLOWED = {
    ("gateway.mail.message", "ParsedMessage"): ParsedMessage,
    ("gateway.mail.message", "Attachment"): Attachment,
    ("gateway.mail.message", "AttachmentInfo"): AttachmentInfo,
    ("gateway.mail.summary", "Address"): Address,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not a parse result")
        return found


def loads(data: bytes) -> object:
    """A parse result from a worker's answer; only the classes of a result are made."""
    return _Unpickler(io.BytesIO(data)).load()


def job(op: bytes, message: bytes, attachment_id: str = "") -> list[bytes]:
    """The bytes of one job (head and body, to be written in order)."""
    aid = attachment_id.encode("ascii")
    return [JOB_HEAD.pack(op, len(aid), len(message)) + aid, message]


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    parts: list[bytes] = []
    left = size
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _answer(op: bytes, attachment_id: str, message: bytes) -> tuple[bytes, bytes]:
    try:
        if op == OP_PARSE:
            result: object = parse_message(message)
        elif op == OP_ATTACHMENT:
            result = find_attachment(message, attachment_id)
        else:
            return b"E", b"unknown-op"
        return b"O", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        return b"E", b"MemoryError"
    except Exception as exc:  # the parser never raises; if it does, say what, not where
        return b"E", type(exc).__name__.encode("ascii", "replace")


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer jobs until the input ends (the gateway closed the pipe or exited)."""
    while True:
        head = _read_exactly(stdin, JOB_HEAD.size)
        if head is None:
            return 0
        op, aid_length, length = JOB_HEAD.unpack(head)
        aid = _read_exactly(stdin, aid_length)
        message = _read_exactly(stdin, length)
        if aid is None or message is None:
            return 0
        status, payload = _answer(op, aid.decode("ascii", "replace"), message)
        del message
        stdout.write(ANSWER_HEAD.pack(status, len(payload)))
        stdout.write(payload)
        stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--memory-limit":
        limit = int(argv[1])
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Under a container's memory limit, the kernel's OOM killer takes a parser, not the
    # gateway (raising one's own score needs no privilege).
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
        score.write("500")
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
