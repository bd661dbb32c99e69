"""Prometheus metrics, in a registry of the app's own (several apps can live in one process).

Labels are low-cardinality only: route templates, methods, status codes, commands,
outcomes. Never a user, a mailbox id, a unique-id or a secret.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .pop3 import SessionPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http = _CountedTimings(
            "pop3gw_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            "pop3gw_http_request_duration_seconds",
            "Time to answer an HTTP request (streamed bodies included), by route template.",
            ("route", "method"),
        )
        self._pop3 = _CountedTimings(
            "pop3gw_pop3_commands",
            "POP3 commands sent, by command and outcome (ok, err, failed).",
            ("command", "outcome"),
            "pop3gw_pop3_command_duration_seconds",
            "Time from sending a POP3 command to the end of its reply, by command.",
            ("command",),
        )
        self.registry.register(self._http)
        self.registry.register(self._pop3)
        self.pool_events = Counter(
            "pop3gw_pool_events",
            "Session pool events (open, reuse, close, timeout, retry, noop_failed, reaper_error).",
            ["kind"],
            registry=self.registry,
        )
        self.gate_events = Counter(
            "pop3gw_replica_gate_events",
            "Cross-replica mailbox coordination in Redis (wait, error, skipped: Redis backing "
            "off, the gate opened without asking).",
            ["kind"],
            registry=self.registry,
        )
        self.limits = Counter(
            "pop3gw_limits",
            "Limits that bit, by reason (fresh-rationed: a ?fresh=true within "
            "min_fresh_interval of the mailbox's last login was served the newest snapshot; "
            "spool-full: a message streamed from its session, the spool budget being spent; "
            "spool-overflow: a message larger than listed, streamed from its session past "
            "the margin; send-timeout: a client that accepted no bytes in time, aborted; "
            "login-throttled, client-login-rate, upstream-login-rate: a login refused for "
            "failed logins of the person, the client address, the upstream; parse-timeout, "
            "parse-crash: a parse stopped at its time or memory limit, its worker killed; "
            "parse-busy: no parser free in time; client-gone: a read whose client "
            "disconnected, stopped; header-truncated: a header section past the TOP cap, "
            "summarized from its first MiB; stream-slow-reader: an event stream whose client "
            "accepted nothing for the send timeout, dropped).",
            ["reason"],
            registry=self.registry,
        )
        self.redis_events = Counter(
            "pop3gw_redis_events",
            "The shared Redis client: failed calls (error) and recoveries (reconnect). While "
            "it backs off after a failure, its users do without Redis and send nothing.",
            ["kind"],
            registry=self.registry,
        )
        self.problems = Counter(
            "pop3gw_problems",
            "Error answers, by problem type (upstream errors included).",
            ["type"],
            registry=self.registry,
        )
        self.logins = Counter(
            "pop3gw_pop3_logins",
            "POP3 logins, by upstream name and outcome (ok, auth, in-use, login-delay, "
            "timeout, tls, unreachable, other).",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.lease_wait = Histogram(
            "pop3gw_pool_lease_wait_seconds",
            "Time a request waited for a POP3 session (queueing, connecting, logging in).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_streamed = Counter(
            "pop3gw_streamed_bytes",
            "Message and attachment bytes sent to clients, by kind (raw, attachment).",
            ["kind"],
            registry=self.registry,
        )
        self.oauth_requests = Counter(
            "pop3gw_oauth_token_requests",
            "Requests to OAuth token endpoints, by provider and outcome (ok, invalid-grant, "
            "refused, timeout, error).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.oauth_rotations = Counter(
            "pop3gw_oauth_refresh_tokens_rotated",
            "Refresh tokens replaced by the token endpoint (rotation), by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.oauth_shared = Counter(
            "pop3gw_oauth_tokens_shared",
            "Access tokens another replica obtained (from Redis), used without a refresh.",
            registry=self.registry,
        )
        self.oauth_invalid = Counter(
            "pop3gw_oauth_token_records_invalid",
            "Shared OAuth token records read from Redis that failed their seal (AES-GCM: "
            "written under another cache secret, altered, or not a record): ignored, the "
            "replica refreshed on its own.",
            registry=self.registry,
        )
        self._cache_events = _PlainCounter(
            "pop3gw_header_cache_events",
            "Header cache lookups and failures, by kind (hit, miss, error, invalid: a stored "
            "value whose seal did not check, reconnect).",
            "kind",
        )
        self.registry.register(self._cache_events)
        self._http_timeouts = _PlainCounter(
            "pop3gw_http_timeouts",
            "HTTP connections closed by a timeout, by phase: header (request line and "
            "headers not complete in time, e.g. slowloris), body, keepalive (idle).",
            "phase",
        )
        self._accept_pauses = _PlainCounter(
            "pop3gw_http_accept_pauses",
            "Times the HTTP listener stopped accepting, by reason: max_connections (the "
            "connection cap was reached), fd_exhausted (accept failed for lack of file "
            "descriptors or memory), accept_error (any other accept failure).",
            "reason",
        )
        self._accept_errors = _PlainCounter(
            "pop3gw_http_accept_errors",
            "Failed accept() calls on the HTTP listener, by errno name (EMFILE, ENFILE, ...).",
            "errno",
        )
        self._http_reclaimed = _PlainCounter(
            "pop3gw_http_connections_reclaimed",
            "Idle keep-alive connections closed early to make room under the connection cap.",
            "reason",
        )
        self._http_malformed = _PlainCounter(
            "pop3gw_http_malformed_requests",
            "Requests refused with 400 before any handler ran (a head that is not HTTP, a bad "
            "header character, a line too long...), by kind (the parser's error class).",
            "kind",
        )
        self.events = Counter(
            "pop3gw_events",
            "Events recorded for watched mailboxes, by kind (message.new, message.removed, "
            "mailbox.reset, mailbox.error, mailbox.recovered).",
            ["kind"],
            registry=self.registry,
        )
        self.watch_polls = Counter(
            "pop3gw_watch_polls",
            "Polls of watched mailboxes, by outcome (ok; failed: the mailbox could not be "
            "read; conflict: another replica changed its state meanwhile; unavailable: the "
            "event log could not be used; elsewhere: another replica holds its lease).",
            ["outcome"],
            registry=self.registry,
        )
        self.watch_poll_duration = Histogram(
            "pop3gw_watch_poll_duration_seconds",
            "Time of one poll of a watched mailbox (session, UIDL, LIST, TOP, commit).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "pop3gw_webhook_deliveries",
            "Webhook delivery attempts and what became of them, by outcome (delivered; "
            "retry: to be tried again; dead-final: an answer that is not retried; "
            "dead-exhausted: retried until retry_for; expired: dropped by retention first).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_lag = Histogram(
            "pop3gw_webhook_delivery_lag_seconds",
            "From an event's recording to its delivery (2xx) to a webhook endpoint.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 6 * 3600, 86400),
            registry=self.registry,
        )
        self.webhook_dead = Gauge(
            "pop3gw_webhook_dead_letters",
            "Dead letters kept per webhook endpoint (as last counted by this process).",
            ["endpoint"],
            registry=self.registry,
        )
        for counter in (
            self._http_timeouts,
            self._accept_pauses,
            self._accept_errors,
            self._http_reclaimed,
            self._http_malformed,
        ):
            self.registry.register(counter)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request."""
        self._http.observe((route, method, str(status)), (route, method), seconds)

    def pool_event(self, kind: str) -> None:
        self.pool_events.labels(kind).inc()

    def watch_pool(self, pool: SessionPool) -> None:
        """Read the pool's session counts at scrape time."""
        self.registry.register(_PoolCollector(pool))

    def http_timeout(self, phase: str) -> None:
        """An HTTP connection closed by a timeout: ``header``, ``body`` or ``keepalive``."""
        self._http_timeouts.inc(phase)

    def http_malformed(self, kind: str) -> None:
        """A request refused by the HTTP parser (``kind``: its error class's name)."""
        self._http_malformed.inc(kind)

    def accept_paused(self, reason: str) -> None:
        """The listener stopped accepting: ``max_connections``, ``fd_exhausted``,
        ``accept_error``."""
        self._accept_pauses.inc(reason)

    def accept_failed(self, errno_name: str) -> None:
        self._accept_errors.inc(errno_name)

    def connection_reclaimed(self) -> None:
        """An idle keep-alive connection closed to make room under the cap."""
        self._http_reclaimed.inc("max_connections")

    def watch_http_connections(self, read: Callable[[], tuple[int, int]]) -> None:
        """Report ``read()`` = (open HTTP connections, the cap) at scrape time."""
        self.registry.register(_ConnectionsCollector(read))

    def watch_spool(self, read: Callable[[], tuple[int, int, int]]) -> None:
        """Report ``read()`` = (bytes spooled, bytes reserved, files open) at scrape time."""
        self.registry.register(_SpoolCollector(read))

    def watch_parsers(self, read: Callable[[], tuple[int, int, int]]) -> None:
        """Report ``read()`` = (parse workers alive, jobs running, parsed-cache bytes) at
        scrape time."""
        self.registry.register(_ParseCollector(read))

    def event_recorded(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def polled(self, outcome: str, seconds: float) -> None:
        self.watch_polls.labels(outcome).inc()
        self.watch_poll_duration.observe(seconds)

    def delivery(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    def delivery_lag(self, seconds: float) -> None:
        self.webhook_lag.observe(seconds)

    def dead_letters(self, endpoint: str, total: int) -> None:
        self.webhook_dead.labels(endpoint).set(total)

    def login(self, upstream: str, outcome: str) -> None:
        self.logins.labels(upstream, outcome).inc()

    def lease_waited(self, seconds: float) -> None:
        self.lease_wait.observe(seconds)

    def gate_event(self, kind: str) -> None:
        self.gate_events.labels(kind).inc()

    def limited(self, reason: str) -> None:
        """A limit bit."""
        self.limits.labels(reason).inc()

    def problem(self, slug: str) -> None:
        """One error answer, by problem type."""
        self.problems.labels(slug).inc()

    def streamed(self, kind: str, octets: int) -> None:
        """Bytes sent to a client: ``raw`` (a message) or ``attachment``."""
        self.bytes_streamed.labels(kind).inc(octets)

    def redis_event(self, kind: str) -> None:
        self.redis_events.labels(kind).inc()

    def cache_event(self, kind: str) -> None:
        """One header cache event (one call per looked-up entry on a listing page)."""
        self._cache_events.inc(kind)

    def token_request(self, provider: str, outcome: str) -> None:
        """One request to an OAuth token endpoint: ``ok``, ``invalid-grant``, ``refused``
        (another permanent error), ``timeout`` or ``error``."""
        self.oauth_requests.labels(provider, outcome).inc()

    def refresh_token_rotated(self, provider: str) -> None:
        self.oauth_rotations.labels(provider).inc()

    def token_shared(self) -> None:
        """A token another replica obtained, used instead of a refresh of our own."""
        self.oauth_shared.inc()

    def token_record_invalid(self) -> None:
        """A shared OAuth token record in Redis failed its seal (and was ignored)."""
        self.oauth_invalid.inc()

    def watch_oauth(self, read: Callable[[], int]) -> None:
        """Report ``read()`` = configured mailboxes in needs-reauth at scrape time."""
        self.registry.register(_NeedsReauthCollector(read))

    def observe_pop3(self, command: str, outcome: str, seconds: float) -> None:
        """Count and time one POP3 command (every command of a pipelined burst)."""
        self._pop3.observe((command, outcome), (command,), seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _CountedTimings(Collector):
    """A counter and a histogram fed together on the hot paths (every HTTP request, every
    POP3 command of a pipelined burst), kept as plain numbers and read at scrape time.

    prometheus_client's own types take a lock for every change, which cost more than the
    rest of a warm listing's bookkeeping. These are changed and read only from the event
    loop's thread (the /metrics handler runs there too), so they need none.
    """

    def __init__(
        self,
        counter: str,
        counter_help: str,
        counter_labels: Sequence[str],
        histogram: str,
        histogram_help: str,
        histogram_labels: Sequence[str],
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self._names = (counter, counter_help, list(counter_labels))
        self._histogram = (histogram, histogram_help, list(histogram_labels))
        self._buckets = tuple(buckets)
        self._bounds = [_le(b) for b in self._buckets] + ["+Inf"]
        self._counts: dict[tuple[str, ...], int] = {}
        #: per label values: one count per bucket (not cumulative), the +Inf one, the sum
        self._timings: dict[tuple[str, ...], list[float]] = {}

    def observe(
        self, counter_labels: tuple[str, ...], histogram_labels: tuple[str, ...], seconds: float
    ) -> None:
        counts = self._counts
        counts[counter_labels] = counts.get(counter_labels, 0) + 1
        timing = self._timings.get(histogram_labels)
        if timing is None:
            timing = self._timings[histogram_labels] = [0.0] * (len(self._buckets) + 2)
        timing[bisect_left(self._buckets, seconds)] += 1
        timing[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        name, help_text, labels = self._names
        counter = CounterMetricFamily(name, help_text, labels=labels)
        for values, count in list(self._counts.items()):
            counter.add_metric(list(values), count)
        yield counter
        name, help_text, labels = self._histogram
        histogram = HistogramMetricFamily(name, help_text, labels=labels)
        for values, timing in list(self._timings.items()):
            cumulative: list[tuple[str, float]] = []
            total = 0.0
            for bound, observed in zip(self._bounds, timing, strict=False):
                total += observed
                cumulative.append((bound, total))
            histogram.add_metric(list(values), cumulative, timing[-1])
        yield histogram

    def describe(self) -> Iterator[Metric]:
        name, help_text, labels = self._names
        yield CounterMetricFamily(name, help_text, labels=labels)
        name, help_text, labels = self._histogram
        yield HistogramMetricFamily(name, help_text, labels=labels)


class _PlainCounter(Collector):
    """A counter with one label, as a plain dict read at scrape time (the same reasoning
    as `_CountedTimings`: changed and read from the event loop's thread only)."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self._name, self._help, self._label = name, help_text, label
        self._counts: dict[str, int] = {}

    def inc(self, value: str) -> None:
        self._counts[value] = self._counts.get(value, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._help, labels=[self._label])
        for value, count in list(self._counts.items()):
            family.add_metric([value], count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._help, labels=[self._label])


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.005``, ``1.0``)."""
    return repr(float(bound))


class _PoolCollector(Collector):
    def __init__(self, pool: SessionPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._pool.stats()
        family = GaugeMetricFamily(
            "pop3gw_pool_sessions", "POP3 sessions in the pool, by state.", labels=["state"]
        )
        for state in ("open", "idle", "leased", "closing"):
            family.add_metric([state], getattr(stats, state))
        yield family
        yield GaugeMetricFamily(
            "pop3gw_pool_waiting", "Requests queued for a POP3 session.", value=stats.waiting
        )


class _ConnectionsCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        open_now, cap = self._read()
        yield GaugeMetricFamily(
            "pop3gw_http_connections", "HTTP connections open now.", value=open_now
        )
        yield GaugeMetricFamily(
            "pop3gw_http_connections_max",
            "The cap on concurrent HTTP connections (POP3GW_HTTP__MAX_CONNECTIONS, or derived "
            "from the file-descriptor limit).",
            value=cap,
        )


class _ParseCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        workers, running, cached = self._read()
        yield GaugeMetricFamily(
            "pop3gw_parse_workers", "Message parser processes alive now.", value=workers
        )
        yield GaugeMetricFamily(
            "pop3gw_parse_jobs_running", "Messages being parsed now.", value=running
        )
        yield GaugeMetricFamily(
            "pop3gw_parsed_cache_bytes",
            "Parsed messages kept in memory now, counted at their size on the wire "
            "(POP3GW_PARSE__CACHE_MAX_BYTES).",
            value=cached,
        )


class _SpoolCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        written, reserved, files = self._read()
        yield GaugeMetricFamily(
            "pop3gw_spool_bytes",
            "Message bytes held in spool files now (read from POP3, not yet sent).",
            value=written,
        )
        yield GaugeMetricFamily(
            "pop3gw_spool_reserved_bytes",
            "Bytes of the spool budget (POP3GW_STREAM__SPOOL_MAX_BYTES) reserved now.",
            value=reserved,
        )
        yield GaugeMetricFamily("pop3gw_spool_files", "Spool files open now.", value=files)


class _NeedsReauthCollector(Collector):
    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "pop3gw_oauth_needs_reauth_mailboxes",
            "Configured mailboxes whose OAuth grant was refused (invalid_grant): they need to "
            "be authorized again; the log names them.",
            value=self._read(),
        )
