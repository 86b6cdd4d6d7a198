"""What a run observed: latency and outcomes per route, and the fate of every accepted bet.

It decides the bookkeeping: a latency histogram per route (from the intended send time to the
answer), counts by HTTP status and by error code, a rolling window for the live progress line,
and — for bets — which 202s were later confirmed or rejected on the WebSocket and which never
were. It leaves to its callers when to record (requests due before `measure_from`, the warm-up,
are not counted) and how to print.

The answer to a bet may overtake its 202 (the WebSocket push can beat the HTTP response), so
`ConfirmationTracker` keeps early answers until the acceptance shows up.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from loadgen.generator.histogram import Histogram

BET_HTTP: Final = "POST /api/bets"
BET_WS: Final = "WS place_bet"

TRANSPORT: Final = 0  # status recorded for a request that got no HTTP answer at all

# Status a WebSocket `error` frame stands for: the same code over HTTP (API.md, "Bets").
CODE_STATUS: Final[dict[str, int]] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "wrong_chain": 401,
    "replayed_nonce": 409,
    "duplicate_cell_bet": 409,
    "cell_not_placeable": 422,
    "amount_out_of_range": 422,
    "multiplier_below_minimum": 422,
    "insufficient_funds": 422,
    "exposure_limit": 422,
    "rate_limited": 429,
    "breaker_open": 503,
    "overloaded": 503,
    "dependency_unavailable": 503,
}


class RouteStats:
    __slots__ = ("codes", "count", "hist", "statuses")

    def __init__(self) -> None:
        self.hist = Histogram()
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.count = 0

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 or s == TRANSPORT)

    def summary(self, seconds: float) -> dict[str, Any]:
        n = self.count
        return {
            "count": n,
            "rate": round(n / seconds, 1) if seconds > 0 else 0.0,
            "errors": self.errors,
            "server_errors": self.server_errors,
            "error_rate": self.errors / n if n else 0.0,
            "server_error_rate": self.server_errors / n if n else 0.0,
            "statuses": {str(s): c for s, c in sorted(self.statuses.items())},
            "codes": dict(self.codes.most_common()),
            "latency": self.hist.summary_ms(),
        }


class ConfirmationTracker:
    """Every accepted bet must be answered (confirmed or rejected) on its WebSocket."""

    def __init__(self) -> None:
        # bet_id → (when it was accepted, in trio seconds; the index of the user who placed it)
        self.pending: dict[str, tuple[float, int]] = {}
        self.early: dict[str, tuple[str, float]] = {}  # answered before its acceptance arrived
        self.accepted_count = 0
        self.confirmed = 0
        self.rejected = 0
        self.resynced = 0  # answered over HTTP after the user's WebSocket was closed under it
        self.reasons: Counter[str] = Counter()
        self.latency = Histogram()  # acceptance → answer, µs
        # One probe's share of the above (`start_window`): bets accepted at or after
        # `window_from`, so a bench can judge whether confirmations kept up during a probe.
        self.window_from = float("inf")
        self.window_latency = Histogram()
        self.window_accepted = 0

    def start_window(self, at: float) -> None:
        """Count bets accepted from `at` on (trio seconds) into a fresh per-probe window."""
        self.window_from = at
        self.window_latency = Histogram()
        self.window_accepted = 0

    def window_unanswered(self) -> int:
        """Bets of the current window still waiting for their answer."""
        return sum(1 for at, _ in self.pending.values() if at >= self.window_from)

    def window_summary(self) -> dict[str, Any]:
        """The window's acceptance → answer latency; a bet still unanswered counts as slower
        than any answered one (its p99 is None when more than 1 % are unanswered)."""
        unanswered = self.window_unanswered()
        answered = self.window_latency.count
        total = answered + unanswered
        lat = self.window_latency.summary_ms()
        p99: float | None = lat["p99_ms"]
        if unanswered and total:
            q = 99.0 * total / answered if answered else float("inf")
            p99 = None if q > 100.0 else self.window_latency.percentile(q) / 1000.0
        return {
            "accepted": self.window_accepted,
            "answered": answered,
            "unanswered": unanswered,
            "p50_ms": lat["p50_ms"],
            "p99_ms": p99,
            "max_ms": lat["max_ms"],
        }

    def accepted(self, bet_id: str, at: float, owner: int = 0) -> None:
        self.accepted_count += 1
        in_window = at >= self.window_from
        if in_window:
            self.window_accepted += 1
        answer = self.early.pop(bet_id, None)
        if answer is None:
            self.pending[bet_id] = (at, owner)
        else:
            self._count(answer[0])
            self.latency.record(0)
            if in_window:
                self.window_latency.record(0)

    def answered(self, bet_id: str, outcome: str, reason: str | None, at: float) -> None:
        """`outcome` is "confirmed" or "rejected"; a second answer for one bet is ignored."""
        if (
            outcome == "rejected"
            and reason
            and (bet_id in self.pending or bet_id not in self.early)
        ):
            self.reasons[reason] += 1
        entry = self.pending.pop(bet_id, None)
        if entry is None:
            self.early.setdefault(bet_id, (outcome, at))
            return
        self._count(outcome)
        micros = int((at - entry[0]) * 1e6)
        self.latency.record(micros)
        if entry[0] >= self.window_from:
            self.window_latency.record(micros)

    def resync(self, bet_id: str, outcome: str, reason: str | None, at: float) -> None:
        """An answer learnt over HTTP (`GET /api/bets/{id}`) after the WebSocket was lost."""
        if bet_id in self.pending:
            self.resynced += 1
            self.answered(bet_id, outcome, reason, at)

    def pending_of(self, owner: int) -> list[str]:
        return [b for b, (_, o) in self.pending.items() if o == owner]

    def _count(self, outcome: str) -> None:
        if outcome == "confirmed":
            self.confirmed += 1
        else:
            self.rejected += 1

    @property
    def unanswered(self) -> int:
        return len(self.pending)

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted_count,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
            "rejected_reasons": dict(self.reasons.most_common()),
            "unanswered": self.unanswered,
            "unanswered_bet_ids": sorted(self.pending)[:50],
            "resynced_over_http": self.resynced,
            # Answers for bets whose 202 never reached us (the request timed out client-side).
            "answered_without_acceptance": len(self.early),
            "confirmation_latency": self.latency.summary_ms(),
        }


class Recorder:
    """Per-route results of one measured window."""

    def __init__(self, measure_from: float = float("-inf")) -> None:
        self.measure_from = measure_from
        self.routes: dict[str, RouteStats] = {}
        self.window = Histogram()  # every route since the last `take_window`, for progress
        self.window_count = 0
        self.window_errors = 0
        self.shortfall: Counter[str] = Counter()  # arrivals the generator failed to send, by why

    def record(
        self, route: str, intended: float, done: float, status: int, code: str | None = None
    ) -> None:
        if intended < self.measure_from:
            return
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats()
        micros = int((done - intended) * 1e6)
        stats.hist.record(micros)
        stats.statuses[status] += 1
        stats.count += 1
        if code is not None:
            stats.codes[code] += 1
        self.window.record(micros)
        self.window_count += 1
        if not 200 <= status < 300:
            self.window_errors += 1

    def short(self, reason: str, intended: float) -> None:
        if intended >= self.measure_from:
            self.shortfall[reason] += 1

    def take_window(self) -> tuple[Histogram, int, int]:
        """The progress window so far (and start a new one)."""
        w, n, e = self.window, self.window_count, self.window_errors
        self.window = Histogram()
        self.window_count = 0
        self.window_errors = 0
        return w, n, e

    @property
    def total(self) -> int:
        return sum(s.count for s in self.routes.values())

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.routes.values())

    @property
    def server_errors(self) -> int:
        return sum(s.server_errors for s in self.routes.values())

    def combined(self) -> Histogram:
        h = Histogram()
        for s in self.routes.values():
            h.merge(s.hist)
        return h

    def summary(self, seconds: float) -> dict[str, Any]:
        return {route: s.summary(seconds) for route, s in sorted(self.routes.items())}
