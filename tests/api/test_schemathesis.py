"""schemathesis against a live ``pop3gw serve`` in front of Dovecot: every generated request
gets an answer the contract documents, and never a server error."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.corpus import simple_message
from tests.support.dovecot import Dovecot, DovecotUser, free_port

pytestmark = pytest.mark.dovecot
HERE = Path(__file__).parent
SACRIFICE = simple_message(99)


@pytest.fixture
def live_gateway(dovecot: Dovecot, dovecot_user: DovecotUser) -> Iterator[str]:
    dovecot_user.deliver_many([simple_message(i) for i in range(5)])
    dovecot_user.deliver(SACRIFICE)  # the newest: the one whose id the fuzzer is given
    port = free_port()
    env = {
        **os.environ,
        "POP3GW_DEFAULT_UPSTREAM": f"pop3://127.0.0.1:{dovecot.port}",
        "POP3GW_LISTEN": f"127.0.0.1:{port}",
        "POP3GW_PRESETS": "false",
        # The fuzzer sends wrong credentials on purpose, many times; the failed-login
        # throttle (tested on its own) would answer 429 to its invalid-auth checks.
        "POP3GW_POOL__MAX_FAILED_LOGINS": "1000",
        # ... and so would the failed-login budgets of its one address and one upstream
        "POP3GW_POOL__CLIENT_FAILED_LOGIN_BURST": "1000000",
        "POP3GW_POOL__UPSTREAM_FAILED_LOGIN_BURST": "1000000",
    }
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
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
                pytest.fail("pop3gw serve did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0


def _config_with_a_real_id(base: str, user: DovecotUser, target: Path) -> Path:
    """The checked-in configuration, plus a real message id so that the fuzzer reaches past
    404. schemathesis shares parameter values across operations, so it may DELETE that
    message: it is a sacrificial one, and every other message must survive."""
    request = urllib.request.Request(
        base + "/v1/mailboxes/me/messages?limit=1",
        headers={"Authorization": "Basic " + _basic(user)},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        real_id = json.load(resp)["messages"][0]["id"]
    text = (HERE / "schemathesis.toml").read_text()
    for path in (
        "/v1/mailboxes/{mailbox}/messages/{id}",
        "/v1/mailboxes/{mailbox}/messages/{id}/raw",
    ):
        text += (
            f'\n[[operations]]\ninclude-path = "{path}"\ninclude-method = "GET"\n'
            f'parameters = {{ id = "{real_id}", mailbox = "me" }}\n'
        )
    target.write_text(text)
    return target


def _basic(user: DovecotUser) -> str:
    return base64.b64encode(f"{user.name}:{user.password}".encode()).decode()


def test_schemathesis_finds_nothing(
    live_gateway: str, dovecot_user: DovecotUser, tmp_path: Path
) -> None:
    examples = os.environ.get("POP3GW_SCHEMATHESIS_EXAMPLES", "25")
    config = _config_with_a_real_id(live_gateway, dovecot_user, tmp_path / "schemathesis.toml")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{live_gateway}/openapi.json",
            "--checks",
            "all",
            "--auth",
            f"{dovecot_user.name}:{dovecot_user.password}",
            "--max-examples",
            examples,
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "20261127",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    assert "generated" in summary
    # Random ids never match real ones: only the message whose id was given may be gone.
    left = dovecot_user.messages()
    assert all(simple_message(i) in left for i in range(5))
