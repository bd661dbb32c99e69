"""A webhook receiver for the tests: a real aiohttp server on loopback that checks every
signature with the ``standardwebhooks`` package (an independent implementation of the
spec), and answers what the test scripts; and a wall clock the test moves by hand."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class WallClock:
    """Unix seconds that move only when the test says (days pass in no time)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    #: the handler waits for this before answering (a slow or stuck receiver)
    hold: asyncio.Event | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    #: the status it was answered with
    status: int


class Receiver:
    """Answers each delivery with the next scripted :class:`Answer` (204 when none is left),
    after checking its signature with ``standardwebhooks`` against ``secret``. A delivery
    whose signature does not verify is answered 401 and kept in ``forged``."""

    def __init__(self, secret: str, wall: WallClock) -> None:
        #: what the webhook it receives must be signed with (``whsec_...``)
        self.secret = secret
        self.verifier = Webhook(secret)
        self.wall = wall
        self.script: deque[Answer] = deque()
        self.got: list[Received] = []
        self.forged: list[str] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def verify(self, body: bytes, headers: dict[str, str]) -> int:
        """The verified timestamp, or raise WebhookVerificationError."""
        timestamp = int(headers["webhook-timestamp"])
        if abs(timestamp - time.time()) < 300:
            # the package's own check, timestamp tolerance included
            self.verifier.verify(body, headers)
        else:
            # the test's clock is days ahead of the machine's: the same check with the
            # package's signing, and the timestamp must be the gateway's (test) clock
            expected = self.verifier.sign(
                headers["webhook-id"], datetime.fromtimestamp(timestamp, UTC), body
            )
            if expected not in headers["webhook-signature"].split(" "):
                raise WebhookVerificationError("No matching signature found")
            if abs(timestamp - self.wall()) > 1:
                raise WebhookVerificationError("timestamp is not the sender's clock")
        return timestamp

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            timestamp = self.verify(body, headers)
        except (WebhookVerificationError, KeyError, ValueError) as exc:
            self.forged.append(f"{headers.get('webhook-id')}: {exc}")
            return web.Response(status=401)
        answer = self.script.popleft() if self.script else Answer()
        self.got.append(Received(headers["webhook-id"], timestamp, json.loads(body), answer.status))
        self.arrived.set()
        if answer.hold is not None:
            await answer.hold.wait()
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[str]:
        """Ids answered 2xx, in the order they came."""
        return [r.webhook_id for r in self.got if 200 <= r.status < 300]

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
