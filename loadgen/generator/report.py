"""How results are shown: the live progress line, the final table and `report.json`.

It decides presentation only; the numbers come from `Recorder`, `ConfirmationTracker`,
`Dispatcher` and the CPU meters, gathered into one plain-data report by `loadgen.generator.runner`
and
`loadgen.benches.bench`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from loadgen.generator.thresholds import Verdict


def _ms(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


class ProgressLine:
    """One line, rewritten in place on a terminal, appended every `every` s otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self._last_plain = -1e9
        self._width = 0

    def show(self, elapsed: float, text: str) -> None:
        line = f"[{elapsed:7.1f}s] {text}"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        elif elapsed - self._last_plain >= self.every:
            self.stream.write(line + "\n")
            self._last_plain = elapsed
        self.stream.flush()

    def warn(self, text: str) -> None:
        self.end()
        self.stream.write(f"warning: {text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.flush()


def route_table(routes: dict[str, Any]) -> list[str]:
    lines = [
        f"{'route':<28}{'count':>9}{'rate/s':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
        f"{'errors':>8}{'5xx+io':>8}   (latency ms)"
    ]
    for route, s in routes.items():
        lat = s["latency"]
        lines.append(
            f"{route:<28}{s['count']:>9}{s['rate']:>9.1f}{_ms(lat['p50_ms']):>8}"
            f"{_ms(lat['p95_ms']):>8}{_ms(lat['p99_ms']):>8}{_ms(lat['max_ms']):>8}"
            f"{s['errors']:>8}{s['server_errors']:>8}"
        )
    for route, s in routes.items():
        for status, n in s["statuses"].items():
            if not status.startswith("2"):
                lines.append(f"  {route} status {status if status != '0' else 'no answer'}: {n}")
        for code, n in s["codes"].items():
            lines.append(f"  {route} error {code}: {n}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    out = [
        f"scenario {report['scenario']}: {report['duration_s']:.1f} s against "
        f"{report['target']} with {report.get('users', 0)} users",
        "",
    ]
    out += route_table(report["routes"])
    bets = report.get("bets")
    if bets is not None:
        lat = bets["confirmation_latency"]
        reasons = ", ".join(f"{k} {v}" for k, v in bets["rejected_reasons"].items())
        out += [
            "",
            f"bets: accepted {bets['accepted']}, confirmed {bets['confirmed']}, rejected "
            f"{bets['rejected']}{f' ({reasons})' if reasons else ''}, never answered "
            f"{bets['unanswered']}, answered over HTTP after a lost WebSocket "
            f"{bets['resynced_over_http']}",
            f"      202 → confirmation on the WebSocket: p50 {_ms(lat['p50_ms'])} ms, "
            f"p99 {_ms(lat['p99_ms'])} ms, max {_ms(lat['max_ms'])} ms",
        ]
        if bets["unanswered"]:
            out.append(
                f"      unanswered bet ids (first 50): {' '.join(bets['unanswered_bet_ids'])}"
            )
    gen = report["generator"]
    lag = gen["dispatch_lag"]
    short = sum(gen["shortfall"].values())
    out += [
        "",
        f"generator: cpu {_pct(gen['cpu_pct'])} of a core (signer {_pct(gen['signer_cpu_pct'])}), "
        f"dispatch lag p99 {_ms(lag['p99_ms'])} ms max {_ms(lag['max_ms'])} ms, "
        f"arrivals not sent {short}"
        + (f" ({', '.join(f'{k} {v}' for k, v in gen['shortfall'].items())})" if short else ""),
    ]
    if report.get("server_cpu_pct") is not None:
        out.append(f"server:    cpu {_pct(report['server_cpu_pct'])} of a core")
    for w in gen["warnings"]:
        out.append(f"warning: {w}")
    verdicts = report.get("thresholds", [])
    if verdicts:
        out += ["", "thresholds:"]
        for v in verdicts:
            actual = "nothing measured" if v["actual"] is None else f"{v['actual']:g}"
            out.append(
                f"  {'PASS' if v['ok'] else 'FAIL'}  {v['subject']} {v['metric']}: "
                f"{actual} (limit {v['limit']:g})"
            )
    out += ["", "PASSED" if report["passed"] else "FAILED"]
    return "\n".join(out)


def verdicts_json(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    return [
        {"subject": v.subject, "metric": v.metric, "limit": v.limit, "actual": v.actual, "ok": v.ok}
        for v in verdicts
    ]


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
