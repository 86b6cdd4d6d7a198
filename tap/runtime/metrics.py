"""The process's Prometheus metrics (DESIGN rule 14's seed list), defined once, used by every actor.

Module-level objects on prometheus-client's default registry: one process serves one `/metrics`.
Gauges that mirror channel depths are set by their owners from `statistics()`.

Names follow the Prometheus conventions: base units in the name (`_seconds`, `_bytes`),
`_timestamp_seconds` for Unix times, `_total` for counters, one dimension per label. The
renames from the first names, and what each metric is for, are listed in OPERATIONS.md
("Metrics"); the alert rules and the dashboard in deploy/ read these names, and
tests/test_alerts.py checks them against a live scrape.
"""

from __future__ import annotations

import os
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

_CHILDREN: dict[tuple[Any, ...], Any] = {}
_MAX_CHILDREN = 4096


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: `labels` takes a lock and builds a key on every
    call (≈ 5 µs here), and the bet path names the same few children on every request.
    Bounded: a label an attacker can vary (an HTTP method) cannot grow it past `_MAX_CHILDREN`."""
    key = (id(metric), *labels)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= _MAX_CHILDREN:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HTTP_REQUESTS = Counter(
    "tap_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "tap_http_request_duration_seconds",
    "HTTP request latency, from the request's arrival to its response",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
BETS = Counter(
    "tap_bets_total",
    "Bets by status (accepted = 202, confirmed / rejected by the writer, refused at admission) "
    "and reason (the error code of a rejection or refusal, else empty)",
    ["status", "reason"],
)
BETS_RESOLVED = Counter("tap_bets_resolved_total", "Bets resolved by outcome", ["outcome"])
BREAKER_OPEN = Gauge("tap_breaker_open", "1 while the circuit breaker is open", ["symbol"])
FEED_STALENESS = Gauge(
    "tap_feed_staleness_seconds", "Seconds since the last tick was received", ["symbol"]
)
FEED_RECONNECTS = Counter("tap_feed_reconnects_total", "Price feed reconnects", ["source"])
TICKS = Counter("tap_ticks_total", "Ticks ingested", ["symbol"])
BATCH_QUEUE_DEPTH = Gauge("tap_batch_queue_depth", "Requests waiting for the writer")
BATCH_QUEUE_CAPACITY = Gauge(
    "tap_batch_queue_capacity", "Requests the writer's queue holds before bets answer 503"
)
BATCH_SIZE = Histogram(
    "tap_batch_size",
    "Requests per committed batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_SECONDS = Histogram(
    "tap_commit_duration_seconds",
    "Time to execute and commit (fsync) one batch",
    buckets=LATENCY_BUCKETS,
)
BATCH_RETRIES = Counter("tap_batch_retries_total", "Batches retried after SQLITE_BUSY")
ARCHIVE_TIMESTAMP = Gauge(
    "tap_last_successful_archive_timestamp_seconds",
    "Unix time of the last archive run that verified (0 = none yet)",
)
BACKUP_TIMESTAMP = Gauge(
    "tap_last_successful_backup_timestamp_seconds",
    "Unix time of the newest backup of this database, by this or another process (0 = none)",
)
INTEGRITY_TIMESTAMP = Gauge(
    "tap_last_successful_integrity_check_timestamp_seconds",
    "Unix time the last integrity check ran to completion (0 = none yet in this process)",
)
INTEGRITY_VIOLATIONS = Gauge(
    "tap_integrity_violations", "Violations found by the last integrity check"
)
DB_SIZE = Gauge("tap_db_size_bytes", "Size of the ledger database file")
DB_WAL_SIZE = Gauge("tap_db_wal_size_bytes", "Size of the ledger database's write-ahead log")
DISK_FREE = Gauge(
    "tap_disk_free_bytes", "Bytes available to tap on the file system holding the database"
)
DISK_SIZE = Gauge("tap_disk_size_bytes", "Size of the file system holding the database")
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

BUILD_INFO = Info("tap_build", "The running tap: its version and the Python it runs on")


def _version() -> str:
    try:
        return version("tap")
    except PackageNotFoundError:  # a bare source tree
        return "unknown"


BUILD_INFO.info({"version": _version(), "python": platform.python_version()})


def observe_database(db_path: str | os.PathLike[str]) -> None:
    """Set the database, WAL and disk gauges (at scrape time: a few `stat` calls)."""
    path = Path(db_path)
    for gauge, file in ((DB_SIZE, path), (DB_WAL_SIZE, path.with_name(path.name + "-wal"))):
        try:
            gauge.set(file.stat().st_size)
        except FileNotFoundError:
            gauge.set(0)  # no WAL between a checkpoint-on-close and the next write
    try:
        usage = shutil.disk_usage(path.parent)
    except FileNotFoundError:
        return
    DISK_FREE.set(usage.free)
    DISK_SIZE.set(usage.total)
