"""Thresholds: does a run's result meet the scenario's limits? A broken one fails the run.

It decides, for each limit in `Thresholds`, the observed value and a verdict; it leaves to the
CLI the exit status (non-zero when any verdict fails) and the printing. A limit on route `"*"`
applies to every route that was exercised; a limit on a route that saw no requests fails
(a threshold on nothing is a mistake worth hearing about).

Pure: fed the report's plain-data summary.
"""

from __future__ import annotations

from typing import Any

import msgspec

from loadgen.generator.scenario import Thresholds

_LATENCY = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
_RATES = ("error_rate", "server_error_rate")


class Verdict(msgspec.Struct, frozen=True):
    subject: str  # a route, "bets" or "generator"
    metric: str
    limit: float
    actual: float | None  # None: nothing was measured
    ok: bool


def evaluate(thresholds: Thresholds, summary: dict[str, Any]) -> list[Verdict]:
    """`summary` has `routes` ({route: RouteStats.summary}), `bets` and `generator` sections."""
    verdicts: list[Verdict] = []
    routes: dict[str, Any] = summary.get("routes", {})
    for pattern, limits in thresholds.routes.items():
        targets = sorted(routes) if pattern == "*" else [pattern]
        if pattern == "*" and not targets:
            targets = ["*"]
        for route in targets:
            stats = routes.get(route)
            for metric in _LATENCY + _RATES:
                limit = getattr(limits, metric)
                if limit is None:
                    continue
                if stats is None or stats["count"] == 0:
                    verdicts.append(Verdict(route, metric, float(limit), None, False))
                    continue
                source = stats["latency"] if metric in _LATENCY else stats
                actual = float(source[metric])
                verdicts.append(Verdict(route, metric, float(limit), actual, actual <= limit))
    bets = summary.get("bets")
    if thresholds.max_unanswered is not None:
        limit = float(thresholds.max_unanswered)
        if bets is None or not bets.get("accepted"):
            # No bet figures, or no bet accepted: "nothing unanswered" would be a vacuous pass.
            verdicts.append(Verdict("bets", "unanswered", limit, None, False))
        else:
            actual = float(bets["unanswered"])
            verdicts.append(Verdict("bets", "unanswered", limit, actual, actual <= limit))
    if thresholds.confirm_p99_ms is not None:
        if bets is None or bets["confirmation_latency"]["count"] == 0:
            verdicts.append(
                Verdict("bets", "confirm_p99_ms", thresholds.confirm_p99_ms, None, False)
            )
        else:
            actual = float(bets["confirmation_latency"]["p99_ms"])
            limit = thresholds.confirm_p99_ms
            verdicts.append(Verdict("bets", "confirm_p99_ms", limit, actual, actual <= limit))
    if thresholds.max_generator_shortfall is not None:
        actual = float(sum(summary.get("generator", {}).get("shortfall", {}).values()))
        limit = float(thresholds.max_generator_shortfall)
        verdicts.append(Verdict("generator", "shortfall", limit, actual, actual <= limit))
    return verdicts


def passed(verdicts: list[Verdict]) -> bool:
    return all(v.ok for v in verdicts)
