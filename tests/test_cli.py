"""The ``pop3gw`` command: version, check-config, serve with bad config, and the demo."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway
from tests.support.dovecot import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:demo").decode()}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pop3gw {gateway.__version__}"


def test_one_version_everywhere() -> None:
    """The package, the CLI, both copies of the contract and the image tag say the same."""
    assert importlib.metadata.version("pop3gw") == gateway.__version__
    for path in ("openapi/openapi.yaml", "gateway/contract/openapi.yaml"):
        info = yaml.safe_load((ROOT / path).read_text())["info"]
        assert info["version"] == gateway.__version__, path
    kustomization = yaml.safe_load((ROOT / "deploy/base/kustomization.yaml").read_text())
    assert {image["newTag"] for image in kustomization["images"]} == {gateway.__version__}


def test_check_config_masks_secrets() -> None:
    result = run(
        "check-config",
        env={
            "POP3GW_MAILBOXES": json.dumps(
                [
                    {
                        "id": "box",
                        "upstream": "pop3s://pop.example.com",
                        "user": "u",
                        "password": "hunter2",
                    }
                ]
            ),
            "POP3GW_REDIS_URL": "redis://:redispass@127.0.0.1:6379/0",
            "POP3GW_CACHE_SECRET": "cachesecret",
        },
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["mailboxes"][0]["user"] == "u"
    for secret in ("hunter2", "redispass", "cachesecret"):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_bad_config_stops_the_start() -> None:
    for command in ("serve", "check-config"):
        result = run(command, env={"POP3GW_LISTEN": "not-a-port"})
        assert result.returncode == 2
        assert "listen" in result.stderr


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def demo() -> Iterator[str]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--listen", f"127.0.0.1:{port}"],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(base + "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("pop3gw demo did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise
    assert proc.returncode == 0
    assert f"curl -u demo:demo {base}/v1/mailboxes/me/messages" in out


def test_demo_answers_at_once(demo: str) -> None:
    status, _headers, body = get(demo + "/v1/mailboxes/me/messages", DEMO_AUTH)
    assert status == 200
    page: dict[str, Any] = json.loads(body)
    assert page["total"] >= 5
    subjects = [m["subject"] for m in page["messages"]]
    assert any(s and not s.isascii() for s in subjects)
    with_attachment = [m for m in page["messages"] if m["content_type"] == "multipart/mixed"]
    assert with_attachment
    status, _, body = get(f"{demo}/v1/mailboxes/me/messages/{with_attachment[0]['id']}", DEMO_AUTH)
    assert status == 200
    message = json.loads(body)
    assert message["attachments"]
    status, _, _ = get(demo + "/v1/mailboxes/me/messages", {"Authorization": "Basic eDp5"})
    assert status == 401
    status, headers, body = get(demo + "/docs")
    assert status == 200
    assert "text/html" in headers["Content-Type"]
    status, _, body = get(demo + "/openapi.json")
    assert json.loads(body)["openapi"].startswith("3.1")
