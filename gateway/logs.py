"""Logging: one JSON object per line (or readable text on a terminal), with the request id.

The request id lives in a context variable set by the HTTP middleware, so every record
logged while a request is served (POP3 conversation lines included, from whatever task)
carries it without being passed around. Nothing here ever formats a credential: the POP3
layer redacts PASS/AUTH/APOP itself, and records are rendered from their message and a
fixed set of extra fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
#: the problem type (slug) a request was answered with, for its access-log line
PROBLEM_KEY = web.RequestKey("problem", str)

#: Extra record attributes copied into JSON lines when present.
_EXTRA_FIELDS = (
    "request_id",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "bytes",
    "remote",
    "problem",
)


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (empty outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message``, then what an access line adds (its duration, and the
    problem type of an error answer), then the request id in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s%(more)s%(rid)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "")
        record.rid = f" [{request_id}]" if request_id else ""
        more = ""
        duration = getattr(record, "duration_ms", None)
        if duration is not None:
            more += f" {duration:.1f}ms"
        problem = getattr(record, "problem", None)
        if problem:
            more += f" {problem}"
        record.more = more
        return super().format(record)


def configure_logging(
    level: str, fmt: Literal["json", "text", "auto"] = "json", stream: Any = None
) -> None:
    """Route every logger (ours, aiohttp's) to one handler on stderr."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # POP3 conversation lines only at DEBUG, and only when asked for.
    logging.getLogger("gateway.pop3.wire").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.WARNING
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, route template, status, time, bytes, request id, and
    for an error answer its problem type.

    The query string is left out (it is not needed to operate the service) and so are all
    headers: Authorization never reaches a log.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = "unmatched"
        if isinstance(request, web.Request):
            try:
                resource = request.match_info.route.resource
            except (AssertionError, AttributeError, RuntimeError):
                # A request whose head did not parse (a NUL in a header, say) never got as
                # far as routing; it is still logged.
                resource = None
            if resource is not None:
                route = resource.canonical
        problem = request.get(PROBLEM_KEY) if response.status >= 400 else None
        self.logger.info(
            "%s %s %s",
            request.method,
            route,
            response.status,
            extra={
                "request_id": response.headers.get("X-Request-ID", ""),
                "method": request.method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "bytes": response.body_length,
                "remote": request.remote,
                "problem": problem,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
