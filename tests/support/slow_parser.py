"""A misbehaving parse worker for tests: ``python -m tests.support.slow_parser MODE``,
speaking the wire format of :mod:`gateway.mail.worker` (and taking its
``--memory-limit N``).

Modes: ``stall`` reads a job and never answers; ``exit`` reads a job and exits;
``huge`` answers a length far past any cap; ``delay:S`` answers each job like the real
worker, S seconds late.
"""

from __future__ import annotations

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
