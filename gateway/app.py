"""The app factory: the only place that reads Settings and wires things together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from .accounts import (
    Account,
    AnyCredential,
    ApiKey,
    ApiKeys,
    Credential,
    Directory,
    KnownServers,
    OAuthCredential,
    Upstream,
)
from .api.middlewares import gateway_middleware
from .api.routes import setup_routes
from .cache import HeaderCache, RedisHeaderCache
from .config import (
    MailboxSettings,
    OAuthSettings,
    Settings,
    TimeoutSettings,
    UpstreamSettings,
    UpstreamURL,
    webhook_secrets,
)
from .edge import EdgeLimits, connection_cap, fd_reserve
from .events import (
    MESSAGE_NEW,
    AddressPolicy,
    Consumer,
    ConsumeStore,
    Deliverer,
    DeliveryStore,
    Endpoint,
    EventFeed,
    EventLog,
    EventLogUnavailableError,
    MemoryConsumeStore,
    MemoryDeliveryStore,
    MemoryEventLog,
    RedisConsumeStore,
    RedisDeliveryStore,
    RedisEventLog,
    RedisWatchLeases,
    RetryPolicy,
    Sender,
    Watcher,
    WatchSpec,
    decode_secret,
)
from .keys import (
    DELIVERER,
    DIRECTORY,
    EVENTS,
    LIFECYCLE,
    METRICS,
    SEND_TIMEOUT,
    SERVICE,
    WATCHER,
    Lifecycle,
)
from .metrics import Metrics
from .oauth.http import TokenEndpointClient
from .oauth.shared import RedisTokens
from .oauth.tokens import Grant, RefreshTokenFile, Secret, SharedTokens, TokenSource
from .pop3 import PoolLimits, SessionPool, Timeouts, TLSConfig, TLSMode
from .redis import SharedRedis
from .replicas import RedisSessionGate
from .service import (
    KnownGood,
    LoginRations,
    LoginThrottle,
    MailboxService,
    MessageParser,
    ParsedCache,
    ParseWorkers,
    PooledSessions,
    RecentSummaries,
    SessionOpener,
    SessionSource,
    Spool,
    TokenBuckets,
    encode_id,
)

#: connections of the one shared Redis client (the cache and the replica gate together)
REDIS_MAX_CONNECTIONS = 64

log = logging.getLogger("gateway")

_TLS_MODES = {"plain": TLSMode.PLAIN, "tls": TLSMode.IMPLICIT, "starttls": TLSMode.STARTTLS}


def _timeouts(settings: TimeoutSettings) -> Timeouts:
    return Timeouts(
        connect=settings.connect, tls=settings.tls, command=settings.command, idle=settings.idle
    )


def _upstream(spec: UpstreamSettings) -> Upstream:
    url = spec.parsed
    return Upstream(
        name=spec.name,
        host=url.host,
        port=url.port,
        tls=_TLS_MODES[url.tls],
        tls_config=TLSConfig(
            verify=spec.verify_tls,
            cafile=str(spec.cafile) if spec.cafile else None,
            fingerprint_sha256=spec.fingerprint_sha256,
            server_hostname=spec.tls_server_name,
        ),
        pipelining=spec.pipelining,
        read_only_sessions=spec.read_only_sessions,
        timeouts=_timeouts(spec.timeouts),
    )


def _url_upstream(
    name: str, url: UpstreamURL, timeouts: Timeouts, tls_config: TLSConfig | None = None
) -> Upstream:
    return Upstream(
        name=name,
        host=url.host,
        port=url.port,
        tls=_TLS_MODES[url.tls],
        tls_config=tls_config or TLSConfig(),
        timeouts=timeouts,
    )


def _credential(box: MailboxSettings, sources: dict[str, TokenSource]) -> AnyCredential:
    if box.auth == "oauth2":
        assert box.oauth is not None  # load_settings() checked it
        return OAuthCredential(sources[box.id], box.oauth.mechanism)
    method = box.auth
    if box.password is not None:
        return Credential(method, value=box.password.get_secret_value())
    if box.password_env is not None:
        return Credential(method, env=box.password_env)
    if box.token_env is not None:
        return Credential(method, env=box.token_env)
    path = box.password_file or box.token_file
    assert path is not None  # load_settings() checked that exactly one source is set
    return Credential(method, path=path)


def _secret(env: str | None, path: Path | None) -> Secret | None:
    if env is not None:
        return Secret(env=env)
    if path is not None:
        return Secret(path=path)
    return None


def oauth_grant(oauth: OAuthSettings) -> Grant:
    return Grant(
        provider=oauth.provider,
        token_url=oauth.resolved_token_url(),
        client_id=oauth.client_id,
        client_secret=_secret(oauth.client_secret_env, oauth.client_secret_file),
        refresh_token=None
        if oauth.client_credentials
        else _secret(oauth.refresh_token_env, oauth.refresh_token_file),
        scope=oauth.resolved_scope(),
        cafile=str(oauth.cafile) if oauth.cafile else None,
    )


def token_sources(
    settings: Settings,
    *,
    endpoints: Callable[[float], TokenEndpointClient],
    clock: Callable[[], float] = time.monotonic,
    shared: SharedTokens | None = None,
    observer: Metrics | None = None,
    on_state: Callable[[], None] | None = None,
) -> dict[str, TokenSource]:
    """A token source per OAuth2 mailbox; ``endpoints(timeout)``: the HTTP client."""
    sources = {}
    for box in settings.mailboxes:
        if box.auth != "oauth2" or box.oauth is None:
            continue
        oauth = box.oauth
        sources[box.id] = TokenSource(
            box.id,
            oauth_grant(oauth),
            endpoints(oauth.timeout),
            refresh_margin=oauth.refresh_margin,
            clock=clock,
            shared=shared,
            store=RefreshTokenFile(oauth.refresh_token_store)
            if oauth.refresh_token_store
            else None,
            observer=observer,
            request_timeout=oauth.timeout,
            on_state=on_state,
        )
    return sources


def build_directory(
    settings: Settings, oauth_sources: dict[str, TokenSource] | None = None
) -> Directory:
    """Who logs in where. ``oauth_sources``: the token sources of OAuth2 mailboxes (made
    by :func:`token_sources`; without them, made here with their own HTTP client)."""
    if oauth_sources is None:
        oauth_sources = token_sources(
            settings, endpoints=lambda timeout: TokenEndpointClient(timeout=timeout)
        )
    timeouts = _timeouts(settings.timeouts)
    upstreams = {spec.name: _upstream(spec) for spec in settings.upstreams}
    domains = {d: upstreams[spec.name] for spec in settings.upstreams for d in spec.domains}
    mailboxes: dict[str, Account] = {}
    for box in settings.mailboxes:
        upstream = upstreams.get(box.upstream) or _url_upstream(
            f"mailbox-{box.id}", UpstreamURL.parse(box.upstream), timeouts
        )
        if box.oauth is not None and box.oauth.provider == "microsoft":
            upstream = dataclasses.replace(upstream, xoauth2_two_step=True)
        mailboxes[box.id] = Account(
            mailbox_id=box.id,
            upstream=upstream,
            user=box.user,
            credential=_credential(box, oauth_sources),
            passthrough=False,
        )
    keys = ApiKeys(
        [
            ApiKey(
                name=k.name,
                digest=bytes.fromhex(k.sha256.get_secret_value()),
                mailboxes=frozenset(k.mailboxes),
                scopes=frozenset(k.scopes),
            )
            for k in settings.api_keys
        ]
    )
    default = None
    if settings.default_upstream:
        default = _url_upstream(
            "default",
            UpstreamURL.parse(settings.default_upstream),
            timeouts,
            TLSConfig(
                verify=settings.default_upstream_verify_tls,
                cafile=str(settings.default_upstream_cafile)
                if settings.default_upstream_cafile
                else None,
                fingerprint_sha256=settings.default_upstream_fingerprint_sha256,
                server_hostname=settings.default_upstream_tls_server_name,
            ),
        )
    return Directory(
        mailboxes=mailboxes,
        api_keys=keys,
        domain_upstreams=domains,
        default_upstream=default,
        presets=settings.presets,
        passthrough=settings.passthrough,
        timeouts=timeouts,
        trusted_proxies=settings.http.trusted_networks,
    )


def http_limits(settings: Settings, *, nofile: int | None = None) -> EdgeLimits:
    """The HTTP edge's limits. The connection cap stays below the file-descriptor limit
    (``nofile``, else read now) less what POP3 sessions, Redis and files need
    (:func:`gateway.edge.fd_reserve`); :class:`ConfigError` when it cannot."""
    http = settings.http
    reserve = fd_reserve(settings.pool.max_total, REDIS_MAX_CONNECTIONS, settings.parse.workers)
    return EdgeLimits(
        header_timeout=http.header_timeout,
        body_timeout=http.body_timeout,
        keepalive_timeout=http.keepalive_timeout,
        max_connections=connection_cap(http.max_connections, reserve, nofile),
    )


def login_rations(settings: Settings, cache_key: bytes, redis: SharedRedis | None) -> LoginRations:
    """Every limit on logins: failed logins per person (in Redis when configured), per
    client address and per upstream."""
    limits = settings.pool
    return LoginRations(
        LoginThrottle(
            limits.max_failed_logins,
            limits.failed_login_window,
            # known-good credentials are sealed with a key of their own, derived from the
            # cache secret: replicas and restarts recognise them
            known_good=KnownGood(
                hmac.new(cache_key, b"pop3gw known-good login v1", "sha256").digest()
            ),
        ),
        clients=TokenBuckets(
            limits.client_failed_login_burst, limits.client_failed_logins_per_minute / 60
        ),
        upstreams=TokenBuckets(
            limits.upstream_failed_login_burst, limits.upstream_failed_logins_per_minute / 60
        ),
        redis=redis,
        key=hmac.new(cache_key, b"pop3gw login throttle keys v1", "sha256").digest(),
    )


def _events(
    app: web.Application,
    settings: Settings,
    sessions: SessionSource,
    directory: Directory,
    metrics: Metrics,
    redis: SharedRedis | None,
    *,
    clock: Callable[[], float],
    wall: Callable[[], float],
) -> Watcher | None:
    """The event log (in Redis when configured, else in process), its feed and the watcher
    of the mailboxes configured with ``watch``."""
    events = settings.events
    specs = [
        WatchSpec(
            directory.mailboxes[box.id],
            interval=box.watch_interval,
            report_existing=box.watch_report_existing,
        )
        for box in settings.mailboxes
        if box.watch
    ]
    log_: EventLog
    leases = None
    if redis is not None:
        log_ = RedisEventLog(
            redis,
            retention=events.retention_seconds,
            max_per_mailbox=events.max_per_mailbox,
            wall=wall,
        )
        leases = RedisWatchLeases(redis)
    else:
        log_ = MemoryEventLog(
            retention=events.retention_seconds, max_per_mailbox=events.max_per_mailbox, wall=wall
        )
    app[EVENTS] = EventFeed(
        log_,
        frozenset(spec.mailbox for spec in specs),
        max_wait=events.max_wait,
        max_waiters=events.max_waiters,
        max_waiters_per_mailbox=events.max_waiters_per_mailbox,
        heartbeat=events.stream_heartbeat,
        stream_max_seconds=events.stream_max_seconds,
        clock=clock,
    )
    deliverer = _deliverer(settings, log_, redis, [s.mailbox for s in specs], metrics, wall)
    if deliverer is not None:
        deliverer.consumer = _consumer(settings, deliverer, redis, app, directory)
    if deliverer is not None:
        app[DELIVERER] = deliverer
    if not specs:
        return None
    watcher = app[WATCHER] = Watcher(
        sessions,
        log_,
        specs,
        max_changes=events.max_changes_per_poll,
        error_after=events.error_after_failures,
        max_concurrent=events.max_concurrent_polls,
        leases=leases,
        observer=metrics,
        clock=clock,
        wall=wall,
    )
    if deliverer is not None:
        watcher.listeners.append(deliverer.notify)
    return watcher


def _deliverer(
    settings: Settings,
    log_: EventLog,
    redis: SharedRedis | None,
    watched: list[str],
    metrics: Metrics,
    wall: Callable[[], float],
) -> Deliverer | None:
    """The webhook deliverer: its queues in Redis when configured (consumer groups shared by
    replicas), else in process (lost on restart)."""
    if not settings.webhooks:
        return None
    delivery = settings.webhook_delivery
    endpoints = [
        Endpoint(
            name=hook.name,
            url=hook.url,
            secrets=tuple(decode_secret(s) for s in webhook_secrets(hook)),
            mailboxes=frozenset(hook.mailboxes),
            kinds=frozenset(hook.kinds),
        )
        for hook in settings.webhooks
    ]
    store: DeliveryStore
    if redis is not None:
        store = RedisDeliveryStore(
            redis,
            # a lease outlives an attempt: one replica per pair while it delivers
            lease_ms=int(max(1.0, 3 * delivery.timeout) * 1000),
            dead_letter_max=delivery.dead_letter_max,
        )
    else:
        store = MemoryDeliveryStore(log_, dead_letter_max=delivery.dead_letter_max)
    sender = Sender(
        AddressPolicy(delivery.allow_networks, delivery.deny_networks),
        timeout=delivery.timeout,
        max_response_bytes=delivery.max_response_bytes,
        cafile=str(delivery.cafile) if delivery.cafile is not None else None,
        max_connections=delivery.max_in_flight,
    )
    return Deliverer(
        store,
        sender,
        endpoints,
        watched,
        policy=RetryPolicy(
            retry_for=delivery.retry_for_seconds, max_backoff=delivery.max_backoff_seconds
        ),
        max_in_flight=delivery.max_in_flight,
        observer=metrics,
        wall=wall,
    )


def _consumer(
    settings: Settings,
    deliverer: Deliverer,
    redis: SharedRedis | None,
    app: web.Application,
    directory: Directory,
) -> Consumer | None:
    """Consume mode for the mailboxes with ``watch_consume``: deletes through the service's
    delete (one DELE..QUIT transaction, done once QUIT answered +OK)."""
    subscribers = {
        box.id: frozenset(
            e.name
            for e in deliverer.endpoints.values()
            if e.wants_mailbox(box.id) and MESSAGE_NEW in e.kinds
        )
        for box in settings.mailboxes
        if box.watch and box.watch_consume
    }
    if not subscribers:
        return None

    async def delete(mailbox: str, uids: Sequence[str]) -> list[str]:
        result = await app[SERVICE].delete_messages(
            directory.mailboxes[mailbox], [encode_id(u) for u in uids]
        )
        return [*result.deleted, *result.not_found]

    store: ConsumeStore = RedisConsumeStore(redis) if redis is not None else MemoryConsumeStore()
    return Consumer(store, delete, subscribers)


def create_app(
    settings: Settings,
    *,
    sessions: SessionSource | None = None,
    cache: HeaderCache | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    watch: bool = True,
) -> web.Application:
    """Build the application. ``sessions`` and ``cache`` replace the defaults (tests);
    ``clock`` (monotonic seconds) is what session and snapshot ages are measured with;
    ``wall`` (Unix seconds) is what events are stamped and retained with. ``watch=False``
    leaves watched mailboxes to polls the caller makes (``app[WATCHER].poll``: tests), and
    webhook deliveries to steps it makes (``app[DELIVERER].step``)."""
    app = web.Application(
        middlewares=[gateway_middleware],
        # a larger body is answered 413 request-too-large by the middleware
        client_max_size=settings.http.max_body_bytes,
    )
    if settings.cache_secret is not None:
        cache_key = hashlib.sha256(settings.cache_secret.get_secret_value().encode()).digest()
    else:
        cache_key = os.urandom(32)  # one process: keys need not survive a restart
    metrics = Metrics()
    # One Redis client for everything that uses Redis, with one failure policy; it is
    # opened and closed by the app's lifecycle (redis_client below).
    redis = (
        # REDIS_MAX_CONNECTIONS: what the cache and the replica gate had between them before
        # they shared one client
        SharedRedis(
            settings.redis_url.get_secret_value(),
            max_connections=REDIS_MAX_CONNECTIONS,
            clock=clock,
        )
        if settings.redis_url is not None
        else None
    )
    if redis is not None:
        redis.listeners.append(metrics.redis_event)
    header_cache: HeaderCache | None = cache
    # The header summaries the service holds as objects: in front of a header cache, a
    # small fixed store (its hits are not the header cache's); with none (no Redis), the
    # in-process header cache itself, so each summary is held once, as parsed.
    summaries: RecentSummaries | None = None
    if header_cache is None and redis is not None:
        header_cache = RedisHeaderCache(
            redis,
            # values are sealed with a key of their own, derived from the cache secret
            seal_key=hmac.new(cache_key, b"pop3gw header cache seal v2", "sha256").digest(),
            ttl=settings.cache_ttl_seconds,
            on_event=metrics.cache_event,
        )
    elif header_cache is None:
        summaries = RecentSummaries(
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            ttl=settings.cache_ttl_seconds,
            clock=clock,
            on_event=metrics.cache_event,
        )
    app[METRICS] = metrics
    app[LIFECYCLE] = Lifecycle(
        metrics_token=settings.metrics_token.get_secret_value() if settings.metrics_token else None
    )
    # OAuth2 mailboxes: one HTTP client per request timeout, closed with the app
    endpoint_clients: dict[float, TokenEndpointClient] = {}

    def endpoint_client(timeout: float) -> TokenEndpointClient:
        return endpoint_clients.setdefault(timeout, TokenEndpointClient(timeout=timeout))

    # With Redis, replicas share tokens (sealed with a key from the cache secret) and
    # refresh one at a time (gateway/oauth/shared.py says why)
    oauth_sources = token_sources(
        settings,
        endpoints=endpoint_client,
        clock=clock,
        shared=(
            RedisTokens(redis, key=cache_key, on_invalid=metrics.token_record_invalid)
            if redis is not None
            else None
        ),
        observer=metrics,
    )
    metrics.watch_oauth(lambda: sum(s.needs_reauth for s in oauth_sources.values()))
    directory = app[DIRECTORY] = build_directory(settings, oauth_sources)
    pool: SessionPool | None = None
    gate: RedisSessionGate | None = None
    if sessions is None:
        if redis is not None:
            gate = RedisSessionGate(
                redis,
                login_delay=settings.pool.login_delay_seconds,
                on_event=metrics.gate_event,
            )
        limits = settings.pool
        pool = SessionPool(
            PoolLimits(
                max_per_key=limits.max_per_mailbox,
                max_per_upstream=limits.max_per_upstream,
                max_total=limits.max_total,
                acquire_timeout=limits.acquire_timeout,
                snapshot_max_age=limits.snapshot_max_age,
                idle_timeout=limits.idle_timeout,
                retry_budget=limits.retry_budget,
                reuse_grace=limits.reuse_grace,
            ),
            on_event=metrics.pool_event,
            gate=gate,
            clock=clock,
        )
        metrics.watch_pool(pool)
        opener = SessionOpener(
            key=cache_key,
            observer=metrics,
            throttle=login_rations(settings, cache_key, redis),
            servers=KnownServers(),
        )
        sessions = PooledSessions(pool, opener, key=cache_key, observer=metrics)
    readiness = {}
    if gate is not None:
        readiness["replica_lock"] = (
            gate.ping,
            "Redis does not answer: replicas cannot coordinate, sessions proceed uncoordinated",
        )
    stream = settings.stream
    spool = Spool(
        stream.spool_max_bytes,
        directory=str(stream.spool_dir) if stream.spool_dir is not None else None,
    )
    metrics.watch_spool(lambda: (spool.written, spool.reserved, spool.files))
    app[SEND_TIMEOUT] = stream.send_timeout
    parse = settings.parse
    workers = (
        ParseWorkers(
            parse.workers,
            timeout=parse.timeout,
            queue_timeout=parse.queue_timeout,
            memory_limit=parse.memory_limit_bytes,
            observer=metrics,
        )
        if parse.workers
        else None
    )
    parsed_cache = ParsedCache(parse.cache_max_bytes, parse.cache_ttl_seconds, clock=clock)
    app[SERVICE] = MailboxService(
        sessions,
        header_cache,
        cache_key=cache_key,
        max_parse_bytes=settings.max_parse_bytes,
        snapshot_max_age=settings.pool.snapshot_max_age,
        min_fresh_interval=settings.pool.min_fresh_interval,
        observer=metrics,
        clock=clock,
        readiness=readiness,
        spool=spool if stream.spool_max_bytes else None,
        parser=MessageParser(workers, parsed_cache),
        summaries=summaries,
    )
    parser = app[SERVICE].parser
    watcher = _events(app, settings, sessions, directory, metrics, redis, clock=clock, wall=wall)
    metrics.watch_parsers(
        lambda: (
            len(parser.workers.pids) if parser.workers else 0,
            parser.workers.running if parser.workers else 0,
            parser.cache.bytes,
        )
    )

    async def redis_client(_app: web.Application) -> AsyncIterator[None]:
        if redis is not None:
            redis.open()
        yield
        if redis is not None:
            await redis.close()  # after the pool below released its replica locks

    async def close_token_clients(_app: web.Application) -> AsyncIterator[None]:
        yield
        for client in endpoint_clients.values():
            await client.close()

    async def close_cache(_app: web.Application) -> AsyncIterator[None]:
        yield
        if header_cache is not None:
            await header_cache.close()

    async def close_parsers(_app: web.Application) -> AsyncIterator[None]:
        yield
        if workers is not None:
            await workers.close()

    async def close_pool(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SERVICE].close()  # read-aheads hold sessions: stop them first
        if pool is not None:
            await pool.close()  # idle sessions QUIT: they hold no DELE marks
        if gate is not None:
            await gate.close()

    async def housekeeping(_app: web.Application) -> AsyncIterator[None]:
        # Expired snapshots and cache entries are dropped on a timer, not only when a later
        # request meets them: memory comes back after a burst.
        interval = max(1.0, min(settings.pool.snapshot_max_age, 30.0))
        service = app[SERVICE]

        async def tidy() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    service.housekeeping()  # held summaries past their TTL too
                except Exception:  # supervised: a failed round is logged, the next comes
                    log.exception("housekeeping failed; it goes on")

        task = asyncio.get_running_loop().create_task(tidy(), name="pop3gw-housekeeping")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def delivering(_app: web.Application) -> AsyncIterator[None]:
        deliverer = app.get(DELIVERER)
        tasks: list[asyncio.Task[None]] = []
        if deliverer is not None:
            try:
                await deliverer.setup()
            except EventLogUnavailableError:
                log.warning("webhook queues not set up (Redis unavailable); set up when used")
            if watch:
                loop = asyncio.get_running_loop()
                tasks.append(loop.create_task(deliverer.run(), name="pop3gw-webhooks"))
                if isinstance(deliverer.consumer, Consumer):
                    tasks.append(loop.create_task(deliverer.consumer.run(), name="pop3gw-consume"))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if deliverer is not None:
            await deliverer.close()

    async def watching(_app: web.Application) -> AsyncIterator[None]:
        task = None
        if watcher is not None and watch:
            task = asyncio.get_running_loop().create_task(watcher.run(), name="pop3gw-watcher")
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if watcher is not None:
            await watcher.close()

    app.cleanup_ctx.append(redis_client)  # first in, last out
    app.cleanup_ctx.append(housekeeping)
    app.cleanup_ctx.append(close_token_clients)
    app.cleanup_ctx.append(close_cache)
    app.cleanup_ctx.append(close_pool)
    app.cleanup_ctx.append(close_parsers)
    app.cleanup_ctx.append(delivering)  # queues set up before the first poll
    app.cleanup_ctx.append(watching)  # stops before the pool closes
    setup_routes(app)
    return app
