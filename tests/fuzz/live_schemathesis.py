"""schemathesis against a live ``pop3gw serve`` in front of Dovecot, at fuzzing scale.

    python -m tests.fuzz.live_schemathesis [--examples N] [--min-cases 1000]

The approach of tests/api/test_schemathesis.py (its checked-in configuration included), with
``--max-examples`` large enough for at least ``--min-cases`` generated test cases, every check
on. Exits non-zero on any failure (a 5xx, a response the contract does not document, a
schema violation), when fewer cases than ``--min-cases`` were generated, or when a message
other than the sacrificial one was lost. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.config import PoolSettings
from gateway.mail import parse_message
from tests.support.corpus import generate_corpus, simple_message
from tests.support.dovecot import Dovecot, DovecotUser, free_port

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN_CONFIG = ROOT / "tests" / "api" / "schemathesis.toml"
SACRIFICE = simple_message(99)
#: The message DELETE is given, so that the others live longer.
DELETE_TARGET = simple_message(98)
KEEP = [simple_message(i) for i in range(5)]
#: A message with attachments for the attachment operation; sacrificial too.
WITH_ATTACHMENTS = next(m.raw for m in generate_corpus(1) if m.name == "mixed-attachments")


@contextmanager
def live_gateway(dovecot: Dovecot, log_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "POP3GW_DEFAULT_UPSTREAM": f"pop3://127.0.0.1:{dovecot.port}",
        "POP3GW_LISTEN": f"127.0.0.1:{port}",
        "POP3GW_PRESETS": "false",
        "POP3GW_LOG__LEVEL": "WARNING",
    }
    if "max_failed_logins" in PoolSettings.model_fields:
        # schemathesis sends wrong credentials on purpose, hundreds of times, and expects 401
        # each time: a gateway that stops trying after a few failures answers 429 instead.
        # The limit is raised so that the fuzzer keeps reaching the login path
        # (tests/security/test_login_throttling.py checks the throttle itself).
        env["POP3GW_POOL__MAX_FAILED_LOGINS"] = "1000"
    if "client_failed_login_burst" in PoolSettings.model_fields:
        # the same for the failed-login budgets of the fuzzer's one address and upstream
        env["POP3GW_POOL__CLIENT_FAILED_LOGIN_BURST"] = "1000000"
        env["POP3GW_POOL__UPSTREAM_FAILED_LOGIN_BURST"] = "1000000"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=env, stderr=log, cwd=ROOT
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("pop3gw serve did not start")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def config_with_real_ids(base: str, user: DovecotUser, target: Path) -> Path:
    """The checked-in configuration plus real ids: a sacrificial message for the GET message
    operations, the message with attachments and its first attachment for the attachment
    operation, a third one for DELETE. schemathesis shares parameter values across
    operations, so it may DELETE any of them; every other message must survive."""
    basic = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    request = urllib.request.Request(
        base + "/v1/mailboxes/me/messages?limit=3", headers={"Authorization": "Basic " + basic}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        delete_target, newest, second = (m["id"] for m in json.load(resp)["messages"])
    attachment = parse_message(WITH_ATTACHMENTS).attachments[0].id
    # Entries match operations by path prefix, and an earlier entry's parameters win over a
    # later one's (listed after the message entry, the attachment entry got its id): the
    # longest paths come first.
    entries = [
        (
            "/v1/mailboxes/{mailbox}/messages/{id}/attachments/{attachment}",
            "GET",
            f'id = "{second}", mailbox = "me", attachment = "{attachment}"',
        ),
        ("/v1/mailboxes/{mailbox}/messages/{id}/raw", "GET", f'id = "{newest}", mailbox = "me"'),
        (
            "/v1/mailboxes/{mailbox}/messages/{id}",
            "DELETE",
            f'id = "{delete_target}", mailbox = "me"',
        ),
        ("/v1/mailboxes/{mailbox}/messages/{id}", "GET", f'id = "{newest}", mailbox = "me"'),
    ]
    text = "".join(
        f'[[operations]]\ninclude-path = "{path}"\ninclude-method = "{method}"\n'
        f"parameters = {{ {parameters} }}\n\n"
        for path, method, parameters in entries
    )
    text += CHECKED_IN_CONFIG.read_text()
    target.write_text(text)
    return target


def generated_cases(output: str) -> int:
    """The number of test cases schemathesis reports it generated."""
    found = re.findall(r"(\d[\d,]*) generated", output)
    if not found:
        raise SystemExit("cannot find the number of generated test cases in the output")
    return int(found[-1].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=150, help="--max-examples per operation")
    parser.add_argument("--min-cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args(argv)
    with Dovecot() as dovecot, tempfile.TemporaryDirectory(prefix="pop3gw-st-") as tmp:
        user = dovecot.new_user()
        user.deliver_many([*KEEP, WITH_ATTACHMENTS])
        user.deliver(SACRIFICE)  # the ids of the newest three are given to the fuzzer
        user.deliver(DELETE_TARGET)
        work = Path(tmp)
        with live_gateway(dovecot, work / "gateway.log") as base:
            config = config_with_real_ids(base, user, work / "schemathesis.toml")
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(config),
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "--auth",
                f"{user.name}:{user.password}",
                "--max-examples",
                str(args.examples),
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                str(args.seed),
                "--request-timeout",
                "30",
            ]
            started = time.monotonic()
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=3600, check=False, cwd=work
            )
            elapsed = time.monotonic() - started
        gateway_log = (work / "gateway.log").read_text(errors="replace")
        left = user.messages()
    print(result.stdout[-6000:])
    if result.stderr.strip():
        print(result.stderr[-2000:], file=sys.stderr)
    cases = generated_cases(result.stdout)
    lost = [i for i, raw in enumerate(KEEP) if raw not in left]
    errors = [line for line in gateway_log.splitlines() if '"level": "error"' in line]
    print(
        f"schemathesis: {cases:,} test cases generated in {elapsed:.0f} s, exit {result.returncode}"
    )
    print(f"gateway: {len(errors)} error log line(s); messages lost: {lost or 'none'}")
    for line in errors[:20]:
        # the start says where, the end says what (a traceback's last line)
        print("  " + (line if len(line) <= 900 else line[:400] + " ... " + line[-500:]))
    failed = result.returncode != 0 or cases < args.min_cases or bool(lost)
    if cases < args.min_cases:
        print(f"FAIL: fewer than {args.min_cases:,} test cases: raise --examples")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
