"""Is this edge process able to serve, and how well? `/readyz`, `/healthz` and `/metrics`' gauges.

It decides the checks and their verdicts in the health+json vocabulary (`pass | warn | fail`):
which failures take the process out of rotation (its database and writer, Redis when configured,
draining) and which only degrade it (breaker open, feed stale, writer queue over half full, the
core unheard). It leaves the answer's shape on the wire to the ops blueprint and the probing
itself to the handles it reads.

It reads the supervisor's handles on the `EdgeServices` at call time, not copies of them: the
process swaps some while it runs (a test, too, marks the writer dead through them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from tap.runtime import metrics

if TYPE_CHECKING:
    from tap.edge.services import EdgeServices


class Health:
    """The edge's readiness, health and gauges, read from its services' handles."""

    def __init__(self, svc: EdgeServices) -> None:
        self.svc = svc

    def _feed_check(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        svc = self.svc
        now = svc.clock.now_ms()
        fresh = True
        out: dict[str, dict[str, Any]] = {}
        for m in svc.cfg.markets:
            tick = svc.market.last_tick(m.symbol)
            stale_for = None if tick is None else max(0, now - tick.ts)
            ok = stale_for is not None and stale_for < svc.cfg.breaker.stale_after_ms
            fresh = fresh and ok
            out[m.symbol] = {
                "last_update": None if tick is None else tick.ts,
                "stale_for_ms": stale_for,
            }
        return fresh, out

    async def _redis_ok(self) -> bool | None:
        if not self.svc.redis_configured:
            return None
        with trio.move_on_after(1):
            return await self.svc.hot.ping()
        return False

    async def _db_ok(self) -> bool:
        if not self.svc.writer_alive():
            return False
        with trio.move_on_after(1):
            return await self.svc.reader.ping()
        return False

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Can this process serve? Its database (and writer), Redis when configured, and not
        draining. The breaker and the feed are not here: they are the same for every process,
        so failing readiness on them would take the whole fleet out of rotation at once and
        stop reads that still work. They are in `health` (status `warn`)."""
        db_ok = await self._db_ok()
        redis_ok = await self._redis_ok()
        stopping = self.svc.stopping
        checks = {
            "database": "pass" if db_ok else "fail",
            "redis": "fail" if redis_ok is False else "pass",  # None: not configured
            "accepting": "fail" if stopping.is_set() else "pass",
        }
        ready = db_ok and redis_ok is not False and not stopping.is_set()
        return ready, checks

    async def health(self) -> tuple[str, dict[str, Any]]:
        """Every check in the health+json vocabulary (`pass | warn | fail`). Overall: `fail`
        (503) when the database (or its writer) is gone; `warn` when this process serves
        degraded: Redis down or draining (it is also not ready), breaker open, feed stale,
        writer queue over half full; else `pass`."""
        svc = self.svc
        _, ready_checks = await self.readiness()
        feed_ok, feeds = self._feed_check()
        depth, capacity = svc.writer_depth()
        symbol = svc.cfg.markets[0].symbol
        breaker_state = svc.breaker_state(symbol)
        queue_warn = capacity > 0 and depth * 2 > capacity
        redis: dict[str, Any] = {"status": ready_checks["redis"]}
        if not svc.redis_configured:
            redis["configured"] = False  # in-memory hot state: one process, nothing to reach
        elif redis["status"] == "fail":
            redis["reason"] = "Redis did not answer; bets refuse with 503"
        checks: dict[str, Any] = {
            "database": {"status": ready_checks["database"]},
            "redis": redis,
            "accepting": {"status": ready_checks["accepting"]},
            "price_feed": feeds.get(symbol, {"last_update": None, "stale_for_ms": None})
            | {"status": "pass" if feed_ok else "warn"},
            "circuit_breaker": {
                "status": "pass" if breaker_state == "closed" else "warn",
                "state": breaker_state,
                "reason": svc.breaker_reason(symbol),
            },
            "batcher": {
                "status": "warn" if queue_warn else "pass",
                "queue_depth": depth,
                "capacity": capacity,
            },
        }
        if svc.core_alive is not None:
            alive = svc.core_alive()
            checks["core"] = {"status": "pass" if alive else "warn"}
            if not alive:
                checks["core"]["reason"] = "no heartbeat from the core: bets refuse with 503"
        if len(svc.cfg.markets) > 1:
            checks["price_feeds"] = feeds
        if ready_checks["database"] == "fail":
            status = "fail"  # the ledger is out of reach: nothing this process does is right
        elif any(c.get("status", "pass") != "pass" for c in checks.values() if _is_check(c)):
            status = "warn"  # serving, degraded: reads work; bets may be refused (503)
        else:
            status = "pass"
        return status, checks

    def refresh_gauges(self) -> None:
        """The gauges `/metrics` reports that nothing updates as it happens: the writer's queue,
        the database's size, each feed's staleness."""
        svc = self.svc
        depth, capacity = svc.writer_depth()
        metrics.BATCH_QUEUE_DEPTH.set(depth)
        metrics.BATCH_QUEUE_CAPACITY.set(capacity)
        metrics.observe_database(svc.cfg.server.db_path)
        now = svc.clock.now_ms()
        for m in svc.cfg.markets:
            tick = svc.market.last_tick(m.symbol)
            if tick is not None:
                metrics.FEED_STALENESS.labels(m.symbol).set(max(0, now - tick.ts) / 1000)


def _is_check(value: Any) -> bool:
    return isinstance(value, dict) and "status" in value
