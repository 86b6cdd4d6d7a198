"""Real-Redis fixtures: the shared server (`REDIS_URL`, else 127.0.0.1:6379) under a unique key
prefix per test, and throwaway `redis-server` processes a test may kill, stop or flush.

Import them into a test module (`from tests.redis_fixtures import redis_url, ...`). Without a
reachable Redis the tests that need one are skipped, except under `CI=true`, where that is a
failure: CI promises a Redis.

Waiting for a throwaway server to be ready reads its log for "Ready to accept connections"; no
test sleeps on real time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import redis

from tap.config import Config, LimitsConfig, RedisConfig

DEFAULT_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 10.0


def _reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix:` (a test's own keys on the shared server)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis: `REDIS_URL`, else 127.0.0.1:6379. Skip without one, fail under CI."""
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    if not _reachable(url):
        message = f"no Redis at {url} (set REDIS_URL or start redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


# Every prefix this run used: swept once more at exit, because a gateway's worker thread that a
# test abandoned may still finish one last round trip (its sentinel SET) after the teardown.
_USED_PREFIXES: set[tuple[str, str]] = set()


@atexit.register
def _sweep_used_prefixes() -> None:
    for url, prefix in _USED_PREFIXES:
        try:
            delete_prefix(url, prefix)
        except Exception:
            pass


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test (or process, or run) uses; its keys are deleted afterwards."""
    prefix = f"taptest-{uuid.uuid4().hex[:12]}"
    _USED_PREFIXES.add((redis_url, prefix))
    yield prefix
    delete_prefix(redis_url, prefix)


def hot_config(
    url: str,
    prefix: str,
    *,
    request_timeout_ms: int = 1000,
    socket_timeout_ms: int = 500,
    rate_per_s: float = 10.0,
    burst: int = 20,
) -> Config:
    """A `Config` whose Redis section points at `url` under `prefix`."""
    return Config(
        redis=RedisConfig(
            url=url,
            prefix=prefix,
            socket_timeout_ms=socket_timeout_ms,
            connect_timeout_ms=socket_timeout_ms,
            request_timeout_ms=request_timeout_ms,
        ),
        limits=LimitsConfig(rate_per_s=rate_per_s, burst=burst),
    )


@pytest.fixture
def redis_config(redis_url: str, redis_prefix: str) -> Config:
    return hot_config(redis_url, redis_prefix)


def _drain(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.read(65536):
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ThrowawayRedis:
    """A `redis-server` of one test's own, on a free port, keeping nothing on disk."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log_path = self.workdir / f"redis-{self.port}.log"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> None:
        assert self.process is not None and self.process.stdout is not None
        seen = b""
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while b"Ready to accept connections" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    log_path.write_bytes(seen)
                    raise RuntimeError(f"redis-server did not start: {seen[-500:]!r}")
                if sel.select(timeout=left):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    if not chunk:
                        continue
                    seen += chunk
        # Keep draining its output so the server never blocks on a full pipe.
        threading.Thread(target=_drain, args=(self.process.stdout,), daemon=True).start()

    def kill(self) -> None:
        """SIGKILL: connections reset, data gone (nothing is kept on disk)."""
        if self.process is not None:
            if self.stopped:
                self.process.send_signal(signal.SIGCONT)
                self.stopped = False
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGSTOP: a blackhole. Connections stay open and nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def restart(self) -> None:
        """Kill, then start an empty server on the same port."""
        self.kill()
        self.start()

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A fresh server for fault tests; always killed in teardown, even if left stopped."""
    try:
        subprocess.run(["redis-server", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
