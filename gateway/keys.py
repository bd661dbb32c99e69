"""Typed keys for what the app factory puts on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .accounts import Directory
from .events import Deliverer, EventFeed, Watcher
from .metrics import Metrics
from .service import MailboxService


@dataclass
class Lifecycle:
    """Where the process is in its life; readiness reads it."""

    shutting_down: bool = False
    #: when set, /metrics wants "Authorization: Bearer <token>" (never logged or shown)
    metrics_token: str | None = None


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
SERVICE: web.AppKey[MailboxService] = web.AppKey("service", MailboxService)
DIRECTORY: web.AppKey[Directory] = web.AppKey("directory", Directory)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
#: seconds a client may accept no bytes of a streamed body before it is aborted
SEND_TIMEOUT: web.AppKey[float] = web.AppKey("send_timeout", float)
#: the event feeds of watched mailboxes (an empty one when none is watched)
EVENTS: web.AppKey[EventFeed] = web.AppKey("events", EventFeed)
#: the watcher of watched mailboxes, when any is
WATCHER: web.AppKey[Watcher] = web.AppKey("watcher", Watcher)
#: the webhook deliverer, when any webhook is configured
DELIVERER: web.AppKey[Deliverer] = web.AppKey("deliverer", Deliverer)
