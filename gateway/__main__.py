"""``pop3gw``: serve, demo, check-config.

pop3gw serve          # configuration from POP3GW_* and the POP3GW_CONFIG file
pop3gw demo           # the gateway plus a built-in demo mailbox (user demo, password demo)
pop3gw check-config   # validate the configuration and print what it resolved (no secrets)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import weakref
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from . import __version__
from .app import create_app, http_limits
from .config import ConfigError, Settings, load_settings, unknown_variables
from .edge import EdgeSite, handler_kwargs
from .keys import LIFECYCLE, METRICS, SERVICE
from .logs import AccessLogger, configure_logging

log = logging.getLogger("gateway")


CONFIGURATION_HELP = """\
configuration:
  Every setting is an environment variable with the prefix POP3GW_ (nested ones with
  "__": POP3GW_LOG__LEVEL=debug), or a key in the file named by POP3GW_CONFIG (TOML, JSON
  or YAML; upstreams, mailboxes and API keys go there). Variables win over the file.
  The README's "Configuration" table lists them all. A misspelt POP3GW_* variable is
  reported at start; `pop3gw check-config` validates everything (files included) and
  prints what is in effect, secrets masked.

examples:
  POP3GW_DEFAULT_UPSTREAM=pop3s://pop.example.com:995 pop3gw serve
  POP3GW_LISTEN=0.0.0.0:8080 POP3GW_CONFIG=/etc/pop3gw/config.toml pop3gw serve
"""


def _setup_logging(settings: Settings) -> None:
    configure_logging(settings.log.level, settings.log.format)


def _redis_shown(url: str) -> str:
    """A Redis URL without its credentials or query: where, never how to get in."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    hidden = "***@" if parts.username or parts.password or parts.query else ""
    return f"{parts.scheme}://{hidden}{host or ''}{port}{parts.path}"


def configuration_in_effect(settings: Settings) -> dict[str, Any]:
    """Every setting as it is in effect; every secret (passwords, keys, tokens, the cache
    secret, the Redis URL's credentials) replaced by a mask, never shown even in part."""
    shown: dict[str, Any] = settings.model_dump(mode="json")  # SecretStr -> "**********"
    if settings.redis_url is not None:
        shown["redis_url"] = _redis_shown(settings.redis_url.get_secret_value())
    shown["config_file"] = os.environ.get("POP3GW_CONFIG")
    return shown


def _warn_unknown_variables() -> list[str]:
    warnings = unknown_variables(os.environ)
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


#: Container allocations (net of deallocations) between two young-generation collections:
#: CPython's default is 700. A cold listing makes a dozen objects per message summarized (its
#: summary, addresses, strings, the page's dicts), so at 700 the collector ran every 60 or so
#: messages and, with thousands of summaries held, kept promoting them and scanning them
#: again in older generations. Cyclic garbage waits longer to be freed (a few MB at most:
#: almost everything the gateway frees is freed by reference counting, not the collector).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect once, move everything alive after start-up (modules, classes, the app) out of
    the collector's sight for good (``gc.freeze``: it is never garbage), and collect the
    young generation less often (:data:`GC_YOUNG_THRESHOLD`). Counted with callgrind, the
    collector was about 4% of a cold listing's instructions at 1,000 messages, and 12% of the
    time of 10,000 summaries made and held in one process."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(settings: Settings, *, ready_message: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully:

    1. /readyz answers 503 at once, for ``shutdown_delay_seconds`` (load balancers and
       Kubernetes endpoints stop sending new requests);
    2. the listener closes and requests in flight get ``shutdown_grace_seconds`` to finish
       (a /raw download included);
    3. the pool QUITs its idle sessions (they hold no DELE marks), replica locks in Redis are
       released, caches closed; the process exits 0.
    """
    limits = http_limits(settings)  # ConfigError before anything starts
    _warn_unknown_variables()
    log.info(
        "configuration in effect (secrets masked): %s",
        json.dumps(configuration_in_effect(settings), sort_keys=True, default=str),
    )
    app = create_app(settings)
    kwargs = handler_kwargs(
        limits, access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
    )
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_grace_seconds, **kwargs
    )
    await runner.setup()
    await app[SERVICE].parser.start()  # the first GET of a message waits for no import
    tune_gc()
    # header, body and keep-alive timeouts, a connection cap, paced accept errors
    site = EdgeSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        limits=limits,
        metrics=app[METRICS],
        handler_kwargs=kwargs,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "listening on %s (at most %d connections; timeouts: header %gs, body %gs, keep-alive %gs)",
        site.name,
        limits.max_connections,
        limits.header_timeout,
        limits.body_timeout,
        limits.keepalive_timeout,
    )
    if ready_message:
        print(ready_message, flush=True)
    try:
        await stop.wait()
        app[LIFECYCLE].shutting_down = True
        log.info(
            "shutting down: not ready for %gs, then up to %gs for requests in flight",
            settings.shutdown_delay_seconds,
            settings.shutdown_grace_seconds,
        )
        await asyncio.sleep(settings.shutdown_delay_seconds)
    finally:
        await runner.cleanup()
        await _flushed(site.gate.transports, timeout=10)
        log.info("stopped")


async def _flushed(transports: weakref.WeakSet[asyncio.Transport], timeout: float) -> None:
    """Wait (bounded) until what was written to clients left the process: a response that
    finished just before exit (the end of a long download) must not be cut short."""
    deadline = asyncio.get_running_loop().time() + timeout
    while any(t.get_write_buffer_size() for t in list(transports)):
        if asyncio.get_running_loop().time() > deadline:
            log.warning("exiting with unsent response bytes after %gs", timeout)
            return
        await asyncio.sleep(0.02)


async def demo(overrides: dict[str, Any]) -> None:
    from .demo import DemoPOP3Server

    server = DemoPOP3Server()
    port = await server.start()
    try:
        settings = load_settings(default_upstream=f"pop3://127.0.0.1:{port}", **overrides)
        _setup_logging(settings)
        base = f"http://{settings.listen_host}:{settings.listen_port}"
        await serve(
            settings,
            ready_message=(
                f"pop3gw demo: a demo mailbox is served on {base}\n"
                f"  curl -u demo:demo {base}/v1/mailboxes/me\n"
                f"  curl -u demo:demo {base}/v1/mailboxes/me/messages\n"
                f"  API documentation: {base}/docs\n"
                "Stop with Ctrl-C."
            ),
        )
    finally:
        await server.stop()


def check_config() -> int:
    for warning in unknown_variables(os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # SecretStr fields dump as "**********": nothing secret is printed.
    print(json.dumps(settings.model_dump(mode="json"), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pop3gw", description="POP3 mailboxes over HTTP/JSON")
    parser.add_argument("--version", action="version", version=f"pop3gw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway until SIGTERM or SIGINT.",
        epilog=CONFIGURATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_parser = sub.add_parser("demo", help="run the gateway with a built-in demo mailbox")
    demo_parser.add_argument("--listen", help="host:port (default 127.0.0.1:8080)")
    sub.add_parser("check-config", help="validate the configuration and print it, secrets masked")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config()
    try:
        if args.command == "serve":
            settings = load_settings()
            _setup_logging(settings)
            asyncio.run(serve(settings))
        else:
            overrides = {"listen": args.listen} if args.listen else {}
            asyncio.run(demo(overrides))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pop3gw: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
