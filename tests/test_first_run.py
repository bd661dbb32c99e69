"""The first hour with pop3gw: configuration that says what is wrong and how to fix it, a
misspelt variable that is reported instead of ignored, and a start-up line that says what
is in effect without a secret in it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from tests.support.dovecot import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POP3GW_"):
            monkeypatch.delenv(name)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_without_a_cache_secret_says_which_variable_and_how_to_make_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url="redis://127.0.0.1:6379/0")
    message = str(caught.value)
    assert "POP3GW_CACHE_SECRET" in message
    assert "python -c 'import secrets; print(secrets.token_urlsafe(32))'" in message


def test_errors_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POP3GW_POOL__MAX_TOTAL", "0")
    with pytest.raises(ConfigError, match=r"pool\.max_total \(POP3GW_POOL__MAX_TOTAL\): "):
        load_settings()


def test_enumerations_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POP3GW_LOG__LEVEL", "debug")
    monkeypatch.setenv("POP3GW_LOG__FORMAT", "Text")
    settings = load_settings(
        mailboxes=[
            {"id": "b", "upstream": "pop3s://pop.example.com", "user": "u", "password": "p"}
            | {"auth": "PLAIN"}
        ],
        api_keys=[{"name": "k", "sha256": "a" * 64, "mailboxes": ["b"], "scopes": ["Read"]}],
    )
    assert (settings.log.level, settings.log.format) == ("DEBUG", "text")
    assert settings.mailboxes[0].auth == "plain"
    assert settings.api_keys[0].scopes == ["read"]


def test_a_misspelt_variable_is_reported_with_the_name_meant() -> None:
    result = run(
        "check-config",
        env={"POP3GW_LISTN": "0.0.0.0:9000", "POP3GW_DEFAULT_UPSTRAEM": "pop3s://pop.example"},
    )
    assert result.returncode == 0, result.stderr
    assert "POP3GW_LISTN is not a pop3gw setting" in result.stderr
    assert "did you mean POP3GW_LISTEN?" in result.stderr
    assert "did you mean POP3GW_DEFAULT_UPSTREAM?" in result.stderr
    assert json.loads(result.stdout)["listen"] == "127.0.0.1:8080"  # not silently taken
    # Inside a group, a misspelt name stops the start, naming the one meant.
    nested = run("check-config", env={"POP3GW_LOG__LEVL": "debug"})
    assert nested.returncode == 2
    assert "log.levl (POP3GW_LOG__LEVL): not a setting; did you mean POP3GW_LOG__LEVEL?" in (
        nested.stderr
    )


def test_check_config_checks_that_named_files_can_be_read(tmp_path: Path) -> None:
    config = tmp_path / "pop3gw.toml"
    config.write_text(
        f"""
[[upstreams]]
name = "corp"
url = "pop3s://pop.corp.example"
cafile = "{tmp_path}/missing-ca.pem"

[[mailboxes]]
id = "box"
upstream = "corp"
user = "u"
password_file = "{tmp_path}"

[stream]
spool_dir = "{tmp_path}/no-such-dir"
"""
    )
    result = run("check-config", env={"POP3GW_CONFIG": str(config)})
    assert result.returncode == 2
    assert f"upstreams.0.cafile: cannot read {tmp_path}/missing-ca.pem" in result.stderr
    assert f"mailboxes.0.password_file: {tmp_path} is not a readable file" in result.stderr
    assert "stream.spool_dir (POP3GW_STREAM__SPOOL_DIR): " in result.stderr
    missing = run("check-config", env={"POP3GW_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 2
    assert f"POP3GW_CONFIG: cannot read {tmp_path}/nope.toml" in missing.stderr


def test_serve_help_says_how_configuration_works() -> None:
    result = run("serve", "--help", env={})
    assert result.returncode == 0
    for words in ("POP3GW_", "POP3GW_CONFIG", "POP3GW_LOG__LEVEL", "README", "check-config"):
        assert words in result.stdout, words


def test_the_start_up_line_says_what_is_in_effect_and_masks_every_secret() -> None:
    password, redis_password, cache_secret, token, api_key = (
        secrets.token_hex(16) for _ in range(5)
    )
    port = free_port()
    env = {
        "POP3GW_LISTEN": f"127.0.0.1:{port}",
        "POP3GW_LOG__FORMAT": "json",
        "POP3GW_DEFAULT_UPSTREAM": "pop3s://pop.example.com:995",
        "POP3GW_REDIS_URL": f"redis://:{redis_password}@127.0.0.1:{free_port()}/0",
        "POP3GW_CACHE_SECRET": cache_secret,
        "POP3GW_METRICS_TOKEN": token,
        "POP3GW_MAILBOXES": json.dumps(
            [
                {
                    "id": "box",
                    "upstream": "pop3s://pop.example.com",
                    "user": "u",
                    "password": password,
                }
            ]
        ),
        "POP3GW_API_KEYS": json.dumps(
            [{"name": "svc", "sha256": api_key * 2, "mailboxes": ["box"]}]
        ),
        "POP3GW_SHUTDOWN_DELAY_SECONDS": "0",
        "POP3GW_LISTN": "typo",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POP3GW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("pop3gw serve did not start")
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (start,) = [e["msg"] for e in lines if e["msg"].startswith("configuration in effect")]
    shown = json.loads(start.partition(": ")[2])
    assert shown["listen"] == f"127.0.0.1:{port}"
    assert shown["default_upstream"] == "pop3s://pop.example.com:995"
    assert shown["redis_url"].startswith("redis://***@127.0.0.1:")
    assert shown["mailboxes"][0]["id"] == "box"
    assert shown["api_keys"][0]["name"] == "svc"
    assert any("POP3GW_LISTN is not a pop3gw setting" in e["msg"] for e in lines)
    for secret in (password, redis_password, cache_secret, token, api_key):
        # not the value, nor any part of it of 6 characters or more
        for i in range(len(secret) - 5):
            assert secret[i : i + 6] not in out + err


ROOT = Path(__file__).resolve().parent.parent


def test_make_demo_listens_where_asked_and_installs_only_the_runtime() -> None:
    result = subprocess.run(
        ["make", "-n", "demo", "LISTEN=127.0.0.1:9999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "scripts/bootstrap.sh --python-only" in result.stdout
    assert ".venv/bin/pop3gw demo --listen 127.0.0.1:9999" in result.stdout
    # --python-only installs requirements/runtime.lock: no test, lint or build tool in it
    bootstrap = (ROOT / "scripts/bootstrap.sh").read_text()
    assert 'if [ "$python_only" -eq 1 ]; then\n    want=runtime' in bootstrap
    pinned = {
        line.split("==")[0]
        for line in (ROOT / "requirements/runtime.lock").read_text().splitlines()
        if "==" in line and not line.startswith(" ")
    }
    assert pinned >= {"aiohttp", "pydantic", "redis"}
    assert not pinned & {"pytest", "ruff", "mypy", "coverage", "hypothesis", "trustme"}
