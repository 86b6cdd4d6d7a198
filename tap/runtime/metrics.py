"""The process's Prometheus metrics (DESIGN rule 14's seed list), defined once, used by every actor.

Module-level objects on prometheus-client's default registry: one process serves one `/metrics`.
Gauges that mirror channel depths are set by their owners from `statistics()`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HTTP_REQUESTS = Counter(
    "tap_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "tap_http_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS
)
BETS = Counter(
    "tap_bets_total",
    "Bets by admission/commit status (accepted, confirmed, rejected:<reason>, refused:<code>)",
    ["status"],
)
BETS_RESOLVED = Counter("tap_bets_resolved_total", "Bets resolved by outcome", ["outcome"])
BREAKER_OPEN = Gauge("tap_breaker_open", "1 while the circuit breaker is open", ["symbol"])
FEED_STALENESS = Gauge(
    "tap_feed_staleness_seconds", "Seconds since the last tick was received", ["symbol"]
)
FEED_RECONNECTS = Counter("tap_feed_reconnects_total", "Price feed reconnects", ["source"])
TICKS = Counter("tap_ticks_total", "Ticks ingested", ["symbol"])
BATCH_QUEUE_DEPTH = Gauge("tap_batch_queue_depth", "Requests waiting for the writer")
BATCH_SIZE = Histogram(
    "tap_batch_size",
    "Requests per committed batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_SECONDS = Histogram(
    "tap_commit_seconds", "Time to execute and commit one batch", buckets=LATENCY_BUCKETS
)
BATCH_RETRIES = Counter("tap_batch_retries_total", "Batches retried after SQLITE_BUSY")
ARCHIVE_TIMESTAMP = Gauge(
    "tap_last_successful_archive_timestamp", "Unix time of the last archive run that verified"
)
INTEGRITY_VIOLATIONS = Gauge(
    "tap_integrity_violations", "Violations found by the last integrity check"
)
WS_CLIENTS = Gauge("tap_ws_clients", "Connected WebSocket clients")
WS_DROPPED = Counter(
    "tap_ws_dropped_frames_total", "Market-data frames replaced by newer ones (coalesced)"
)
WS_OVERFLOW_CLOSES = Counter(
    "tap_ws_overflow_closes_total", "Clients closed with 1013 because account messages overflowed"
)
REDIS_ERRORS = Counter("tap_redis_errors_total", "Redis round trips that failed or timed out")
REDIS_ROUND_TRIPS = Counter("tap_redis_round_trips_total", "Redis pipelines sent")
REDIS_REQUESTS = Counter("tap_redis_requests_total", "Hot-state requests carried by pipelines")
