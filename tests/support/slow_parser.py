"""A misbehaving parse worker for tests: ``python -m tests.support.slow_parser MODE``,
speaking the wire format of :mod:`gateway.mail.worker` (and taking its
``--memory-limit N``).

Modes: ``stall`` reads a job and never answers; ``exit`` reads a job and exits;
``huge`` answers a length far past any cap; ``lie:KIND`` answers ``O`` with a payload that
is not a parse result (``garbage``: bytes that are no pickle; ``foreign``: a pickle of a
class no result has), or ``E`` with a reason that is not a word (``error``); ``delay:S``
answers each job like the real worker, S seconds late.
"""

from __future__ import annotations

import collections
import pickle
import sys
import time

from gateway.mail import worker


def main(argv: list[str]) -> int:
    mode = argv[0]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(worker.JOB_HEAD.size)
        if len(head) < worker.JOB_HEAD.size:
            return 0
        op, aid_length, length = worker.JOB_HEAD.unpack(head)
        aid = stdin.read(aid_length).decode()
        message = stdin.read(length)
        if mode == "stall":
            time.sleep(3600)
        elif mode == "exit":
            return 3
        elif mode.startswith("lie:"):
            kind = mode.partition(":")[2]
            payload = {
                "garbage": b"\x80\x05not a pickle",
                "foreign": pickle.dumps(collections.OrderedDict(a=1)),
                "error": b"Subject: what the message said\r\n" * 100,
            }[kind]
            status = b"E" if kind == "error" else b"O"
            stdout.write(worker.ANSWER_HEAD.pack(status, len(payload)) + payload)
            stdout.flush()
        elif mode == "huge":
            stdout.write(worker.ANSWER_HEAD.pack(b"O", 1 << 40))
            stdout.flush()
        else:
            time.sleep(float(mode.partition(":")[2]))
            status, payload = worker._answer(op, aid, message)
            stdout.write(worker.ANSWER_HEAD.pack(status, len(payload)) + payload)
            stdout.flush()


def command(mode: str) -> list[str]:
    """The command line of a worker in ``mode`` (for ``ParseWorkers(command=...)``)."""
    return [sys.executable, "-m", "tests.support.slow_parser", mode]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
