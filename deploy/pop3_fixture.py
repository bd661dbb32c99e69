"""A throwaway Dovecot with one seeded mailbox, for deploy/check.sh's container test.

    .venv/bin/python deploy/pop3_fixture.py [MESSAGES]

Starts Dovecot with the test harness (tests/support/dovecot.py: 127.0.0.1 only, free
ports, its own temporary directory), adds a user with a random password, delivers
MESSAGES (default 3) messages, then prints one JSON line
{"host", "port", "user", "password", "messages"} and keeps Dovecot running until it gets
SIGTERM or SIGINT, or its parent process dies; then it stops Dovecot and removes its files.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot

PR_SET_PDEATHSIG = 1


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # SIGTERM when the parent (the check script) dies, even by SIGKILL: no Dovecot is left.
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        return 1
    with Dovecot() as dovecot:
        user = dovecot.new_user("deploycheck")
        user.deliver_many([simple_message(i) for i in range(count)])
        line = {
            "host": dovecot.host,
            "port": dovecot.port,
            "user": user.name,
            "password": user.password,
            "messages": count,
        }
        print(json.dumps(line), flush=True)
        while not stop.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
