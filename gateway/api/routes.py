"""The routes of the API, by resource."""

from __future__ import annotations

from aiohttp import web

from .common import RENDERINGS
from .events import list_events, stream_events
from .mailboxes import check_mailbox, mailbox_stats
from .messages import (
    delete_message,
    delete_messages,
    get_attachment,
    get_message,
    get_raw,
    list_messages,
)
from .operations import docs_asset, docs_page, healthz, metrics, openapi_json, readyz, root
from .serializers import PageRenderings
from .webhooks import list_failed, retry_failed

MAILBOX = "/v1/mailboxes/{mailbox:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
# "delete" is the batch-delete resource, never a message id (ids are canonical base64url of
# unique-ids, and "delete" is not canonical).
MESSAGE = MAILBOX + "/messages/{id:(?!delete$)[^/]+}"


def setup_routes(app: web.Application) -> None:
    app[RENDERINGS] = PageRenderings()
    router = app.router
    router.add_get(MAILBOX, mailbox_stats)
    router.add_get(MAILBOX + "/messages", list_messages)
    router.add_post(MAILBOX + "/messages/delete", delete_messages)
    router.add_post(MAILBOX + "/check", check_mailbox)
    router.add_get(MAILBOX + "/events", list_events)
    router.add_get(MAILBOX + "/events/stream", stream_events)
    router.add_get(MESSAGE, get_message)
    router.add_delete(MESSAGE, delete_message)
    router.add_get(MESSAGE + "/raw", get_raw)
    router.add_get(MESSAGE + "/attachments/{attachment:[^/]+}", get_attachment)
    webhook = "/v1/webhooks/{webhook:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
    router.add_get(webhook + "/failed", list_failed)
    router.add_post(webhook + "/failed/{event:evt_[a-z2-7]{32}}/retry", retry_failed)
    router.add_get("/", root)
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/metrics", metrics)
    router.add_get("/openapi.json", openapi_json)
    router.add_get("/docs", docs_page)
    router.add_get("/docs/{asset}", docs_asset)
