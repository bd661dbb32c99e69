"""What the security tests share: API keys with different grants, settings for a gateway in
front of the scriptable server, and readers of what reached that server."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import trustme

from gateway.config import Settings, load_settings
from tests.support.api import sha
from tests.support.fakepop3 import FakePOP3Server

READ_KEY = "sec-read-" + secrets.token_hex(12)
DELETE_KEY = "sec-delete-" + secrets.token_hex(12)
OTHER_KEY = "sec-other-" + secrets.token_hex(12)
WILDCARD_KEY = "sec-wild-" + secrets.token_hex(12)
DELETE_ONLY_KEY = "sec-delonly-" + secrets.token_hex(12)
MESSAGES = [
    ("uid-1", b"Subject: one\r\nFrom: A <a@example.com>\r\n\r\nfirst\r\n"),
    ("uid-2", b"Subject: two\r\n\r\nsecond\r\n"),
    ("uid-3", b"Subject: three\r\n\r\nthird\r\n"),
]
SHORT_TIMEOUTS = {"connect": 2, "tls": 2, "command": 1, "idle": 1}


def gateway_settings(port: int, **extra: Any) -> Settings:
    """Passthrough to the fake server, two configured mailboxes on it ('box' and 'other',
    both user alice) and five API keys with different grants and scopes."""
    upstream = f"pop3://127.0.0.1:{port}"
    values: dict[str, Any] = {
        "default_upstream": upstream,
        "presets": False,
        "timeouts": SHORT_TIMEOUTS,
        "pool": {"retry_budget": 0.3},
        "mailboxes": [
            {"id": "box", "upstream": upstream, "user": "alice", "password": "pw"},
            {"id": "other", "upstream": upstream, "user": "alice", "password": "pw"},
        ],
        "api_keys": [
            {"name": "reader", "sha256": sha(READ_KEY), "mailboxes": ["box"], "scopes": ["read"]},
            {
                "name": "deleter",
                "sha256": sha(DELETE_KEY),
                "mailboxes": ["box"],
                "scopes": ["read", "delete"],
            },
            {"name": "other", "sha256": sha(OTHER_KEY), "mailboxes": ["other"]},
            {"name": "wildcard", "sha256": sha(WILDCARD_KEY), "mailboxes": ["*"]},
            {
                "name": "delete-only",
                "sha256": sha(DELETE_ONLY_KEY),
                "mailboxes": ["box"],
                "scopes": ["delete"],
            },
        ],
    }
    values.update(extra)
    return load_settings(**values)


def dele_lines(server: FakePOP3Server) -> list[bytes]:
    """Every command line the server received whose verb is DELE (any case)."""
    return [
        line
        for connection in server.received
        for line in connection
        if line.lstrip().upper().startswith(b"DELE")
    ]


def smuggled(server: FakePOP3Server, marker: bytes = b"DELE") -> list[bytes]:
    """Received lines carrying ``marker`` anywhere (an injected command, or a fragment of
    one that reached the wire inside another line)."""
    return [line for connection in server.received for line in connection if marker in line]


def write_pem(path: Path, blob: trustme.Blob) -> Path:
    blob.write_to_path(str(path))
    return path
