"""The hot-path counters and histograms read the same as prometheus_client's own types."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import LATENCY_BUCKETS, Metrics


def _samples(text: str, prefix: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_http_timings_match_a_prometheus_histogram() -> None:
    """Bucket bounds are inclusive (an observation equal to a bound counts in it), buckets
    are cumulative, and count and sum follow, exactly as prometheus_client writes them."""
    observations = [0.0, 0.005, 0.0051, 0.3, 1.0, 59.9, 60.0, 61.0, 1e9]
    metrics = Metrics()
    registry = CollectorRegistry()
    reference = Histogram(
        "pop3gw_http_request_duration_seconds",
        "reference",
        ["route", "method"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for seconds in observations:
        metrics.observe_http("/v1/x", "GET", 200, seconds)
        reference.labels("/v1/x", "GET").observe(seconds)
    metrics.observe_http("/v1/x", "GET", 404, 0.01)
    reference.labels("/v1/x", "GET").observe(0.01)
    ours = _samples(metrics.exposition()[0].decode(), "pop3gw_http_request_duration_seconds")
    theirs = _samples(generate_latest(registry).decode(), "pop3gw_http_request_duration_seconds")
    theirs = {k: v for k, v in theirs.items() if "_created" not in k}
    assert ours == theirs
    assert (
        ours['pop3gw_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/x"}']
        == 2
    )
    counts = _samples(metrics.exposition()[0].decode(), "pop3gw_http_requests_total")
    assert counts == {
        'pop3gw_http_requests_total{method="GET",route="/v1/x",status="200"}': 9.0,
        'pop3gw_http_requests_total{method="GET",route="/v1/x",status="404"}': 1.0,
    }


def test_pop3_commands_are_counted_by_outcome() -> None:
    metrics = Metrics()
    for outcome in ("ok", "ok", "err", "failed"):
        metrics.observe_pop3("TOP", outcome, 0.002)
    text = metrics.exposition()[0].decode()
    assert _samples(text, "pop3gw_pop3_commands_total") == {
        'pop3gw_pop3_commands_total{command="TOP",outcome="ok"}': 2.0,
        'pop3gw_pop3_commands_total{command="TOP",outcome="err"}': 1.0,
        'pop3gw_pop3_commands_total{command="TOP",outcome="failed"}': 1.0,
    }
    assert _samples(text, "pop3gw_pop3_command_duration_seconds_count") == {
        'pop3gw_pop3_command_duration_seconds_count{command="TOP"}': 4.0
    }


def test_cache_events_are_counted_by_kind() -> None:
    metrics = Metrics()
    for kind in ("hit", "hit", "miss", "error"):
        metrics.cache_event(kind)
    assert _samples(metrics.exposition()[0].decode(), "pop3gw_header_cache_events_total") == {
        'pop3gw_header_cache_events_total{kind="hit"}': 2.0,
        'pop3gw_header_cache_events_total{kind="miss"}': 1.0,
        'pop3gw_header_cache_events_total{kind="error"}': 1.0,
    }
