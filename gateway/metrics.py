"""Prometheus metrics, in a registry of the app's own (several apps can live in one process).

Labels are low-cardinality only: route templates, methods, status codes, commands,
outcomes. Never a user, a mailbox id, a unique-id or a secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .pop3 import SessionPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._pop3_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "pop3gw_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "pop3gw_http_request_duration_seconds",
            "Time to answer an HTTP request (streamed bodies included), by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pop3_commands = Counter(
            "pop3gw_pop3_commands",
            "POP3 commands sent, by command and outcome (ok, err, failed).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.pop3_latency = Histogram(
            "pop3gw_pop3_command_duration_seconds",
            "Time from sending a POP3 command to the end of its reply, by command.",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pool_events = Counter(
            "pop3gw_pool_events",
            "Session pool events (open, reuse, close, timeout, retry, noop_failed).",
            ["kind"],
            registry=self.registry,
        )
        self.gate_events = Counter(
            "pop3gw_replica_gate_events",
            "Cross-replica mailbox coordination in Redis (wait, error).",
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
        self.cache_events = Counter(
            "pop3gw_header_cache_events",
            "Header cache lookups and failures, by kind (hit, miss, error, reconnect).",
            ["kind"],
            registry=self.registry,
        )

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; the labelled children are looked up once and kept
        (route templates, methods and statuses are few)."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def pool_event(self, kind: str) -> None:
        self.pool_events.labels(kind).inc()

    def watch_pool(self, pool: SessionPool) -> None:
        """Read the pool's session counts at scrape time."""
        self.registry.register(_PoolCollector(pool))

    def login(self, upstream: str, outcome: str) -> None:
        self.logins.labels(upstream, outcome).inc()

    def lease_waited(self, seconds: float) -> None:
        self.lease_wait.observe(seconds)

    def gate_event(self, kind: str) -> None:
        self.gate_events.labels(kind).inc()

    def cache_event(self, kind: str) -> None:
        self.cache_events.labels(kind).inc()

    def observe_pop3(self, command: str, outcome: str, seconds: float) -> None:
        key = (command, outcome)
        children = self._pop3_children.get(key)
        if children is None:
            children = (
                self.pop3_commands.labels(command, outcome),
                self.pop3_latency.labels(command),
            )
            self._pop3_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
